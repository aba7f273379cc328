"""A reviewer works through the queue in a real headless Chromium (Debian's ``chromium`` driven
by ``chromium-driver``; no browser is downloaded), against a real server and real images."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cad.labels.store import open_store
from tests.review_world import TOKENS, World, classify_frames, classify_pe, review_world

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review-ui.png"
PE_SCREENSHOT = SCREENSHOT.with_name("review-pe.png")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        (CHROMIUM is None or DRIVER is None) and not os.environ.get("CI"),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium with a profile of its own (its own cookies: a browser of its own)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM is not None and DRIVER is not None, "install chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def wait(driver: Any, condition: Any, what: str, timeout: float = 30, reason: Any = None) -> Any:
    """Poll ``condition`` until it holds. An element found on a page the browser is leaving (a
    sign-out navigates) goes stale between finding and reading it: that poll is retried.
    ``reason(driver)``: what the page says, added to the failure when it never holds."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    retried = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(
            driver, timeout, poll_frequency=0.05, ignored_exceptions=retried
        ).until(condition, what)
    except TimeoutException:
        if reason is None:
            raise
        raise TimeoutException(f"{what}; the page says: {reason(driver)!r}") from None


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def at_item(driver: Any, k: int) -> Any:
    """A condition: the page shows queue item ``k`` (1-based) with its image drawn."""

    def shown(d: Any) -> bool:
        return bool(
            text_of(d, "position").startswith(f"{k} of ")
            and d.execute_script(
                "const s = window.cadReview.state; return s.image !== null && "
                "s.items[s.index] !== undefined && "
                "s.image.request_id === s.items[s.index].request_id && "
                # drawn, and on screen long enough for keys to count (the page's key guard)
                "s.drawn === s.items[s.index] && performance.now() >= s.keysFrom;"
            )
        )

    return shown


def history(driver: Any) -> list[str]:
    """The sitting's history, newest first (read even while the work area is hidden)."""
    items = driver.find_elements("css selector", "#history li")
    return [str(li.get_attribute("textContent")) for li in items]


def current(driver: Any) -> dict[str, Any]:
    return dict(driver.execute_script("const s = cadReview.state; return s.items[s.index];"))


def pixel(driver: Any, x: float, y: float) -> list[int]:
    return list(
        driver.execute_script(
            "return Array.from(document.getElementById('image').getContext('2d')"
            ".getImageData(arguments[0], arguments[1], 1, 1).data);",
            x,
            y,
        )
    )


def draw_box(driver: Any, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Mark a missed finding with the mouse: a drag from ``start`` to ``end`` (image pixels)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    driver.find_element("id", "draw").click()
    left, top, scale = driver.execute_script(
        "const r = document.getElementById('image').getBoundingClientRect();"
        "return [r.left, r.top, r.width / cadReview.state.image.width];"
    )  # viewport position of the canvas, and screen pixels per image pixel
    drag = ActionBuilder(driver)
    drag.pointer_action.move_to_location(
        round(left + start[0] * scale), round(top + start[1] * scale)
    )
    drag.pointer_action.pointer_down()
    drag.pointer_action.move_to_location(round(left + end[0] * scale), round(top + end[1] * scale))
    drag.pointer_action.pointer_up()
    drag.perform()
    wait(driver, lambda d: d.find_element("id", "save-missed").is_enabled(), "a drawn box")


def test_a_reviewer_works_through_the_queue_in_chromium(browser: Any, tmp_path: Path) -> None:
    with review_world(tmp_path) as world:
        run_the_sitting(browser, world)


def run_the_sitting(driver: Any, world: World) -> None:

    # A wrong token is refused on the page, with a message that says so.
    driver.get(world.ui.url + "/")
    wait(driver, lambda d: d.current_url.endswith("/signin"), "the sign-in page")
    driver.find_element("id", "token").send_keys("wrong-token")
    driver.find_element("id", "signin-button").click()
    wait(driver, lambda d: "refused this token" in text_of(d, "message"), "the refusal")

    driver.find_element("id", "token").send_keys(TOKENS["dr.jones"])
    driver.find_element("id", "signin-button").click()
    wait(driver, lambda d: d.find_elements("id", "load"), "the review page")
    assert "Signed in as dr.jones" in text_of(driver, "who")
    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies["cad_review_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"

    # The queue: every candidate of both images, the first drawn with its box.
    driver.find_element("id", "limit").clear()
    driver.find_element("id", "limit").send_keys("10")
    driver.find_element("id", "load").click()
    wait(driver, at_item(driver, 1), "the first item")
    items = driver.execute_script("return cadReview.state.items.map(i => i.candidate_id);")
    assert sorted(items) == sorted(world.candidates)
    frames = driver.execute_script("return cadReview.state.items.map(i => i.request_id);")
    runs = [r for k, r in enumerate(frames) if k == 0 or frames[k - 1] != r]
    assert len(runs) == len(set(frames)) == 2  # each frame's candidates in a row
    first = current(driver)
    box = first["box"]
    k = driver.execute_script("return cadReview.state.k;")
    assert k > 2  # the 128-px slice is shown enlarged
    edge = pixel(driver, round((box["x"] + box["width"] / 2) * k), round(box["y"] * k))
    assert edge[:3] == [255, 213, 74]  # the candidate's box, drawn over the image
    assert text_of(driver, "probability") != "" and text_of(driver, "version") == "1"
    wait(driver, lambda d: "Queue depth: 5 unlabeled" in text_of(d, "progress"), "progress")
    driver.save_screenshot(str(SCREENSHOT))

    # Confirm the first with the mouse, with a note that would be markup if it were not text.
    note = "<script>window.pwned = 1</script> polyp, 6 mm"
    driver.find_element("id", "note").send_keys(note)
    driver.find_element("id", "confirm").click()
    wait(driver, at_item(driver, 2), "the second item")
    assert history(driver)[0].startswith("Confirmed") and note in history(driver)[0]
    assert (
        "candidate 1 of " in history(driver)[0]
        and " on image 1 of this queue" in history(driver)[0]
    )
    assert driver.execute_script("return window.pwned === undefined;")
    second = current(driver)

    # Dismiss the second with the keyboard.
    driver.find_element("tag name", "body").send_keys("d")
    wait(driver, at_item(driver, 3), "the third item")
    assert history(driver)[0].startswith("Dismissed")

    # Undo it: the verdict is retracted (not a new opposite one) and the page goes back to it.
    driver.find_element("id", "undo").click()
    wait(driver, lambda d: history(d)[0].startswith("Took back the verdict"), "the undo")
    wait(driver, at_item(driver, 2), "back at the second item")
    assert current(driver)["candidate_id"] == second["candidate_id"]
    assert text_of(driver, "label").startswith("unlabeled")

    # A forced double submit of the same verdict records it once.
    driver.find_element("id", "skip").click()
    wait(driver, at_item(driver, 3), "the third item again")
    third = current(driver)
    driver.execute_script("cadReview.submit('dismiss'); cadReview.submit('dismiss');")
    wait(driver, at_item(driver, 4), "the fourth item")
    wait(driver, lambda d: "Reviewed in this sitting: 2" in text_of(d, "progress"), "the count")

    # Each frame was fetched and decoded once, however many of its candidates were shown.
    fourth = current(driver)
    pngs = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.endsWith('/png'));"
    )
    shown_frames = {first["request_id"], second["request_id"], third["request_id"]}
    shown_frames.add(fourth["request_id"])
    assert sorted(pngs) == sorted(f"{world.ui.url}/api/image/{r}/png" for r in shown_frames)

    # Draw a missed finding on the fourth item's image and save it.
    draw_box(driver, (8, 10), (28, 26))
    driver.find_element("id", "save-missed").click()
    wait(driver, lambda d: history(d)[0].startswith("Marked a missed finding"), "the missed box")

    # Sign out: back at the sign-in page; the review page needs a sign-in again.
    driver.find_element("id", "signout-button").click()
    wait(driver, lambda d: "You are signed out" in text_of(d, "message"), "signed out")
    driver.get(world.ui.url + "/")
    wait(driver, lambda d: d.current_url.endswith("/signin"), "the sign-in page again")

    # The store holds exactly those events, each under dr.jones, none twice.
    store = open_store(world.store_url)
    try:
        rows = [
            (e.candidate_id, e.seq, e.kind, e.label_after, e.reviewer, e.note)
            for e in store.labels.events()
        ]
        missed = [
            c for c in store.candidates_of(fourth["request_id"]) if c.candidate.origin == "missed"
        ]
    finally:
        store.close()
    assert len(missed) == 1
    (retracted,) = [r[5] for r in rows if r[2] == "retraction"]
    assert retracted.startswith("retracts ev-")
    drawn = missed[0].candidate
    assert (round(drawn.x), round(drawn.y), round(drawn.width), round(drawn.height)) == (
        8,
        10,
        20,
        16,
    )
    assert sorted(rows) == sorted(
        [
            (first["candidate_id"], 1, "correction", 1, "dr.jones", note),
            (second["candidate_id"], 1, "correction", 0, "dr.jones", ""),
            (second["candidate_id"], 2, "retraction", -1, "dr.jones", retracted),
            (third["candidate_id"], 1, "correction", 0, "dr.jones", ""),
            (drawn.candidate_id, 1, "missed", 1, "dr.jones", ""),
        ]
    )
    print("\nevents recorded by the browser sitting:")
    for row in rows:
        print("  ", row)


def sign_in(driver: Any, world: World, who: str = "dr.jones", token: str = "") -> None:
    driver.get(world.ui.url + "/")
    wait(driver, lambda d: d.current_url.endswith("/signin"), "the sign-in page")
    driver.find_element("id", "token").send_keys(token or TOKENS[who])
    driver.find_element("id", "signin-button").click()
    wait(driver, lambda d: d.find_elements("id", "load"), "the review page")


def test_the_work_area_is_hidden_until_the_queue_loads_and_after_its_end(
    browser: Any, tmp_path: Path
) -> None:
    """`hidden` lost to `main#work {display: flex}`: black canvases and live buttons before the
    queue loaded, and a stale item after the last one."""
    with review_world(tmp_path) as world:
        sign_in(browser, world)
        assert not browser.find_element("id", "work").is_displayed()
        assert not browser.find_element("id", "confirm").is_displayed()
        browser.find_element("id", "limit").clear()
        browser.find_element("id", "limit").send_keys("1")
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "the first item")
        assert browser.find_element("id", "work").is_displayed()
        n = len(browser.execute_script("return cadReview.state.items;"))  # one frame, whole
        for k in range(1, n + 1):
            wait(browser, at_item(browser, k), f"item {k}")
            browser.find_element("tag name", "body").send_keys("d")
        wait(browser, lambda d: d.find_element("id", "empty").is_displayed(), "the end")
        assert "end of this queue" in text_of(browser, "empty")
        assert not browser.find_element("id", "work").is_displayed()


def test_a_second_key_press_or_a_held_key_does_not_label_the_next_item(
    browser: Any, tmp_path: Path
) -> None:
    """A second press 30-90 ms after the first used to label the item that had just appeared;
    so did a key's auto-repeat."""
    with review_world(tmp_path) as world:
        sign_in(browser, world)
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "the first item")
        first = current(browser)
        browser.find_element("tag name", "body").send_keys("dd")  # a double press
        wait(browser, at_item(browser, 2), "the second item")
        second = current(browser)
        browser.execute_script(  # a held key: repeats are ignored
            "document.dispatchEvent(new KeyboardEvent('keydown', {key: 'c', repeat: true}));"
        )
        browser.find_element("tag name", "body").send_keys("s")  # a real press still works
        wait(browser, at_item(browser, 3), "the third item")
        store = open_store(world.store_url)
        try:
            labeled = {e.candidate_id: e.label_after for e in store.labels.events()}
        finally:
            store.close()
        assert labeled == {first["candidate_id"]: 0}, labeled  # the second item: no verdict
        assert second["candidate_id"] not in labeled


def test_both_reviewers_see_their_disagreement(browser: Any, tmp_path: Path) -> None:
    """Only the second reviewer used to hear of a conflict; the first is now told on their next
    action, naming the other reviewer."""
    import grpc

    from service.api.cad.v1 import cad_pb2, cad_pb2_grpc

    with review_world(tmp_path) as world:
        sign_in(browser, world)
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "the first item")
        first = current(browser)
        browser.find_element("id", "confirm").click()
        wait(browser, at_item(browser, 2), "the second item")
        with grpc.insecure_channel(world.server.address) as ch:  # dr.smith, elsewhere, dismisses
            receipt = cad_pb2_grpc.CadReviewStub(ch).SubmitCorrection(
                cad_pb2.Correction(
                    candidate_id=first["candidate_id"], verdict=cad_pb2.FALSE_POSITIVE
                ),
                timeout=10,
                metadata=[("authorization", f"Bearer {TOKENS['dr.smith']}")],
            )
        assert receipt.conflict and [n.other_reviewer for n in receipt.notices] == ["dr.jones"]
        top = browser.execute_script("return image.getBoundingClientRect().top;")
        browser.find_element("tag name", "body").send_keys("d")  # dr.jones's next action
        wait(browser, lambda d: "dr.smith disagrees" in text_of(d, "message"), "the notice")
        # the message floats: the image did not move under the reviewer's mouse
        assert browser.execute_script("return image.getBoundingClientRect().top;") == top
        assert "(you: finding, dr.smith: no finding)" in text_of(browser, "message")


def test_undo_takes_back_a_missed_box_and_the_skip_it_follows(browser: Any, tmp_path: Path) -> None:
    """Undo after a missed box used to flip an earlier verdict (a wrong POSITIVE on a
    non-polyp) while the page said "Undone"; a saved box could not be undone at all."""

    with review_world(tmp_path) as world:
        sign_in(browser, world)
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "the first item")
        first = current(browser)
        browser.find_element("tag name", "body").send_keys("d")
        wait(browser, at_item(browser, 2), "the second item")
        second = current(browser)
        draw_box(browser, (8, 10), (28, 26))
        browser.find_element("id", "save-missed").click()
        wait(browser, lambda d: history(d)[0].startswith("Marked a missed"), "the missed box")
        browser.find_element("id", "undo").click()
        wait(browser, lambda d: history(d)[0].startswith("Took back the missed"), "the undo")
        wait(browser, at_item(browser, 2), "the second item, redrawn without the box")
        browser.find_element("tag name", "body").send_keys("s")  # skip, then undo the skip
        wait(browser, at_item(browser, 3), "the third item")
        browser.find_element("id", "undo").click()
        wait(browser, at_item(browser, 2), "back at the skipped item")
        assert current(browser)["candidate_id"] == second["candidate_id"]
        store = open_store(world.store_url)
        try:
            kinds = [(e.candidate_id, e.kind, e.label_after) for e in store.labels.events()]
            missed = [
                c
                for c in store.candidates_of(second["request_id"])
                if c.candidate.origin == "missed"
            ]
            labels = {x.candidate.candidate_id: x.label for x in store.queue.labeled()}
        finally:
            store.close()
        assert labels == {first["candidate_id"]: 0}  # the first verdict stands, untouched
        (box,) = missed
        assert box.label is None  # the retracted box is no label: not trained on, not exported
        assert sorted(k for _, k, _ in kinds) == ["correction", "missed", "retraction"]


def test_no_verdict_lands_on_an_item_that_was_never_drawn(browser: Any, tmp_path: Path) -> None:
    """With the server briefly unreachable, Skip moved the panel to the next item while the
    image still showed the previous one, and Confirm then stored a verdict for the undrawn item.
    Now only the item drawn on screen takes a verdict."""
    with review_world(tmp_path) as world:
        sign_in(browser, world)
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "the first item")
        items = browser.execute_script("return cadReview.state.items;")
        last_of_first = max(
            i for i, x in enumerate(items) if x["request_id"] == items[0]["request_id"]
        )
        for k in range(last_of_first):  # to the first frame's last candidate: the next is elsewhere
            browser.find_element("tag name", "body").send_keys("s")
            wait(browser, at_item(browser, k + 2), "the next item")
        # the image requests fail from now on, as they do while the server is unreachable
        browser.execute_script(
            "window.realFetch = window.fetch;"
            "window.fetch = (url, init) => String(url).includes('/api/image/') ?"
            " Promise.reject(new TypeError('unreachable')) : window.realFetch(url, init);"
        )
        browser.find_element("tag name", "body").send_keys("s")
        wait(browser, lambda d: text_of(d, "message"), "the failure said")
        # the panel still describes the item drawn, dimmed: it moves only with the image
        assert text_of(browser, "position").startswith(f"{last_of_first + 1} of ")
        assert "loading" in browser.find_element("id", "work").get_attribute("class")
        browser.execute_script("window.fetch = window.realFetch;")  # the server is back
        browser.find_element("tag name", "body").send_keys("c")
        browser.find_element("id", "confirm").click()
        browser.execute_async_script(  # awaited: a verdict it sent would be stored by now
            "const done = arguments[arguments.length - 1];"
            "cadReview.submit('confirm').then(() => done(true), () => done(false));"
        )
        assert browser.execute_script("return cadReview.state.drawn === null;")
        # and the server refuses a verdict on a frame the page never drew, whatever it sends
        status, error = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const item = cadReview.state.items[cadReview.state.index];"
            "fetch('/api/verdict', {method: 'POST', credentials: 'same-origin', headers: {"
            "'Content-Type': 'application/json', 'X-CSRF-Token': "
            "document.querySelector('meta[name=csrf-token]').content}, body: JSON.stringify({"
            "candidate_id: item.candidate_id, request_id: item.request_id, verdict: 'confirm',"
            "key: 'forced'})}).then(async (r) => done([r.status, (await r.json()).error]));"
        )
        assert status == 409 and "never shown on your screen" in error
        store = open_store(world.store_url)
        try:
            assert store.labels.events() == []  # nothing recorded for the item never drawn
        finally:
            store.close()


def test_a_missed_finding_can_be_marked_with_the_keyboard(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    with review_world(tmp_path) as world:
        sign_in(browser, world)
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "the first item")
        item = current(browser)
        body = browser.find_element("tag name", "body")
        body.send_keys("m")
        body.send_keys(Keys.ARROW_RIGHT * 3 + Keys.ARROW_DOWN * 2)
        body.send_keys(Keys.SHIFT + Keys.ARROW_RIGHT * 4)
        box = browser.execute_script("return Object.assign({}, cadReview.state.missed);")
        body.send_keys(Keys.ENTER)
        wait(
            browser,
            lambda d: history(d)[:1] and history(d)[0].startswith("Marked a missed"),
            "the saved box",
        )
        store = open_store(world.store_url)
        try:
            (missed,) = [
                c.candidate
                for c in store.candidates_of(item["request_id"])
                if c.candidate.origin == "missed"
            ]
        finally:
            store.close()
        side = box["height"]  # a square placed at the centre, moved, then widened by 4
        assert box["width"] == side + 4
        assert (missed.x, missed.y, missed.width, missed.height) == (
            box["x"],
            box["y"],
            box["width"],
            box["height"],
        )


def test_two_reviewers_in_two_browsers_get_disjoint_items_and_a_third_settles_them(
    browser: Any, tmp_path: Path
) -> None:
    """Two reviewers used to get identical queues; when they disagreed only the second heard of
    it, and nothing asked anyone to settle it. Now each browser's queue holds items nobody else
    holds; when a claim runs out and both label one item differently, both are told, naming the
    other; a third reviewer settles it on the page, and that verdict is final."""
    lee = "lee-review-token-0123456789"
    extra = [{"identity": "dr.lee", "roles": ["review"], "token": lee}]
    with (
        review_world(tmp_path, extra_tokens=extra) as world,
        chromium(tmp_path / "second-profile") as other,
    ):
        sign_in(browser, world, "dr.jones")
        sign_in(other, world, "dr.smith")
        browser.find_element("id", "limit").clear()
        browser.find_element("id", "limit").send_keys("2")
        browser.find_element("id", "load").click()
        wait(browser, at_item(browser, 1), "dr.jones's first item")
        other.find_element("id", "load").click()
        wait(other, at_item(other, 1), "dr.smith's first item")
        ids = "return cadReview.state.items.map(i => i.candidate_id);"
        jones_items, smith_items = browser.execute_script(ids), other.execute_script(ids)
        # each gets one frame whole (the CT slice's 3 candidates or the video frame's 2)
        assert sorted([len(jones_items), len(smith_items)]) == [2, 3]
        assert not set(jones_items) & set(smith_items)  # disjoint: each item has one reviewer
        assert set(jones_items) | set(smith_items) == set(world.candidates)

        # dr.jones's claims run out (away from the desk); dr.smith's next queue offers them
        store = open_store(world.store_url)
        try:
            store._run(
                lambda cur: cur.execute(
                    store._sql("UPDATE candidates SET claimed_until = ? WHERE claimed_by = ?"),
                    ("2000-01-01T00:00:00+00:00", "dr.jones"),
                )
            )
        finally:
            store.close()
        disputed = jones_items[0]  # on dr.jones's screen all along
        other.find_element("id", "load").click()
        # the reloaded queue, not the one still on screen while the reload is on its way
        wait(
            other,
            lambda d: disputed in d.execute_script(ids) and at_item(d, 1)(d),
            "dr.smith's queue again, with dr.jones's items whose claims ended",
        )
        k = other.execute_script(ids).index(disputed)
        for step in range(k):
            other.find_element("tag name", "body").send_keys("s")
            wait(other, at_item(other, step + 2), "the next item")
        browser.find_element("tag name", "body").send_keys("d")  # dr.jones: no finding
        wait(browser, at_item(browser, 2), "dr.jones's second item")
        other.find_element("tag name", "body").send_keys("c")  # dr.smith: a finding
        wait(other, lambda d: "dr.jones disagrees" in text_of(d, "message"), "smith told")
        browser.find_element("tag name", "body").send_keys("d")  # dr.jones's next action
        wait(browser, lambda d: "dr.smith disagrees" in text_of(d, "message"), "jones told")
        assert "(you: no finding, dr.smith: finding)" in text_of(browser, "message")

        # neither of them may settle it; the page says so and offers nothing to settle
        other.find_element("id", "disputes").click()
        wait(other, lambda d: "include your own verdict" in text_of(d, "message"), "not theirs")
        assert other.find_element("id", "empty").is_displayed()

        # dr.lee settles it on the page: the frame, the box and both verdicts are shown
        browser.find_element("id", "signout-button").click()
        wait(browser, lambda d: d.current_url.endswith("/signin?m=signedout"), "signed out")
        sign_in(browser, world, "dr.lee", lee)
        browser.find_element("id", "disputes").click()
        wait(browser, at_item(browser, 1), "the dispute")
        assert current(browser)["candidate_id"] == disputed
        assert text_of(browser, "verdicts") == "dr.jones: no finding; dr.smith: finding"
        assert not browser.find_element("id", "draw").is_displayed()
        browser.find_element("id", "note").send_keys("clear polyp on review")
        browser.find_element("tag name", "body").send_keys("c")
        wait(browser, lambda d: d.find_element("id", "empty").is_displayed(), "all settled")
        assert history(browser)[0].startswith("Settled as a finding:")
        assert browser.find_element("id", "undo").get_attribute("disabled") is not None

        store = open_store(world.store_url)
        try:
            (settled,) = [x for x in store.queue.labeled() if x.candidate.candidate_id == disputed]
            final = store.labels.events(disputed)[-1]
            assert store.labels.conflicts() == []
        finally:
            store.close()
        assert settled.label == 1 and settled.adjudicated
        assert (final.kind, final.reviewer, final.note) == (
            "adjudication",
            "dr.lee",
            "clear polyp on review",
        )


def test_a_pe_candidate_is_read_like_a_ct_in_chromium(browser: Any, tmp_path: Path) -> None:
    """A PE candidate was three unnamed planes with a box on the first only, "candidate 1 of 1
    on frame 1 (source ..., frame 0)", a fixed window, and a 2D box for a missed PE. Now the
    planes are named and the candidate marked on each; the page says it is a CT volume
    candidate and where (series, slice, patient mm); the reader sets the window (CTPA first) and
    moves the cross-section along the vessel within the archived block; a missed PE is a point
    clicked on a plane, within the reach the page states."""
    from cad.aift.vessel import MISSED_REACH_MM, REVIEW_PANEL, REVIEW_SCROLL_MM, review_box

    with review_world(tmp_path) as world:
        pe = classify_pe(world.server.address)
        browser.get(world.ui.url + "/")
        wait(browser, lambda d: d.current_url.endswith("/signin"), "the sign-in page")
        browser.find_element("id", "token").send_keys(TOKENS["dr.jones"])
        browser.find_element("id", "signin-button").click()
        wait(browser, lambda d: d.find_elements("id", "load"), "the review page")
        browser.find_element("id", "limit").clear()
        browser.find_element("id", "limit").send_keys("10")
        browser.find_element("id", "load").click()
        k = 1
        wait(browser, at_item(browser, k), "the first item")
        while current(browser)["candidate_id"] != pe:  # dismiss the 2D items before it
            assert not browser.find_element("id", "volume-tools").is_displayed()
            browser.find_element("tag name", "body").send_keys("d")
            k += 1
            wait(browser, at_item(browser, k), f"item {k}")
        image = browser.execute_script("return cadReview.state.image;")
        assert (image["width"], image["height"]) == (3 * REVIEW_PANEL, REVIEW_PANEL)
        volume = image["volume"]
        # what it is and where: a CT volume candidate, its series, slice and place in the patient
        position = text_of(browser, "position")
        assert "PE candidate 1 of 1 in a CT volume (series …" in position, position
        assert "frame" not in position and ", slice " in position and ") mm patient" in position
        assert 0 < volume["slice_index"] < 16  # the synthetic series has 16 slices
        assert browser.find_element("id", "volume-tools").is_displayed()
        assert text_of(browser, "volume-where").startswith("A PE candidate of a CT series")
        assert browser.find_element("id", "window-preset").get_attribute("value") == "100,700"
        scale = browser.execute_script("return cadReview.state.k;")
        x, y, w, h = review_box()
        # the candidate marked on each of the three planes (a 2-px line at a fractional scale
        # covers the rows around its edge, one of them fully)
        for panel in range(3):
            column = round((panel * REVIEW_PANEL + x + w / 2) * scale)
            edges = [pixel(browser, column, round(y * scale) + d)[:3] for d in (-1, 0, 1)]
            assert [255, 213, 74] in edges, (panel, edges)
        # each plane named on it: white text on a dark band at its top left
        for panel in range(3):
            band = [
                pixel(browser, round(panel * REVIEW_PANEL * scale) + dx, 10) for dx in range(6, 60)
            ]
            assert any(p[:3] == [255, 255, 255] for p in band), panel
        # the contrast-filled vessel across the middle of the first longitudinal view, bright in
        # the CTPA window; in a window far above it (C 1000, W 100) it goes black
        middle = (round(1.5 * REVIEW_PANEL * scale), round(40 * scale))
        assert pixel(browser, *middle)[0] > 150
        browser.find_element("id", "window-center").clear()
        browser.find_element("id", "window-center").send_keys("1000")
        browser.find_element("id", "window-width").clear()
        browser.find_element("id", "window-width").send_keys("100")
        browser.find_element("id", "window-apply").click()
        wait(browser, lambda d: pixel(d, *middle)[0] < 20, "the planes in the new window")
        assert "window C 1000, W 100" in text_of(browser, "scroll-where")
        browser.find_element("id", "window-preset").send_keys("Lung")
        wait(browser, lambda d: "window C -600, W 1500" in text_of(d, "scroll-where"), "lung")
        # the cross-section moves along the vessel one mm a key, up to the block's limit
        body = browser.find_element("tag name", "body")
        for step in range(1, int(REVIEW_SCROLL_MM) + 2):
            body.send_keys("]")
            shown = min(step, int(REVIEW_SCROLL_MM))
            said = f"at +{shown}.0 mm along"
            wait(browser, lambda d, said=said: said in text_of(d, "scroll-where"), "moved")
        assert browser.find_element("id", "scroll-on").get_attribute("disabled") is not None
        assert f"up to ±{REVIEW_SCROLL_MM:g} mm" in text_of(browser, "scroll-where")
        body.send_keys("[")
        wait(browser, lambda d: "at +4.0 mm along" in text_of(d, "scroll-where"), "moved back")
        # a missed PE: a point on a plane (the cross-section back on the candidate), the reach said
        body.send_keys("m")
        wait(browser, lambda d: f"within {MISSED_REACH_MM:g} mm" in text_of(d, "message"), "hint")
        wait(browser, lambda d: "at +0.0 mm along" in text_of(d, "scroll-where"), "back at 0")
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        canvas = browser.find_element("id", "image")

        def click_at(px: float, py: float) -> None:
            """A real click at image pixel (px, py). WebDriver offsets count from the canvas's
            in-view centre (the middle of its visible part), so that is what they start from."""
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
            left, top, width, height, view_w, view_h = browser.execute_script(
                "const r = arguments[0].getBoundingClientRect(); "
                "return [r.left, r.top, r.width, r.height, innerWidth, innerHeight];",
                canvas,
            )
            cx = (max(left, 0) + min(left + width, view_w)) / 2
            cy = (max(top, 0) + min(top + height, view_h)) / 2
            dx = left + px / image["width"] * width - cx
            dy = top + py / image["height"] * height - cy
            ActionChains(browser).move_to_element_with_offset(
                canvas, round(dx), round(dy)
            ).click().perform()

        click_at(1.5 * REVIEW_PANEL + 2, REVIEW_PANEL / 2 + 6)  # on the first view along it
        assert browser.find_element("id", "save-missed").text == "Save point"
        browser.execute_script("window.scrollTo(0, 0);")
        browser.save_screenshot(str(PE_SCREENSHOT))  # the planes named, marked, the point, reach
        assert browser.find_element("id", "save-missed").is_enabled()
        browser.find_element("id", "save-missed").click()
        wait(
            browser,
            lambda d: history(d) and "missed finding" in history(d)[0],
            "saved",
            reason=lambda d: text_of(d, "message"),
        )
        store = open_store(world.store_url)
        try:
            (missed,) = [c for c in store.candidates_of(pe) if c.candidate.origin == "missed"]
        finally:
            store.close()
        assert '"kind": "pe"' in missed.candidate.geometry  # a point in the patient, on its vessel
        wait(browser, at_item(browser, k), "the candidate shown again, keys live")
        body.send_keys("m")
        wait(browser, lambda d: f"within {MISSED_REACH_MM:g} mm" in text_of(d, "message"), "hint")
        click_at(0.5 * REVIEW_PANEL + 110, REVIEW_PANEL / 2)  # 12.9 mm out: too far
        browser.find_element("id", "save-missed").click()
        wait(browser, lambda d: "mm from the candidate" in text_of(d, "message"), "refused")
        body.send_keys(Keys.ESCAPE)
        browser.find_element("id", "confirm").click()
        wait(browser, lambda d: history(d) and history(d)[0].startswith("Confirmed"), "the verdict")


def test_an_empty_queue_says_the_rest_is_with_other_reviewers_and_the_page_names_things_once(
    browser: Any, tmp_path: Path
) -> None:
    """With every item claimed by another reviewer the page said "Load it again for more" beside
    a queue depth of 5; the M hint vanished after the first item; "frame 1 (frame 0)" mixed the
    page's count with the frame index. Now the empty queue says who has the rest and when it
    comes back, the key hint stays on the button, and each number has its own name."""
    with review_world(tmp_path) as world, chromium(tmp_path / "second-profile") as other:
        sign_in(browser, world, "dr.jones")
        sign_in(other, world, "dr.smith")
        browser.find_element("id", "load").click()  # dr.jones takes every item (20 asked, 5 there)
        wait(browser, at_item(browser, 1), "dr.jones's first item")
        assert len(browser.execute_script("return cadReview.state.items;")) == 5
        position = text_of(browser, "position")
        assert " on image 1 of this queue (frame 0" in position and "on frame" not in position
        assert browser.find_element("css selector", "#draw kbd").text == "M"
        browser.find_element("tag name", "body").send_keys("d")  # a verdict: the next item
        wait(browser, at_item(browser, 2), "dr.jones's second item")
        assert browser.find_element("css selector", "#draw kbd").text == "M"  # still there
        browser.find_element("tag name", "body").send_keys("m")  # drawing, then cancelled
        assert browser.find_element("css selector", "#draw kbd").text == "M"
        browser.find_element("tag name", "body").send_keys("m")

        other.find_element("id", "load").click()  # dr.smith: nothing left that is free
        wait(other, lambda d: d.find_element("id", "empty").is_displayed(), "the empty queue")
        wait(other, lambda d: "other reviewers" in text_of(d, "empty"), "the reason")
        said = text_of(other, "empty")
        assert "the 4 unlabeled item(s) left are being reviewed by other reviewers" in said
        assert "when its claim ends (the first at" in said and "Load the queue again" in said
        assert "Load it again for more" not in said


def test_two_reviewers_at_once_each_review_whole_frames_in_a_row(
    browser: Any, tmp_path: Path
) -> None:
    """Claims were taken per candidate, so two reviewers got candidates of the same frames, each
    "candidate 1 of 1" on a frame that shows two other dashed boxes. Now each reviewer is handed
    whole frames, their candidates in a row ("candidate k of n", n the frame's own), and no frame
    is split between the two. The same sitting is timed both ways (printed: items per minute and
    frames fetched per item; a timing is reported, never asserted)."""
    measured: dict[str, dict[str, float]] = {}
    for whole in (False, True):
        mode = "whole frames" if whole else "candidate by candidate"
        with (
            review_world(tmp_path / mode, server_settings={"queue_whole_frames": whole}) as world,
            chromium(tmp_path / f"second-{whole}") as other,
        ):
            frames = classify_frames(world.server.address, 6)  # 6 video frames of 3
            frame_of = {c: rid for rid, ids in frames.items() for c in ids}
            frame_of.update({c: world.dicom_request for c in world.candidates[:3]})
            frame_of.update({c: world.png_request for c in world.candidates[3:]})
            size = {rid: sum(1 for f in frame_of.values() if f == rid) for rid in frame_of.values()}
            screens = {}
            for driver, who in ((browser, "dr.jones"), (other, "dr.smith")):
                sign_in(driver, world, who)
                driver.find_element("id", "limit").clear()
                driver.find_element("id", "limit").send_keys("6")
                driver.find_element("id", "load").click()
                wait(driver, at_item(driver, 1), f"{who}'s first item")
                screens[who] = driver.execute_script(
                    "return cadReview.state.items.map(i => [i.candidate_id, i.ordinal, i.ofFrame]);"
                )
            on = {who: {frame_of[c] for c, _, _ in items} for who, items in screens.items()}
            split = on["dr.jones"] & on["dr.smith"]
            if whole:
                assert not split  # no frame between two reviewers
                for items in screens.values():
                    ids = [c for c, _, _ in items]
                    order = list(dict.fromkeys(frame_of[c] for c in ids))
                    assert [frame_of[c] for c in ids] == [f for f in order for _ in range(size[f])]
                    assert all(of == size[frame_of[c]] for c, _, of in items)  # "k of n", n whole
                    assert [k for _, k, _ in items] == [
                        k for f in order for k in range(1, size[f] + 1)
                    ]
                assert "candidate 1 of " + str(
                    size[frame_of[screens["dr.jones"][0][0]]]
                ) in text_of(browser, "position")
            # dr.jones works through the queue: one verdict per item, as fast as the page allows
            n = len(screens["dr.jones"])
            start = time.perf_counter()
            for k in range(1, n + 1):
                wait(browser, at_item(browser, k), f"item {k}")
                browser.find_element("tag name", "body").send_keys("d")
            wait(browser, lambda d: d.find_element("id", "empty").is_displayed(), "the end")
            seconds = time.perf_counter() - start
            fetched = browser.execute_script(
                "return performance.getEntriesByType('resource')"
                ".filter(e => e.name.endsWith('/png')).length;"
            )
            measured[mode] = {
                "items": n,
                "frames_split_between_reviewers": len(split),
                "items_per_minute": round(60 * n / seconds, 1),
                "frames_fetched_per_item": round(fetched / n, 2),
            }
            browser.find_element("id", "signout-button").click()
            wait(browser, lambda d: "/signin" in d.current_url, "signed out")
    print(f"whole frames, measured in Chromium: {measured}")
