"""The review page over HTTP: sign-in and cookies, CSRF, escaping, same-origin assets, and the
messages a reviewer sees when the server is away, the token is refused or a label conflicts."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest

from cad.labels.store import open_store
from reviewui.sessions import MemorySessions, StoreSessions
from reviewui.settings import ReviewUiSettings
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from tests.review_http import Browser
from tests.review_world import TOKENS, World, classify_pe, review_ui, review_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with review_world(tmp_path_factory.mktemp("review-ui")) as w:
        yield w


def signed_in(world: World, who: str = "dr.jones") -> tuple[Browser, str]:
    browser = Browser(world.ui.url)
    status, headers, _ = browser.sign_in(TOKENS[who])
    assert status == 303 and headers["location"] == "/"
    return browser, browser.page_csrf()


def events(world: World, candidate_id: str) -> list[Any]:
    store = open_store(world.store_url)
    try:
        return store.labels.events(candidate_id)
    finally:
        store.close()


def test_the_page_needs_a_sign_in_and_the_session_cookie_is_httponly_and_strict(
    world: World,
) -> None:
    browser = Browser(world.ui.url)
    status, headers, _ = browser.request("GET", "/")
    assert status == 303 and headers["location"] == "/signin"
    status, _, _ = browser.request("GET", "/api/queue")
    assert status == 401
    status, headers, _ = browser.sign_in(TOKENS["dr.jones"])
    assert status == 303
    session = [h for h in browser.set_cookie_headers if h.startswith("cad_review_session=")]
    assert len(session) == 1
    flags = {part.strip().lower() for part in session[0].split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain HTTP here; on with the page's own TLS
    assert TOKENS["dr.jones"] not in session[0]  # the browser holds an opaque id, not the token
    status, _, body = browser.request("GET", "/")
    assert status == 200 and b"Signed in as <b>dr.jones</b>" in body


def test_a_wrong_token_is_refused_with_a_clear_message(world: World) -> None:
    browser = Browser(world.ui.url)
    status, _, body = browser.sign_in("not-a-token")
    assert status == 401 and b"refused this token" in body
    assert "cad_review_session" not in browser.cookies
    status, _, body = browser.sign_in(TOKENS["tower-3"])  # an infer token, not a reviewer's
    assert status == 403 and b"no review role" in body
    status, _, body = browser.sign_in("")
    assert status == 400 and b"Enter your review token" in body


def test_state_changing_requests_without_the_csrf_token_are_refused(world: World) -> None:
    browser, csrf = signed_in(world)
    cid = world.candidates[0]
    body = {"candidate_id": cid, "request_id": world.dicom_request, "verdict": "confirm"}
    body["key"] = "csrf-test-1"
    shown(browser, world.dicom_request)
    assert browser.api("/api/verdict", body)[0] == 403  # no token
    assert browser.api("/api/verdict", body, **{"X-CSRF-Token": "guess"})[0] == 403
    cross = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    assert browser.api("/api/verdict", body, **cross)[0] == 403
    fetched = {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    assert browser.api("/api/verdict", body, **fetched)[0] == 403
    # a valid cookie and token but no Origin (a script replaying them): refused, said why
    status, refused = browser.api("/api/verdict", body, **{"X-CSRF-Token": csrf, "Origin": ""})
    assert status == 403 and "no Origin header" in refused["error"]
    missed = {"request_id": world.dicom_request, "box": {"x": 1, "y": 1, "width": 5, "height": 5}}
    assert browser.api("/api/missed", {**missed, "key": "csrf-test-2"})[0] == 403
    assert events(world, cid) == []  # nothing recorded by any of them
    # Without an Origin, a browser's Sec-Fetch-Site: same-origin says the same
    same = {"X-CSRF-Token": csrf, "Origin": "", "Sec-Fetch-Site": "same-origin"}
    assert browser.api("/api/verdict", {**body, "key": "csrf-test-3"}, **same)[0] == 200
    assert len(events(world, cid)) == 1
    # Sign-out is state-changing too: without the token the session stays.
    assert browser.form("/signout", {"csrf": "guess"})[0] == 403
    assert browser.request("GET", "/")[0] == 200
    # Sign-in needs the form's own token (bound to a cookie set with the form).
    other = Browser(world.ui.url)
    status, _, _ = other.form("/signin", {"csrf": "forged", "token": TOKENS["dr.jones"]})
    assert status == 403 and "cad_review_session" not in other.cookies


def shown(browser: Browser, request_id: str) -> None:
    """What the page does before it takes a verdict: fetch (and draw) the frame's image."""
    status, _, png = browser.request("GET", f"/api/image/{request_id}/png")
    assert status == 200 and png[:4] == b"\x89PNG"


def test_a_verdict_is_recorded_once_under_the_reviewers_identity(world: World) -> None:
    browser, csrf = signed_in(world)
    cid = world.candidates[1]
    body = {"candidate_id": cid, "verdict": "dismiss", "key": "http-once", "note": "fold"}
    token = {"X-CSRF-Token": csrf}
    # only on a frame this session's page was served: what is stored is what was on screen
    status, refused = browser.api(
        "/api/verdict", {**body, "request_id": world.dicom_request}, **token
    )
    assert status == 409 and "never shown on your screen" in refused["error"]
    shown(browser, world.png_request)
    status, refused = browser.api(
        "/api/verdict", {**body, "request_id": world.png_request}, **token
    )
    assert status == 409 and "not on the frame on your screen" in refused["error"]
    # a valid cookie and token but no Origin (a script replaying them): refused, said why
    status, refused = browser.api("/api/verdict", body, **{"X-CSRF-Token": csrf, "Origin": ""})
    assert status == 403 and "no Origin header" in refused["error"]
    missed = {"request_id": world.dicom_request, "box": {"x": 1, "y": 1, "width": 5, "height": 5}}
    assert browser.api("/api/missed", {**missed, "key": "unseen-box"}, **token)[0] == 409
    assert events(world, cid) == []
    shown(browser, world.dicom_request)
    body["request_id"] = world.dicom_request
    status, first = browser.api("/api/verdict", body, **{"X-CSRF-Token": csrf})
    assert status == 200 and first["label"] == "no finding" and not first["replayed"]
    status, again = browser.api("/api/verdict", body, **{"X-CSRF-Token": csrf})
    assert status == 200 and again["replayed"] and again["event_id"] == first["event_id"]
    (event,) = events(world, cid)
    assert (event.reviewer, event.label_after, event.note) == ("dr.jones", 0, "fold")
    status, progress = browser.api("/api/progress")
    assert status == 200 and progress["reviewed"] == 1 and progress["reviewer"] == "dr.jones"


def test_a_conflicting_label_is_reported(world: World) -> None:
    cid = world.candidates[2]
    with grpc.insecure_channel(world.server.address) as channel:
        cad_pb2_grpc.CadReviewStub(channel).SubmitCorrection(
            cad_pb2.Correction(
                candidate_id=cid, verdict=cad_pb2.TRUE_POSITIVE, idempotency_key="smith-1"
            ),
            timeout=10,
            metadata=[("authorization", f"Bearer {TOKENS['dr.smith']}")],
        )
    browser, csrf = signed_in(world)
    shown(browser, world.dicom_request)
    body = {"candidate_id": cid, "request_id": world.dicom_request, "verdict": "dismiss"}
    body["key"] = "jones-conflict"
    status, receipt = browser.api("/api/verdict", body, **{"X-CSRF-Token": csrf})
    assert status == 200 and receipt["conflict"] and receipt["label_before"] == "finding"
    status, image = browser.api(f"/api/image/{world.dicom_request}")
    (mine,) = [c for c in image["candidates"] if c["candidate_id"] == cid]
    assert mine["conflict"] and mine["labeled_by"] == "dr.jones"


def test_the_queue_and_the_image_come_through(world: World) -> None:
    browser, _ = signed_in(world)
    status, queue = browser.api("/api/queue?variant=entropy&limit=50")
    assert status == 200 and queue["variant"] == "entropy"
    assert {i["request_id"] for i in queue["items"]} <= {world.dicom_request, world.png_request}
    status, image = browser.api(f"/api/image/{world.png_request}")
    assert status == 200 and (image["width"], image["height"]) == (128, 96)
    status, headers, png = browser.request("GET", f"/api/image/{world.png_request}/png")
    assert (
        status == 200 and headers["content-type"] == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    )
    assert browser.api("/api/queue?variant=nonsense")[0] == 400
    assert browser.api("/api/queue?limit=100000")[0] == 400
    status, missing = browser.api("/api/image/no-such-request")
    assert status == 404 and "no-such-request" in missing["error"]


def test_the_reviewer_name_is_escaped_on_the_page(tmp_path: Path) -> None:
    token = "odd-name-token-0123456789"
    odd = [{"identity": "<script>x</script>", "roles": ["review"], "token": token}]
    with review_world(tmp_path, extra_tokens=odd) as world:
        browser = Browser(world.ui.url)
        assert browser.sign_in(token)[0] == 303
        _, _, body = browser.request("GET", "/")
        assert b"<script>x</script>" not in body and b"&lt;script&gt;x&lt;/script&gt;" in body


def test_the_page_loads_nothing_from_another_origin(world: World) -> None:
    browser, _ = signed_in(world)
    served = {}
    for path in ("/", "/signin", "/static/review.js", "/static/review.css"):
        status, headers, body = browser.request("GET", path)
        assert status == 200, path
        served[path] = body.decode()
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    for path, text in served.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path
        assert "<script>" not in text.replace('<script src="/static/review.js" defer></script>', "")
    assert (
        "textContent" in served["/static/review.js"]
        and "innerHTML" not in served["/static/review.js"]
    )


def test_an_unreachable_server_and_a_revoked_token_get_clear_messages(world: World) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    settings = ReviewUiSettings(server=f"127.0.0.1:{port}", rpc_timeout_s=5)
    with review_ui(settings) as away:
        browser = Browser(away.url)
        status, _, body = browser.sign_in(TOKENS["dr.jones"])
        assert status == 503 and b"not reachable" in body
        sid, _ = away.review.sessions.create(TOKENS["dr.jones"], "dr.jones")
        browser.cookies["cad_review_session"] = sid
        status, reply = browser.api("/api/queue")
        assert status == 503 and "nothing was recorded" in reply["error"]
    # A session whose token the server no longer knows: sent back to sign in, session ended.
    sid, _ = world.ui.review.sessions.create("revoked-token", "dr.gone")
    browser = Browser(world.ui.url)
    browser.cookies["cad_review_session"] = sid
    status, reply = browser.api("/api/queue")
    assert status == 401 and reply["signin"] == "revoked"
    status, reply = browser.api("/api/queue")
    assert status == 401 and reply["signin"] == "expired"
    status, _, body = browser.request("GET", "/signin?m=revoked")
    assert b"no longer accepts your token" in body


def test_sign_out_ends_the_session(world: World) -> None:
    browser, csrf = signed_in(world)
    status, headers, _ = browser.form("/signout", {"csrf": csrf})
    assert status == 303 and headers["location"] == "/signin?m=signedout"
    assert browser.request("GET", "/")[0] == 303
    assert browser.api("/api/progress")[0] == 401


@pytest.mark.parametrize("where", ["memory", "store"])
def test_sessions_end_when_idle_or_old(where: str, tmp_path: Path) -> None:
    now = [0.0]
    store = open_store(f"sqlite:///{tmp_path / 'labels.sqlite3'}")
    sessions = (
        MemorySessions(idle_s=10, max_s=25, clock=lambda: now[0])
        if where == "memory"
        else StoreSessions(store, idle_s=10, max_s=25, clock=lambda: now[0])
    )
    sid, _ = sessions.create("t", "dr.a")
    now[0] = 9
    assert sessions.get(sid) is not None
    now[0] = 18
    assert sessions.get(sid) is not None  # seen at 9: idle for 9 s
    now[0] = 26
    assert sessions.get(sid) is None  # older than 25 s in all
    sid, _ = sessions.create("t", "dr.a")
    now[0] = 37
    assert sessions.get(sid) is None  # idle for 11 s
    assert sessions.get("") is None and sessions.get("unknown") is None


def test_cad_review_ui_help_and_the_container_health_check(world: World) -> None:
    import os
    import subprocess
    import sys

    from cadcli.main import build_parser

    assert "review-ui" in build_parser().format_help()
    port = urlparse(world.ui.url).port
    ok = subprocess.run(
        [sys.executable, "-m", "reviewui.healthcheck"],
        env={**os.environ, "CAD_REVIEW_UI_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    down = subprocess.run(
        [sys.executable, "-m", "reviewui.healthcheck"],
        env={**os.environ, "CAD_REVIEW_UI_PORT": str(free)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_another_sites_page_cannot_read_an_archived_frame(world: World) -> None:
    """An <img> or fetch on another origin, even one that knows a request id, gets nothing:
    Sec-Fetch-Site is checked on reads and every response says Cross-Origin-Resource-Policy."""
    browser, _ = signed_in(world)
    png = f"/api/image/{world.png_request}/png"
    for site in ("cross-site", "same-site"):
        status, headers, body = browser.request("GET", png, headers={"Sec-Fetch-Site": site})
        assert status == 403 and not body.startswith(b"\x89PNG"), site
        assert browser.api("/api/queue", **{"Sec-Fetch-Site": site})[0] == 403
    status, headers, body = browser.request("GET", png, headers={"Sec-Fetch-Site": "same-origin"})
    assert status == 200 and body.startswith(b"\x89PNG")
    assert headers["cross-origin-resource-policy"] == "same-origin"
    assert "strict-transport-security" not in headers  # plain HTTP here; HTTPS sends it


def test_https_responses_carry_hsts() -> None:
    import asyncio

    from reviewui.security import HeadersMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def headers_of(https: bool) -> dict[bytes, bytes]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(HeadersMiddleware(app, https=https)({"type": "http"}, None, send))
        return dict(sent[0]["headers"])

    assert headers_of(True)[b"strict-transport-security"].startswith(b"max-age=")
    assert b"strict-transport-security" not in headers_of(False)
    assert headers_of(False)[b"cross-origin-resource-policy"] == b"same-origin"


def test_sign_in_attempts_are_limited(tmp_path: Path) -> None:
    """Guessing tokens: after 10 refused sign-ins from one address, further ones from it are
    refused for a while, even with a good token (a page of its own: the limit is per UI)."""
    with review_world(tmp_path) as own:
        browser = Browser(own.ui.url)
        for _ in range(10):
            assert browser.sign_in("not-a-token-at-all")[0] == 401
        status, _, body = browser.sign_in(TOKENS["dr.jones"])
        assert status == 429 and b"Too many failed sign-ins" in body
        assert "cad_review_session" not in browser.cookies


def test_the_attempt_window_forgets_old_failures() -> None:
    from reviewui.security import SignInAttempts

    attempts = SignInAttempts(limit=2, window_s=0.0)  # every failure is already out of the window
    for _ in range(5):
        attempts.failed("10.0.0.9")
    assert attempts.blocked_for("10.0.0.9") == 0.0
    strict = SignInAttempts(limit=2, window_s=3600.0)
    strict.failed("a")
    assert strict.blocked_for("a") == 0.0 and strict.blocked_for("b") == 0.0
    strict.failed("a")
    assert strict.blocked_for("a") > 0 and strict.blocked_for("b") == 0.0


def test_replicas_share_sign_ins_through_the_store(store_url: str, tmp_path: Path) -> None:
    """Sign-ins in the store: a replica started after the sign-in (a new pod, a restart) serves
    the reviewer, a frame served by one replica counts on another (a load balancer sends each
    request anywhere), the sitting's count is shared, and signing out on one ends the sign-in
    everywhere. The store keeps neither the session id nor the reviewer's token."""
    with review_world(tmp_path, store_url=store_url) as world:
        a = Browser(world.ui.url)
        assert a.sign_in(TOKENS["dr.jones"])[0] == 303
        sid = a.cookies["cad_review_session"]
        settings = ReviewUiSettings(server=world.server.address, store_url=store_url)
        with review_ui(settings) as other:
            b = Browser(other.url)
            b.cookies = a.cookies  # one browser, two replicas behind one address
            csrf = b.page_csrf()
            shown(a, world.png_request)
            verdict = {
                "candidate_id": world.candidates[3],
                "request_id": world.png_request,
                "verdict": "confirm",
                "key": "replica-b",
            }
            status, receipt = b.api("/api/verdict", verdict, **{"X-CSRF-Token": csrf})
            assert status == 200 and receipt["reviewed"] == 1
            assert a.api("/api/progress")[1]["reviewed"] == 1
            store = open_store(store_url)
            try:
                rows = store._query("SELECT * FROM review_sessions")
                frames = store._query("SELECT request_id FROM review_session_frames")
            finally:
                store.close()
            assert len(rows) == 1 and [f[0] for f in frames] == [world.png_request]
            assert sid not in repr(rows) and TOKENS["dr.jones"] not in repr(rows)
            assert b.form("/signout", {"csrf": csrf})[0] == 303
            assert a.api("/api/progress")[0] == 401 and b.api("/api/progress")[0] == 401


def test_a_sealed_token_changed_swapped_or_sealed_the_old_way_ends_the_session(
    store_url: str,
) -> None:
    """The reviewer's token is sealed with AES-GCM (``cryptography``) under a key derived from
    the session id: a row changed in the database, or copied from another session, does not
    open and ends the session (the reviewer signs in again); so does a row sealed the old way
    (the hand-made keystream before it); the same token sealed twice differs (fresh nonces)."""
    import base64

    from reviewui.sessions import SEALED, seal, unseal

    assert seal("tok", "sid-1") != seal("tok", "sid-1")
    assert unseal(seal("tok", "sid-1"), "sid-1") == "tok"
    assert unseal(seal("tok", "sid-1"), "sid-2") is None
    store = open_store(store_url)
    try:
        sessions = StoreSessions(store, idle_s=3600, max_s=36000)

        def row(sid: str) -> str:
            from reviewui.sessions import _hash

            found = store._query(
                "SELECT sealed_token FROM review_sessions WHERE session_hash = ?", (_hash(sid),)
            )
            return str(found[0][0]) if found else ""

        def put(sid: str, sealed: str) -> None:
            from reviewui.sessions import _hash

            store.run(
                lambda cur: cur.execute(
                    store.sql("UPDATE review_sessions SET sealed_token = ? WHERE session_hash = ?"),
                    (sealed, _hash(sid)),
                )
            )

        a, _ = sessions.create("token-of-dr-a", "dr.a")
        b, _ = sessions.create("token-of-dr-b", "dr.b")
        got = sessions.get(a)
        assert got is not None and got.token == "token-of-dr-a"
        assert row(a).startswith(SEALED) and "token-of-dr-a" not in row(a)
        # one bit of the ciphertext changed
        raw = bytearray(base64.b64decode(row(a)[len(SEALED) :]))
        raw[-1] ^= 1
        put(a, SEALED + base64.b64encode(bytes(raw)).decode())
        assert sessions.get(a) is None and row(a) == ""  # refused, and the sign-in is gone
        # dr.b's sealed token copied into another session's row
        c, _ = sessions.create("token-of-dr-c", "dr.c")
        put(c, row(b))
        assert sessions.get(c) is None
        again = sessions.get(b)
        assert again is not None and again.token == "token-of-dr-b"  # b's own row still opens
        # a row sealed before this release: the session ends, the reviewer signs in again
        put(b, base64.b64encode(b"x" * 40).decode())
        assert sessions.get(b) is None
    finally:
        store.close()


def test_sign_ins_survive_a_store_outage_and_say_so_meanwhile(tmp_path: Path) -> None:
    from support.pg import TempPostgres

    try:
        pg = TempPostgres().start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        with review_world(tmp_path, store_url=pg.new_database()) as world:
            browser, _ = signed_in(world)
            pg.crash()  # pg_ctl stop -m immediate
            status, reply = browser.api("/api/progress")
            assert status == 503 and "keeps review sign-ins is unreachable" in reply["error"]
            assert browser.request("GET", "/")[0] == 503
            status, _, body = Browser(world.ui.url).sign_in(TOKENS["dr.smith"])
            assert status == 503 and b"unreachable" in body
            pg.restart()
            status, progress = browser.api("/api/progress")  # still signed in
            assert status == 200 and progress["reviewer"] == "dr.jones"
    finally:
        pg.stop()


def test_a_skipped_item_goes_back_to_the_other_reviewers_at_once(world: World) -> None:
    jones, csrf = signed_in(world)
    status, mine = jones.api("/api/queue?variant=entropy&limit=200")
    assert status == 200 and mine["items"]
    smith, _ = signed_in(world, "dr.smith")
    held = {i["candidate_id"] for i in mine["items"]}
    status, theirs = smith.api("/api/queue?variant=entropy&limit=200")
    assert not held & {i["candidate_id"] for i in theirs["items"]}  # all claimed by dr.jones
    skipped = mine["items"][0]["candidate_id"]
    status, reply = jones.api("/api/skip", {"candidate_id": skipped}, **{"X-CSRF-Token": csrf})
    assert status == 200 and reply["released"] == 1
    status, theirs = smith.api("/api/queue?variant=entropy&limit=200")
    # frames are handed out whole: the skipped item waits while dr.jones holds the rest of its
    # frame (it comes back when they are labeled or given back), never split between two
    assert skipped not in {i["candidate_id"] for i in theirs["items"]}
    assert jones.form("/signout", {"csrf": csrf})[0] == 303  # a sign-out gives back the rest
    status, theirs = smith.api("/api/queue?variant=entropy&limit=200")
    assert held <= {i["candidate_id"] for i in theirs["items"]}
    assert smith.form("/signout", {"csrf": smith.page_csrf()})[0] == 303  # nothing left held


def test_a_pe_candidate_is_reviewed_on_its_three_planes(tmp_path: Path) -> None:
    """A CT series classified by a CAD client: the page shows each PE candidate as its three
    vessel-aligned planes, takes a verdict on it and a missed finding marked on a plane (a world
    of its own: the module's queue stays as the other tests expect it)."""
    with review_world(tmp_path) as world:
        _review_a_pe_candidate(world)


def _review_a_pe_candidate(world: World) -> None:
    import io

    import numpy as np
    from PIL import Image

    from cad.aift.vessel import REVIEW_PANEL

    cid = classify_pe(world.server.address)
    browser, csrf = signed_in(world, "dr.smith")
    status, image = browser.api(f"/api/image/{cid}")
    assert status == 200 and (image["width"], image["height"]) == (3 * REVIEW_PANEL, REVIEW_PANEL)
    status, _, png = browser.request("GET", f"/api/image/{cid}/png")
    planes = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert status == 200 and planes.shape == (REVIEW_PANEL, 3 * REVIEW_PANEL)
    assert planes[:, REVIEW_PANEL // 2].max() > 150  # the contrast-filled vessel
    # where it is, as a CT reader names it, and the limits the page works within
    volume = image["volume"]
    assert volume["series_uid"] and 0 < volume["slice_index"] < 16
    assert volume["window"] == volume["candidate_window"] == [100.0, 700.0]  # CTPA
    assert (volume["scroll_limit_mm"], volume["missed_reach_mm"]) == (5.0, 7.0)
    # another window, drawn from the archived HU: far above the vessel, everything is black
    status, _, dark = browser.request("GET", f"/api/image/{cid}/png?center=1000&width=100")
    assert status == 200 and np.asarray(Image.open(io.BytesIO(dark)).convert("L")).max() == 0
    # the cross-section moved along the vessel: that plane changes, the two views do not
    status, _, moved = browser.request("GET", f"/api/image/{cid}/png?offset=4")
    shifted = np.asarray(Image.open(io.BytesIO(moved)).convert("L"))
    assert status == 200 and np.array_equal(shifted[:, REVIEW_PANEL:], planes[:, REVIEW_PANEL:])
    assert not np.array_equal(shifted[:, :REVIEW_PANEL], planes[:, :REVIEW_PANEL])
    for bad, said in (("offset=6", "up to 5 mm along the vessel"), ("center=x", "must be numbers"),
                      ("center=40&width=0", "window width")):  # fmt: skip
        status, reply = browser.api(f"/api/image/{cid}/png?{bad}")
        assert status == 400 and said in reply["error"], (bad, reply)
    token = {"X-CSRF-Token": csrf}
    status, verdict = browser.api(
        "/api/verdict",
        {"candidate_id": cid, "verdict": "confirm", "key": "pe-1", "request_id": cid},
        **token,
    )
    assert status == 200 and verdict["label"] == "finding"
    status, missed = browser.api(
        "/api/missed",
        {
            "request_id": cid,
            "key": "pe-missed",
            "box": {
                "x": 1.5 * REVIEW_PANEL - 4,
                "y": REVIEW_PANEL / 2 + 20,
                "width": 8,
                "height": 8,
            },
        },
        **token,
    )
    assert status == 200, missed
