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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cad.aift import DEFAULT_VARIANT, QUEUE_ORDERS, RANDOM
from cad.errors import StoreUnavailable
from cad.labels.store import open_store
from cad.logs import configure_logging
from cad.settings import from_flags
from reviewui.proxy import CadProxy
from reviewui.routes import labels, reading, signin
from reviewui.routes.signin import SESSION_COOKIE, STORE_DOWN
from reviewui.security import (
    SIGNIN_MESSAGES,
    HeadersMiddleware,
    PageError,
    SignInAttempts,
    csrf_ok,
    json_error,
    same_origin,
    same_site,
)
from reviewui.sessions import MemorySessions, Session, Sessions, StoreSessions
from reviewui.settings import ReviewUiSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
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
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/favicon.ico", self.no_icon, methods=["GET"]),
            *signin.routes(self),
            *reading.routes(self),
            *labels.routes(self),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        self.templates = {
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

    def cookie(self, response: Response, name: str, value: str, path: str = "/") -> None:
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

    async def session(self, request: Request) -> tuple[str | None, Session | None]:
        return await run_in_threadpool(self.session_of, request)

    async def sessions_call(self, method: str, *args: Any) -> Any:
        """A call on the session table, off the event loop (it may be the database)."""
        try:
            return await run_in_threadpool(getattr(self.sessions, method), *args)
        except StoreUnavailable:
            raise PageError(503, STORE_DOWN) from None

    async def signed_in(self, request: Request) -> tuple[str, Session]:
        """The request's session id and session; PageError 401 (sign in again) without one, 503
        while the store that keeps sessions is down."""
        sid, session = await self.session(request)
        if session is None or sid is None:
            raise PageError(401, SIGNIN_MESSAGES["expired"], signin="expired")
        return sid, session

    def api(
        self, handler: Callable[[Request, Session], Awaitable[Any]], changes: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                sid, session = await self.signed_in(request)
            except PageError as exc:
                return json_error(exc)
            try:
                same_site(request)  # reads too: another site's page gets nothing
                if changes:
                    same_origin(request)
                    csrf_ok(request.headers.get(CSRF_HEADER, ""), session.csrf)
                body = await handler(request, session)
            except PageError as exc:
                if exc.signin:
                    await self.drop(sid)
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
            _, session = await self.session(request)
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
        text = self.templates["review.html"]
        text = text.replace("{{csrf}}", html.escape(session.csrf))
        text = text.replace("{{reviewer}}", html.escape(session.reviewer))
        text = text.replace("{{variants}}", variants)
        text = text.replace("{{queue_max}}", str(self.settings.queue_max))
        return HTMLResponse(text)

    async def drop(self, sid: str | None) -> None:
        self.cad.forget(sid or "")
        try:
            await run_in_threadpool(self.sessions.drop, sid)
        except StoreUnavailable:
            log.warning("a session could not be ended: the label store is unreachable")


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
