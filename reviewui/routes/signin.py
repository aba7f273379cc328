"""Signing in and out: the sign-in form (its own CSRF nonce in a cookie scoped to it), the token
checked against the CAD server, the session created in the session table; sign-out gives the
reviewer's claims back to the others' queues."""

from __future__ import annotations

import html
import logging
import math
import secrets
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cad.errors import StoreUnavailable
from reviewui.security import SIGNIN_MESSAGES, PageError, csrf_ok, form, json_error, same_origin
from reviewui.sessions import Session
from service.api.cad.v1 import cad_pb2

if TYPE_CHECKING:
    from reviewui.app import ReviewApp

log = logging.getLogger(__name__)

SESSION_COOKIE = "cad_review_session"
SIGNIN_COOKIE = "cad_review_signin"
STORE_DOWN = (
    "The store that keeps review sign-ins is unreachable; nothing was recorded. Retry in a moment."
)


def routes(app: ReviewApp) -> list[Route]:
    return [
        Route("/signin", partial(signin_form, app), methods=["GET"]),
        Route("/signin", partial(signin, app), methods=["POST"]),
        Route("/signout", partial(signout, app), methods=["POST"]),
    ]


def _signin_page(app: ReviewApp, message: str = "", status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(32)
    text = app.templates["signin.html"]
    text = text.replace("{{csrf}}", nonce)
    text = text.replace(
        "{{message}}",
        f'<p id="message" class="error" role="alert">{html.escape(message)}</p>' if message else "",
    )
    response = HTMLResponse(text, status_code=status)
    app.cookie(response, SIGNIN_COOKIE, nonce, path="/signin")
    return response


async def signin_form(app: ReviewApp, request: Request) -> Response:
    reason = request.query_params.get("m", "")
    return _signin_page(app, SIGNIN_MESSAGES.get(reason, ""))


async def signin(app: ReviewApp, request: Request) -> Response:
    try:
        same_origin(request)
        fields = await form(request)
        csrf_ok(fields.get("csrf", ""), request.cookies.get(SIGNIN_COOKIE, ""))
    except PageError as exc:
        return _signin_page(app, exc.message, exc.status)
    token = fields.get("token", "").strip()
    if not token:
        return _signin_page(app, "Enter your review token.", 400)
    client = request.client.host if request.client else "unknown"
    wait_s = app.attempts.blocked_for(client)
    if wait_s:
        log.warning("sign-in from %s refused: too many failed attempts", client)
        return _signin_page(
            app,
            f"Too many failed sign-ins from here. Try again in {math.ceil(wait_s / 60)} "
            "minute(s), or ask ops if your token was revoked.",
            429,
        )
    probe = Session(token, "", "", 0.0, 0.0)
    try:
        stats = await app.cad.call(probe, "GetReviewStats", cad_pb2.ReviewStatsRequest())
    except PageError as exc:
        if exc.status in (401, 403):
            app.attempts.failed(client)
            log.warning("failed sign-in from %s (%s)", client, exc.status)
            message = (
                "The CAD server refused this token: it is unknown, expired or revoked."
                if exc.status == 401
                else "This token has no review role on the CAD server."
            )
            return _signin_page(app, message, exc.status)
        return _signin_page(app, exc.message, exc.status)
    if not stats.reviewer:
        return _signin_page(
            app,
            "The CAD server runs without authentication, so a label could not be tied to its "
            "reviewer. Ask ops to start it with CAD_AUTH_TOKENS_FILE.",
            409,
        )
    try:
        sid, _ = await run_in_threadpool(app.sessions.create, token, stats.reviewer)
    except StoreUnavailable:
        return _signin_page(app, STORE_DOWN, 503)
    log.info("reviewer %s signed in", stats.reviewer)
    response = RedirectResponse("/", status_code=303)
    app.cookie(response, SESSION_COOKIE, sid)
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


async def signout(app: ReviewApp, request: Request) -> Response:
    try:
        sid, session = await app.session(request)
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
            await app.cad.call(session, "ReleaseClaims", cad_pb2.ClaimRelease())
        except PageError as exc:
            log.warning("claims of %s not given back at sign-out: %s", session.reviewer, exc)
        await app.drop(sid)
        log.info("reviewer %s signed out", session.reviewer)
    response = RedirectResponse("/signin?" + urlencode({"m": "signedout"}), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
