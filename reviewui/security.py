"""The review page's defences: security headers, CSRF and origin checks, bounded request
bodies, sign-in rate limits, and the error a reviewer reads."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 64 * 1024
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


class HeadersMiddleware:
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


def json_error(exc: PageError) -> JSONResponse:
    return JSONResponse({"error": exc.message, "signin": exc.signin}, status_code=exc.status)


def csrf_ok(given: str, expected: str) -> None:
    if not expected or not given or not hmac.compare_digest(given, expected):
        raise PageError(403, "This form has expired (CSRF check failed). Reload the page.")


def same_site(request: Request) -> None:
    """Refuse a request another site's page made (its browser says so in Sec-Fetch-Site)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise PageError(403, "Requests from other sites are refused.")


def same_origin(request: Request) -> None:
    """Refuse a state-changing request that does not show it comes from this page: it must
    carry this page's own Origin (every browser sends one on a POST), or, without one, say
    ``Sec-Fetch-Site: same-origin``. A request that says neither (a script outside a browser
    replaying a cookie) is refused like one from another site."""
    same_site(request)
    origin = request.headers.get("origin")
    if origin is None:
        if request.headers.get("sec-fetch-site") != "same-origin":
            raise PageError(
                403, "Refused: the request did not say it came from this page (no Origin header)."
            )
        return
    if origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PageError(403, "Requests from other sites are refused.")


async def read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise PageError(413, "The request is too large.")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PageError(413, "The request is too large.")
    return body


async def form(request: Request) -> dict[str, str]:
    body = await read_body(request)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "The form could not be read.") from None
    return {k: v[0] for k, v in fields.items()}


async def json_body(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "The request body is not JSON.") from None
    if not isinstance(data, dict):
        raise PageError(400, "The request body must be a JSON object.")
    return data


def text(body: dict[str, Any], name: str, required: bool = True) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise PageError(400, f"{name} is missing")
    return value
