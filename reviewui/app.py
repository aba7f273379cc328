"""The reviewer's workstation: a small web application that talks to the CAD server over gRPC.

Run it with ``cad review-ui``. A reviewer signs in with their own ``review`` token (from the
server's token file); the page keeps a random session id in an HttpOnly, SameSite=Strict cookie
and this process forwards the reviewer's token on every call, so each label is recorded under
the reviewer's own identity. The token itself never reaches the browser after sign-in.

Every state-changing request (sign-in, sign-out, a verdict, a missed finding) must carry the
session's CSRF token and come from the page's own origin. Every asset is served by this
process; the page loads nothing from anywhere else (Content-Security-Policy ``'self'``).
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from reviewui.proxy import LABELS, CadProxy, box_json, notices_json
from reviewui.security import (
    SIGNIN_MESSAGES,
    HeadersMiddleware,
    PageError,
    SignInAttempts,
    csrf_ok,
    form,
    json_body,
    json_error,
    same_origin,
    same_site,
    text,
)
from reviewui.sessions import MemorySessions, Session, Sessions, StoreSessions
from reviewui.settings import ReviewUiSettings
from service.aift import DEFAULT_VARIANT, QUEUE_ORDERS, RANDOM
from service.api.cad.v1 import cad_pb2
from service.errors import StoreUnavailable
from service.labels.store import open_store
from service.logs import configure_logging
from service.settings import from_flags

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "cad_review_session"
SIGNIN_COOKIE = "cad_review_signin"
CSRF_HEADER = "x-csrf-token"
RANKING_NAMES = {
    "entropy_diversity_alpha": "Most informative first (uncertain and inconsistent)",
    "entropy_diversity": "Most informative first, all views (uncertain and inconsistent)",
    "entropy_alpha": "Most uncertain first",
    "entropy": "Most uncertain first, all views",
    "diversity_alpha": "Most inconsistent between views first",
    "diversity": "Most inconsistent between views first, all views",
    RANDOM: "Random order",
    "margin": "Closest to the fence first (margin)",
    "bald": "Where the model disagrees with itself first (BALD, after a re-scoring)",
    "coreset": "Least like anything labelled first (Core-Set, after a re-scoring)",
    "typiclust": "Most typical of unlabelled groups first (TypiClust, after a re-scoring)",
}
"""What a clinician reads for each ranking; the AIFT variant stays visible as a detail."""
STORE_DOWN = (
    "The store that keeps review sign-ins is unreachable; nothing was recorded. Retry in a moment."
)


class ReviewApp:
    """The routes; one gRPC channel to the CAD server, each call made with the caller's token."""

    def __init__(self, settings: ReviewUiSettings, channel: grpc.Channel | None = None) -> None:
        self.settings = settings
        self.cad = CadProxy(settings, channel)
        self.store = (
            open_store(settings.store_url, pool_size=4, require=False)
            if settings.store_url
            else None
        )
        self.sessions: Sessions = (
            StoreSessions(self.store, settings.session_idle_s, settings.session_max_s)
            if self.store is not None
            else MemorySessions(settings.session_idle_s, settings.session_max_s)
        )
        self.attempts = SignInAttempts()
        https = settings.tls_cert_file is not None
        self.secure = settings.secure_cookies if settings.secure_cookies is not None else https
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/signin", self.signin_form, methods=["GET"]),
            Route("/signin", self.signin, methods=["POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/favicon.ico", self.no_icon, methods=["GET"]),
            Route("/api/queue", self.api(self.queue), methods=["GET"]),
            Route("/api/progress", self.api(self.progress), methods=["GET"]),
            Route("/api/image/{request_id}", self.api(self.image), methods=["GET"]),
            Route("/api/image/{request_id}/png", self.png, methods=["GET"]),
            Route("/api/verdict", self.api(self.verdict, changes=True), methods=["POST"]),
            Route("/api/missed", self.api(self.missed, changes=True), methods=["POST"]),
            Route("/api/retract", self.api(self.retract, changes=True), methods=["POST"]),
            Route("/api/skip", self.api(self.skip, changes=True), methods=["POST"]),
            Route("/api/conflicts", self.api(self.conflicts), methods=["GET"]),
            Route("/api/adjudicate", self.api(self.adjudicate, changes=True), methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        self._templates = {
            name: (STATIC / name).read_text() for name in ("review.html", "signin.html")
        }
        """The two HTML pages, read once at start (filled in per request)."""
        self.app = Starlette(routes=routes)
        self.app.add_middleware(HeadersMiddleware, https=https)

    def close(self) -> None:
        self.cad.close()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ helpers

    def _cookie(self, response: Response, name: str, value: str, path: str = "/") -> None:
        response.set_cookie(
            name, value, path=path, httponly=True, samesite="strict", secure=self.secure
        )

    def session_of(self, request: Request) -> tuple[str | None, Session | None]:
        """The request's session. PageError 503 while the store that keeps sessions is down."""
        sid = request.cookies.get(SESSION_COOKIE)
        try:
            return sid, self.sessions.get(sid)
        except StoreUnavailable:
            raise PageError(503, STORE_DOWN) from None

    async def _session_of(self, request: Request) -> tuple[str | None, Session | None]:
        return await run_in_threadpool(self.session_of, request)

    async def _sessions(self, method: str, *args: Any) -> Any:
        """A call on the session table, off the event loop (it may be the database)."""
        try:
            return await run_in_threadpool(getattr(self.sessions, method), *args)
        except StoreUnavailable:
            raise PageError(503, STORE_DOWN) from None

    def api(
        self, handler: Callable[[Request, Session], Awaitable[Any]], changes: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                sid, session = await self._session_of(request)
            except PageError as exc:
                return json_error(exc)
            if session is None or sid is None:
                return json_error(PageError(401, SIGNIN_MESSAGES["expired"], signin="expired"))
            try:
                same_site(request)  # reads too: another site's page gets nothing
                if changes:
                    same_origin(request)
                    csrf_ok(request.headers.get(CSRF_HEADER, ""), session.csrf)
                body = await handler(request, session)
            except PageError as exc:
                if exc.signin:
                    await self._drop(sid)
                return json_error(exc)
            return body if isinstance(body, Response) else JSONResponse(body)

        return endpoint

    # ------------------------------------------------------------------ pages

    async def healthz(self, request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def no_icon(self, request: Request) -> Response:
        return Response(status_code=204)

    async def page(self, request: Request) -> Response:
        try:
            _, session = await self._session_of(request)
        except PageError as exc:
            return Response(exc.message + "\n", status_code=exc.status, media_type="text/plain")
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        variants = "".join(
            f'<option value="{v}"{" selected" if v == DEFAULT_VARIANT else ""}>'
            f"{html.escape(RANKING_NAMES[v])} ({v}{'; default' if v == DEFAULT_VARIANT else ''})"
            "</option>"
            for v in QUEUE_ORDERS
        )
        text = self._templates["review.html"]
        text = text.replace("{{csrf}}", html.escape(session.csrf))
        text = text.replace("{{reviewer}}", html.escape(session.reviewer))
        text = text.replace("{{variants}}", variants)
        text = text.replace("{{queue_max}}", str(self.settings.queue_max))
        return HTMLResponse(text)

    def _signin_page(self, message: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(32)
        text = self._templates["signin.html"]
        text = text.replace("{{csrf}}", nonce)
        text = text.replace(
            "{{message}}",
            f'<p id="message" class="error" role="alert">{html.escape(message)}</p>'
            if message
            else "",
        )
        response = HTMLResponse(text, status_code=status)
        self._cookie(response, SIGNIN_COOKIE, nonce, path="/signin")
        return response

    async def signin_form(self, request: Request) -> Response:
        reason = request.query_params.get("m", "")
        return self._signin_page(SIGNIN_MESSAGES.get(reason, ""))

    async def signin(self, request: Request) -> Response:
        try:
            same_origin(request)
            fields = await form(request)
            csrf_ok(fields.get("csrf", ""), request.cookies.get(SIGNIN_COOKIE, ""))
        except PageError as exc:
            return self._signin_page(exc.message, exc.status)
        token = fields.get("token", "").strip()
        if not token:
            return self._signin_page("Enter your review token.", 400)
        client = request.client.host if request.client else "unknown"
        wait_s = self.attempts.blocked_for(client)
        if wait_s:
            log.warning("sign-in from %s refused: too many failed attempts", client)
            return self._signin_page(
                f"Too many failed sign-ins from here. Try again in {math.ceil(wait_s / 60)} "
                "minute(s), or ask ops if your token was revoked.",
                429,
            )
        probe = Session(token, "", "", 0.0, 0.0)
        try:
            stats = await self.cad.call(probe, "GetReviewStats", cad_pb2.ReviewStatsRequest())
        except PageError as exc:
            if exc.status in (401, 403):
                self.attempts.failed(client)
                log.warning("failed sign-in from %s (%s)", client, exc.status)
                message = (
                    "The CAD server refused this token: it is unknown, expired or revoked."
                    if exc.status == 401
                    else "This token has no review role on the CAD server."
                )
                return self._signin_page(message, exc.status)
            return self._signin_page(exc.message, exc.status)
        if not stats.reviewer:
            return self._signin_page(
                "The CAD server runs without authentication, so a label could not be tied to its "
                "reviewer. Ask ops to start it with CAD_AUTH_TOKENS_FILE.",
                409,
            )
        try:
            sid, _ = await run_in_threadpool(self.sessions.create, token, stats.reviewer)
        except StoreUnavailable:
            return self._signin_page(STORE_DOWN, 503)
        log.info("reviewer %s signed in", stats.reviewer)
        response = RedirectResponse("/", status_code=303)
        self._cookie(response, SESSION_COOKIE, sid)
        response.delete_cookie(SIGNIN_COOKIE, path="/signin")
        return response

    async def signout(self, request: Request) -> Response:
        try:
            sid, session = await self._session_of(request)
        except PageError as exc:
            return json_error(exc)
        if session is not None:
            try:
                same_origin(request)
                fields = await form(request)
                csrf_ok(fields.get("csrf", ""), session.csrf)
            except PageError as exc:
                return json_error(exc)
            try:  # the items handed out to this reviewer go back to the others' queues
                await self.cad.call(session, "ReleaseClaims", cad_pb2.ClaimRelease())
            except PageError as exc:
                log.warning("claims of %s not given back at sign-out: %s", session.reviewer, exc)
            await self._drop(sid)
            log.info("reviewer %s signed out", session.reviewer)
        response = RedirectResponse("/signin?" + urlencode({"m": "signedout"}), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def _drop(self, sid: str | None) -> None:
        self.cad.forget(sid or "")
        try:
            await run_in_threadpool(self.sessions.drop, sid)
        except StoreUnavailable:
            log.warning("a session could not be ended: the label store is unreachable")

    async def queue(self, request: Request, session: Session) -> Any:
        variant = request.query_params.get("variant", DEFAULT_VARIANT)
        if variant not in QUEUE_ORDERS:
            raise PageError(400, f"unknown variant; choose one of {', '.join(QUEUE_ORDERS)}")
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            raise PageError(400, "how many items: a whole number") from None
        if not 1 <= limit <= self.settings.queue_max:
            raise PageError(400, f"how many items: between 1 and {self.settings.queue_max}")
        reply = await self.cad.call(
            session,
            "GetAnnotationQueue",
            cad_pb2.QueueRequest(limit=limit, variant=variant, seed=secrets.randbits(32) or 1),
        )
        return {
            "variant": reply.variant,
            "unlabeled": reply.unlabeled,
            "items": [
                {
                    "candidate_id": i.candidate_id,
                    "request_id": i.request_id,
                    "box": box_json(i.box),
                    "score": i.score,
                    "probability": i.probability,
                    "model_version": i.model_version,
                    "frame_index": i.frame_index,
                    "source_id": i.source_id,
                }
                for i in reply.items
            ],
            "notices": notices_json(reply.notices),
        }

    async def image(self, request: Request, session: Session) -> Any:
        request_id = request.path_params["request_id"]
        reply = await self.cad.review_image(session, request_id, fresh=True)  # labels as they are
        return {
            "request_id": reply.request_id,
            "width": reply.width,
            "height": reply.height,
            "model_version": reply.model_version,
            "frame_index": reply.frame_index,
            "candidates": [
                {
                    "candidate_id": c.candidate_id,
                    "box": box_json(c.box),
                    "probability": c.probability if c.HasField("probability") else None,
                    "score": c.score,
                    "label": LABELS.get(c.label, "unlabeled"),
                    "labeled_by": c.labeled_by,
                    "conflict": c.conflict,
                    "model_version": c.model_version,
                    "origin": c.origin,
                }
                for c in reply.candidates
            ],
        }

    async def png(self, request: Request) -> Response:
        try:
            sid, session = await self._session_of(request)
        except PageError as exc:
            return json_error(exc)
        if session is None or sid is None:
            return json_error(PageError(401, SIGNIN_MESSAGES["expired"], signin="expired"))
        request_id = request.path_params["request_id"]
        try:
            same_site(request)
            reply = await self.cad.review_image(session, request_id)
            await self._sessions("mark_shown", sid, request_id)  # this page has the frame now
        except PageError as exc:
            if exc.signin:
                await self._drop(sid)
            return json_error(exc)
        return Response(reply.png, media_type="image/png")

    async def _on_screen(self, session: Session, body: dict[str, Any], candidate: str) -> str:
        """The frame a verdict was given on: one whose image this session was served, holding
        ``candidate`` (empty: any candidate). Else 409, and nothing is recorded."""
        request_id = text(body, "request_id")
        if not await self._sessions("was_shown", session.sid, request_id):
            raise PageError(
                409,
                "Nothing was recorded: this item's image was never shown on your screen. "
                "Wait until it is drawn, then decide.",
            )
        if candidate:
            frame = await self.cad.review_image(session, request_id)
            if candidate not in {c.candidate_id for c in frame.candidates}:
                raise PageError(
                    409, "Nothing was recorded: that candidate is not on the frame on your screen."
                )
        return request_id

    async def verdict(self, request: Request, session: Session) -> Any:
        """Confirm or dismiss the candidate on screen (a correction)."""
        return await self._verdict(request, session, "SubmitCorrection", cad_pb2.Correction)

    async def _verdict(
        self, request: Request, session: Session, method: str, message: Any
    ) -> dict[str, Any]:
        """A verdict (``confirm`` or ``dismiss``) on the candidate drawn on screen, sent as
        ``method`` (a correction or an adjudication)."""
        body = await json_body(request)
        verdicts = {"confirm": cad_pb2.TRUE_POSITIVE, "dismiss": cad_pb2.FALSE_POSITIVE}
        verdict = body.get("verdict")
        if verdict not in verdicts:
            raise PageError(400, "verdict must be confirm or dismiss")
        candidate = text(body, "candidate_id")
        await self._on_screen(session, body, candidate)
        receipt = await self.cad.call(
            session,
            method,
            message(
                candidate_id=candidate,
                verdict=verdicts[verdict],
                idempotency_key=text(body, "key"),
                note=text(body, "note", required=False),
            ),
        )
        return await self._receipt(session, receipt)

    async def missed(self, request: Request, session: Session) -> Any:
        body = await json_body(request)
        box = body.get("box")
        if not isinstance(box, dict):
            raise PageError(400, "draw a box first")
        try:
            values = {k: float(box[k]) for k in ("x", "y", "width", "height")}
        except (KeyError, TypeError, ValueError):
            raise PageError(400, "the box needs numbers x, y, width and height") from None
        request_id = await self._on_screen(session, body, "")
        receipt = await self.cad.call(
            session,
            "AddMissedFinding",
            cad_pb2.MissedFinding(
                request_id=request_id,
                box=cad_pb2.Box(**values),
                idempotency_key=text(body, "key"),
                note=text(body, "note", required=False),
            ),
        )
        return await self._receipt(session, receipt)

    async def retract(self, request: Request, session: Session) -> Any:
        """Undo: take back one's own last verdict or missed finding (a retraction event)."""
        body = await json_body(request)
        receipt = await self.cad.call(
            session,
            "Retract",
            cad_pb2.Retraction(event_id=text(body, "event_id"), idempotency_key=text(body, "key")),
        )
        return await self._receipt(session, receipt, counts=-1)

    async def skip(self, request: Request, session: Session) -> Any:
        """Skip: the item goes back to the other reviewers' queues at once (its claim ends)."""
        body = await json_body(request)
        reply = await self.cad.call(
            session,
            "ReleaseClaims",
            cad_pb2.ClaimRelease(candidate_ids=[text(body, "candidate_id")]),
        )
        return {"released": reply.released}

    async def conflicts(self, request: Request, session: Session) -> Any:
        """Disagreements nobody has settled, oldest first: what an adjudicator works through."""
        reply = await self.cad.call(
            session, "GetConflicts", cad_pb2.ConflictsRequest(limit=self.settings.queue_max)
        )
        return {
            "conflicts": [
                {
                    "candidate_id": c.candidate_id,
                    "request_id": c.request_id,
                    "box": box_json(c.box),
                    "verdicts": [
                        {
                            "reviewer": v.reviewer,
                            "label": LABELS.get(v.label, "unlabeled"),
                            "created": v.created,
                            "note": v.note,
                        }
                        for v in c.verdicts
                    ],
                    "yours": any(v.reviewer == session.reviewer for v in c.verdicts),
                }
                for c in reply.conflicts
            ]
        }

    async def adjudicate(self, request: Request, session: Session) -> Any:
        """The final verdict on a disagreement, by a reviewer who gave none on it."""
        return await self._verdict(request, session, "Adjudicate", cad_pb2.Adjudication)

    async def _receipt(
        self, session: Session, receipt: cad_pb2.CorrectionReceipt, counts: int = 1
    ) -> dict[str, Any]:
        """What the page shows of a receipt; the sitting's count moves unless it was a replay."""
        reviewed = session.reviewed
        if not receipt.replayed:
            reviewed = await self._sessions("count", session.sid, counts)
        return {
            "event_id": receipt.event_id,
            "candidate_id": receipt.candidate_id,
            "label_before": LABELS.get(receipt.label_before, "unlabeled"),
            "label": LABELS.get(receipt.label, "unlabeled"),
            "conflict": receipt.conflict,
            "replayed": receipt.replayed,
            "reviewed": reviewed,
            "notices": notices_json(receipt.notices),
        }

    async def progress(self, request: Request, session: Session) -> Any:
        stats = await self.cad.call(session, "GetReviewStats", cad_pb2.ReviewStatsRequest())
        return {
            "reviewer": session.reviewer,
            "reviewed": session.reviewed,
            "unlabeled": stats.unlabeled,
            "versions": [
                {
                    "model_version": v.model_version,
                    "confirmed": v.confirmed,
                    "dismissed": v.dismissed,
                    "precision": v.confirmed / (v.confirmed + v.dismissed)
                    if v.confirmed + v.dismissed
                    else None,
                }
                for v in stats.versions
            ],
        }


def create_app(settings: ReviewUiSettings, channel: grpc.Channel | None = None) -> ReviewApp:
    return ReviewApp(settings, channel)


def main(argv: list[str] | None = None) -> int:
    """``cad review-ui``: serve the review page until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="cad review-ui", description=main.__doc__)
    parser.add_argument("--host", help="HTTP bind address (CAD_REVIEW_UI_HOST)")
    parser.add_argument("--port", type=int, help="HTTP port (CAD_REVIEW_UI_PORT)")
    parser.add_argument("--server", help="CAD server gRPC address host:port (CAD_REVIEW_UI_SERVER)")
    args = parser.parse_args(argv)
    settings = from_flags(ReviewUiSettings, args, ("host", "port", "server"))
    configure_logging("INFO")
    review = create_app(settings)
    scheme = "https" if settings.tls_cert_file else "http"
    kept = "the label store" if settings.store_url else "this process (one replica only)"
    print(
        f"review page on {scheme}://{settings.host}:{settings.port}/ (CAD server {settings.server}; "
        f"sign-ins kept in {kept})"
    )
    uvicorn.run(
        review.app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        log_level="info",
        server_header=False,
    )
    return 0
