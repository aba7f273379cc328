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
import hmac
import html
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from reviewui.sessions import MemorySessions, Session, Sessions, StoreSessions
from reviewui.settings import ReviewUiSettings
from service.aift import QUEUE_ORDERS, RANDOM
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.errors import StoreUnavailable
from service.labels.store import open_store
from service.logs import configure_logging
from service.rpc.channel import client_channel
from service.settings import from_flags

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "cad_review_session"
SIGNIN_COOKIE = "cad_review_signin"
CSRF_HEADER = "x-csrf-token"
MAX_BODY_BYTES = 64 * 1024
IMAGE_CACHE = 64
"""Review images (PNG and candidates) kept in this process across sessions, most recent."""
RANKING_NAMES = {
    "entropy_diversity_alpha": "Most informative first (uncertain and inconsistent; default)",
    "entropy_diversity": "Most informative first, all views (uncertain and inconsistent)",
    "entropy_alpha": "Most uncertain first",
    "entropy": "Most uncertain first, all views",
    "diversity_alpha": "Most inconsistent between views first",
    "diversity": "Most inconsistent between views first, all views",
    RANDOM: "Random order",
}
"""What a clinician reads for each ranking; the AIFT variant stays visible as a detail."""
LABELS = {
    cad_pb2.UNLABELED: "unlabeled",
    cad_pb2.POSITIVE: "finding",
    cad_pb2.NEGATIVE: "no finding",
    cad_pb2.LABEL_STATE_UNSPECIFIED: "unlabeled",
}
SIGNIN_MESSAGES = {
    "expired": "Your session has ended. Sign in again to go on reviewing.",
    "signedout": "You are signed out.",
    "revoked": "The CAD server no longer accepts your token. Sign in with a current one.",
}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make the browser send Origin: null
    "cache-control": "no-store",
    # another site's <img> or fetch must not show an archived frame, even knowing its id
    "cross-origin-resource-policy": "same-origin",
}
STORE_DOWN = (
    "The store that keeps review sign-ins is unreachable; nothing was recorded. Retry in a moment."
)
HSTS = "max-age=31536000"
"""Strict-Transport-Security, under HTTPS: the browser never tries plain HTTP again."""


class PageError(Exception):
    """A request the page answers with a status and a message for the reviewer."""

    def __init__(self, status: int, message: str, signin: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.signin = status, message, signin
        """``signin``: why the reviewer must sign in again (a key of SIGNIN_MESSAGES), if so."""


class SignInAttempts:
    """Failed sign-ins per client address: after ``limit`` within ``window_s`` seconds, further
    attempts from that address are refused until the oldest failure leaves the window."""

    def __init__(self, limit: int = 10, window_s: float = 300.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}

    def _recent(self, client: str) -> list[float]:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < self.window_s]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return recent

    def failed(self, client: str) -> None:
        self._recent(client)
        self._failures.setdefault(client, []).append(time.monotonic())

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        recent = self._recent(client)
        if len(recent) < self.limit:
            return 0.0
        return max(1.0, self.window_s - (time.monotonic() - recent[0]))


class ReviewApp:
    """The routes; one gRPC channel to the CAD server, each call made with the caller's token."""

    def __init__(self, settings: ReviewUiSettings, channel: grpc.Channel | None = None) -> None:
        self.settings = settings
        self.channel = channel or client_channel(
            settings.server,
            settings.tls_ca,
            settings.tls_server_name,
            settings.tls_client_cert,
            settings.tls_client_key,
        )
        self.stub = cad_pb2_grpc.CadReviewStub(self.channel)
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
        self._images: OrderedDict[tuple[str, str], cad_pb2.ReviewImage] = OrderedDict()
        self._images_lock = threading.Lock()
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
        self.app.add_middleware(_HeadersMiddleware, https=https)

    def close(self) -> None:
        self.channel.close()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ helpers

    def _cookie(self, response: Response, name: str, value: str, path: str = "/") -> None:
        response.set_cookie(
            name, value, path=path, httponly=True, samesite="strict", secure=self.secure
        )

    def _call(self, session: Session, method: str, request: Any) -> Any:
        rpc = getattr(self.stub, method)
        try:
            return rpc(
                request,
                timeout=self.settings.rpc_timeout_s,
                metadata=[("authorization", f"Bearer {session.token}")],
            )
        except grpc.RpcError as exc:
            raise _page_error(exc) from None

    async def call(self, session: Session, method: str, request: Any) -> Any:
        return await run_in_threadpool(self._call, session, method, request)

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
                return _json_error(exc)
            if session is None or sid is None:
                return _json_error(PageError(401, SIGNIN_MESSAGES["expired"], signin="expired"))
            try:
                _same_site(request)  # reads too: another site's page gets nothing
                if changes:
                    _same_origin(request)
                    _csrf_ok(request.headers.get(CSRF_HEADER, ""), session.csrf)
                body = await handler(request, session)
            except PageError as exc:
                if exc.signin:
                    await self._drop(sid)
                return _json_error(exc)
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
            f'<option value="{v}"{" selected" if v == "entropy_diversity_alpha" else ""}>'
            f"{html.escape(RANKING_NAMES[v])} ({v})</option>"
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
            _same_origin(request)
            form = await _form(request)
            _csrf_ok(form.get("csrf", ""), request.cookies.get(SIGNIN_COOKIE, ""))
        except PageError as exc:
            return self._signin_page(exc.message, exc.status)
        token = form.get("token", "").strip()
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
            stats = await self.call(probe, "GetReviewStats", cad_pb2.ReviewStatsRequest())
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
            return _json_error(exc)
        if session is not None:
            try:
                _same_origin(request)
                form = await _form(request)
                _csrf_ok(form.get("csrf", ""), session.csrf)
            except PageError as exc:
                return _json_error(exc)
            try:  # the items handed out to this reviewer go back to the others' queues
                await self.call(session, "ReleaseClaims", cad_pb2.ClaimRelease())
            except PageError as exc:
                log.warning("claims of %s not given back at sign-out: %s", session.reviewer, exc)
            await self._drop(sid)
            log.info("reviewer %s signed out", session.reviewer)
        response = RedirectResponse("/signin?" + urlencode({"m": "signedout"}), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def _drop(self, sid: str | None) -> None:
        with self._images_lock:
            for key in [k for k in self._images if k[0] == sid]:
                del self._images[key]
        try:
            await run_in_threadpool(self.sessions.drop, sid)
        except StoreUnavailable:
            log.warning("a session could not be ended: the label store is unreachable")

    async def queue(self, request: Request, session: Session) -> Any:
        variant = request.query_params.get("variant", "entropy_diversity_alpha")
        if variant not in QUEUE_ORDERS:
            raise PageError(400, f"unknown variant; choose one of {', '.join(QUEUE_ORDERS)}")
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            raise PageError(400, "how many items: a whole number") from None
        if not 1 <= limit <= self.settings.queue_max:
            raise PageError(400, f"how many items: between 1 and {self.settings.queue_max}")
        reply = await self.call(
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
                    "box": _box(i.box),
                    "score": i.score,
                    "probability": i.probability,
                    "model_version": i.model_version,
                    "frame_index": i.frame_index,
                    "source_id": i.source_id,
                }
                for i in reply.items
            ],
            "notices": _notices(reply.notices),
        }

    async def _review_image(
        self, session: Session, request_id: str, fresh: bool = False
    ) -> cad_pb2.ReviewImage:
        """A frame's image and candidates, as this session last fetched them (``fresh``: the
        labels as they are now, the PNG kept from before when there is one)."""
        key = (session.sid, request_id)
        with self._images_lock:
            cached = self._images.get(key)
        if cached is not None and not fresh:
            return cached
        reply = await self.call(
            session,
            "GetReviewImage",
            cad_pb2.ReviewImageRequest(request_id=request_id, labels_only=cached is not None),
        )
        if cached is not None:
            reply.png = cached.png
        with self._images_lock:
            self._images[key] = reply
            self._images.move_to_end(key)
            while len(self._images) > IMAGE_CACHE:
                self._images.popitem(last=False)
        return reply

    async def image(self, request: Request, session: Session) -> Any:
        request_id = request.path_params["request_id"]
        reply = await self._review_image(session, request_id, fresh=True)  # labels as they are
        return {
            "request_id": reply.request_id,
            "width": reply.width,
            "height": reply.height,
            "model_version": reply.model_version,
            "frame_index": reply.frame_index,
            "candidates": [
                {
                    "candidate_id": c.candidate_id,
                    "box": _box(c.box),
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
            return _json_error(exc)
        if session is None or sid is None:
            return _json_error(PageError(401, SIGNIN_MESSAGES["expired"], signin="expired"))
        request_id = request.path_params["request_id"]
        try:
            _same_site(request)
            reply = await self._review_image(session, request_id)
            if not reply.png:  # cached without its image: fetch it whole
                with self._images_lock:
                    self._images.pop((sid, request_id), None)
                reply = await self._review_image(session, request_id)
            await self._sessions("mark_shown", sid, request_id)  # this page has the frame now
        except PageError as exc:
            if exc.signin:
                await self._drop(sid)
            return _json_error(exc)
        return Response(reply.png, media_type="image/png")

    async def _on_screen(self, session: Session, body: dict[str, Any], candidate: str) -> str:
        """The frame a verdict was given on: one whose image this session was served, holding
        ``candidate`` (empty: any candidate). Else 409, and nothing is recorded."""
        request_id = _text(body, "request_id")
        if not await self._sessions("was_shown", session.sid, request_id):
            raise PageError(
                409,
                "Nothing was recorded: this item's image was never shown on your screen. "
                "Wait until it is drawn, then decide.",
            )
        if candidate:
            frame = await self._review_image(session, request_id)
            if candidate not in {c.candidate_id for c in frame.candidates}:
                raise PageError(
                    409, "Nothing was recorded: that candidate is not on the frame on your screen."
                )
        return request_id

    async def verdict(self, request: Request, session: Session) -> Any:
        body = await _json_body(request)
        verdicts = {"confirm": cad_pb2.TRUE_POSITIVE, "dismiss": cad_pb2.FALSE_POSITIVE}
        verdict = body.get("verdict")
        if verdict not in verdicts:
            raise PageError(400, "verdict must be confirm or dismiss")
        candidate = _text(body, "candidate_id")
        await self._on_screen(session, body, candidate)
        receipt = await self.call(
            session,
            "SubmitCorrection",
            cad_pb2.Correction(
                candidate_id=candidate,
                verdict=verdicts[verdict],
                idempotency_key=_text(body, "key"),
                note=_text(body, "note", required=False),
            ),
        )
        return await self._receipt(session, receipt)

    async def missed(self, request: Request, session: Session) -> Any:
        body = await _json_body(request)
        box = body.get("box")
        if not isinstance(box, dict):
            raise PageError(400, "draw a box first")
        try:
            values = {k: float(box[k]) for k in ("x", "y", "width", "height")}
        except (KeyError, TypeError, ValueError):
            raise PageError(400, "the box needs numbers x, y, width and height") from None
        request_id = await self._on_screen(session, body, "")
        receipt = await self.call(
            session,
            "AddMissedFinding",
            cad_pb2.MissedFinding(
                request_id=request_id,
                box=cad_pb2.Box(**values),
                idempotency_key=_text(body, "key"),
                note=_text(body, "note", required=False),
            ),
        )
        return await self._receipt(session, receipt)

    async def retract(self, request: Request, session: Session) -> Any:
        """Undo: take back one's own last verdict or missed finding (a retraction event)."""
        body = await _json_body(request)
        receipt = await self.call(
            session,
            "Retract",
            cad_pb2.Retraction(
                event_id=_text(body, "event_id"), idempotency_key=_text(body, "key")
            ),
        )
        return await self._receipt(session, receipt, counts=-1)

    async def skip(self, request: Request, session: Session) -> Any:
        """Skip: the item goes back to the other reviewers' queues at once (its claim ends)."""
        body = await _json_body(request)
        reply = await self.call(
            session,
            "ReleaseClaims",
            cad_pb2.ClaimRelease(candidate_ids=[_text(body, "candidate_id")]),
        )
        return {"released": reply.released}

    async def conflicts(self, request: Request, session: Session) -> Any:
        """Disagreements nobody has settled, oldest first: what an adjudicator works through."""
        reply = await self.call(
            session, "GetConflicts", cad_pb2.ConflictsRequest(limit=self.settings.queue_max)
        )
        return {
            "conflicts": [
                {
                    "candidate_id": c.candidate_id,
                    "request_id": c.request_id,
                    "box": _box(c.box),
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
        body = await _json_body(request)
        verdicts = {"confirm": cad_pb2.TRUE_POSITIVE, "dismiss": cad_pb2.FALSE_POSITIVE}
        verdict = body.get("verdict")
        if verdict not in verdicts:
            raise PageError(400, "verdict must be confirm or dismiss")
        candidate = _text(body, "candidate_id")
        await self._on_screen(session, body, candidate)
        receipt = await self.call(
            session,
            "Adjudicate",
            cad_pb2.Adjudication(
                candidate_id=candidate,
                verdict=verdicts[verdict],
                idempotency_key=_text(body, "key"),
                note=_text(body, "note", required=False),
            ),
        )
        return await self._receipt(session, receipt)

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
            "notices": _notices(receipt.notices),
        }

    async def progress(self, request: Request, session: Session) -> Any:
        stats = await self.call(session, "GetReviewStats", cad_pb2.ReviewStatsRequest())
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


class _HeadersMiddleware:
    """Security headers on every response (pure ASGI: streaming and static files untouched)."""

    def __init__(self, app: Any, https: bool = False) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        if https:
            self.headers.append((b"strict-transport-security", HSTS.encode()))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ]
                headers += self.headers
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _notices(notices: Any) -> list[dict[str, str]]:
    """Disagreements to tell the reviewer of (each comes once from the server)."""
    return [
        {
            "candidate_id": n.candidate_id,
            "request_id": n.request_id,
            "yours": LABELS.get(n.your_label, "unlabeled"),
            "other_reviewer": n.other_reviewer,
            "theirs": LABELS.get(n.their_label, "unlabeled"),
        }
        for n in notices
    ]


def _page_error(exc: grpc.RpcError) -> PageError:
    code, details = exc.code(), exc.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return PageError(
            503,
            "The CAD server is not reachable right now, so nothing was recorded. "
            "Try again in a moment; if it persists, tell ops.",
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return PageError(401, SIGNIN_MESSAGES["revoked"], signin="revoked")
    statuses = {
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    }
    return PageError(statuses.get(code, 502), f"The CAD server answered: {details}")


def _json_error(exc: PageError) -> JSONResponse:
    return JSONResponse({"error": exc.message, "signin": exc.signin}, status_code=exc.status)


def _csrf_ok(given: str, expected: str) -> None:
    if not expected or not given or not hmac.compare_digest(given, expected):
        raise PageError(403, "This form has expired (CSRF check failed). Reload the page.")


def _same_site(request: Request) -> None:
    """Refuse a request another site's page made (its browser says so in Sec-Fetch-Site)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise PageError(403, "Requests from other sites are refused.")


def _same_origin(request: Request) -> None:
    """Refuse a state-changing request sent from another site's page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise PageError(403, "Requests from other sites are refused.")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PageError(403, "Requests from other sites are refused.")


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise PageError(413, "The request is too large.")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PageError(413, "The request is too large.")
    return body


async def _form(request: Request) -> dict[str, str]:
    body = await _read_body(request)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "The form could not be read.") from None
    return {k: v[0] for k, v in fields.items()}


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _read_body(request)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "The request body is not JSON.") from None
    if not isinstance(data, dict):
        raise PageError(400, "The request body must be a JSON object.")
    return data


def _text(body: dict[str, Any], name: str, required: bool = True) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise PageError(400, f"{name} is missing")
    return value


def _box(box: cad_pb2.Box) -> dict[str, float]:
    return {"x": box.x, "y": box.y, "width": box.width, "height": box.height}


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
