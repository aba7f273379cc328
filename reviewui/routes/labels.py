"""What a reviewer decides: a verdict on a candidate drawn on their screen, a missed finding, an
undo, a skip, and settling a disagreement. Each goes to the CAD server as one idempotent call
under the reviewer's own token; the sitting's count moves unless it was a replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from reviewui.proxy import LABELS, box_json, notices_json
from reviewui.security import PageError, json_body, text
from reviewui.sessions import Session
from service.api.cad.v1 import cad_pb2

if TYPE_CHECKING:
    from reviewui.app import ReviewApp


def routes(app: ReviewApp) -> list[Route]:
    def bound(handler: Any, changes: bool = True) -> Any:
        async def call(request: Request, session: Session) -> Any:
            return await handler(app, request, session)

        return app.api(call, changes=changes)

    return [
        Route("/api/verdict", bound(verdict), methods=["POST"]),
        Route("/api/missed", bound(missed), methods=["POST"]),
        Route("/api/retract", bound(retract), methods=["POST"]),
        Route("/api/skip", bound(skip), methods=["POST"]),
        Route("/api/conflicts", bound(conflicts, changes=False), methods=["GET"]),
        Route("/api/adjudicate", bound(adjudicate), methods=["POST"]),
    ]


async def _on_screen(app: ReviewApp, session: Session, body: dict[str, Any], candidate: str) -> str:
    """The frame a verdict was given on: one whose image this session was served, holding
    ``candidate`` (empty: any candidate). Else 409, and nothing is recorded."""
    request_id = text(body, "request_id")
    if not await app.sessions_call("was_shown", session.sid, request_id):
        raise PageError(
            409,
            "Nothing was recorded: this item's image was never shown on your screen. "
            "Wait until it is drawn, then decide.",
        )
    if candidate:
        frame = await app.cad.review_image(session, request_id)
        if candidate not in {c.candidate_id for c in frame.candidates}:
            raise PageError(
                409, "Nothing was recorded: that candidate is not on the frame on your screen."
            )
    return request_id


async def verdict(app: ReviewApp, request: Request, session: Session) -> Any:
    """Confirm or dismiss the candidate on screen (a correction)."""
    return await _verdict(app, request, session, "SubmitCorrection", cad_pb2.Correction)


async def _verdict(
    app: ReviewApp, request: Request, session: Session, method: str, message: Any
) -> dict[str, Any]:
    """A verdict (``confirm`` or ``dismiss``) on the candidate drawn on screen, sent as
    ``method`` (a correction or an adjudication)."""
    body = await json_body(request)
    verdicts = {"confirm": cad_pb2.TRUE_POSITIVE, "dismiss": cad_pb2.FALSE_POSITIVE}
    verdict = body.get("verdict")
    if verdict not in verdicts:
        raise PageError(400, "verdict must be confirm or dismiss")
    candidate = text(body, "candidate_id")
    await _on_screen(app, session, body, candidate)
    receipt = await app.cad.call(
        session,
        method,
        message(
            candidate_id=candidate,
            verdict=verdicts[verdict],
            idempotency_key=text(body, "key"),
            note=text(body, "note", required=False),
        ),
    )
    return await _receipt(app, session, receipt)


async def missed(app: ReviewApp, request: Request, session: Session) -> Any:
    body = await json_body(request)
    box = body.get("box")
    if not isinstance(box, dict):
        raise PageError(400, "draw a box first")
    try:
        values = {k: float(box[k]) for k in ("x", "y", "width", "height")}
    except (KeyError, TypeError, ValueError):
        raise PageError(400, "the box needs numbers x, y, width and height") from None
    request_id = await _on_screen(app, session, body, "")
    receipt = await app.cad.call(
        session,
        "AddMissedFinding",
        cad_pb2.MissedFinding(
            request_id=request_id,
            box=cad_pb2.Box(**values),
            idempotency_key=text(body, "key"),
            note=text(body, "note", required=False),
        ),
    )
    return await _receipt(app, session, receipt)


async def retract(app: ReviewApp, request: Request, session: Session) -> Any:
    """Undo: take back one's own last verdict or missed finding (a retraction event)."""
    body = await json_body(request)
    receipt = await app.cad.call(
        session,
        "Retract",
        cad_pb2.Retraction(event_id=text(body, "event_id"), idempotency_key=text(body, "key")),
    )
    return await _receipt(app, session, receipt, counts=-1)


async def skip(app: ReviewApp, request: Request, session: Session) -> Any:
    """Skip: the item goes back to the other reviewers' queues at once (its claim ends)."""
    body = await json_body(request)
    reply = await app.cad.call(
        session,
        "ReleaseClaims",
        cad_pb2.ClaimRelease(candidate_ids=[text(body, "candidate_id")]),
    )
    return {"released": reply.released}


async def conflicts(app: ReviewApp, request: Request, session: Session) -> Any:
    """Disagreements nobody has settled, oldest first: what an adjudicator works through."""
    reply = await app.cad.call(
        session, "GetConflicts", cad_pb2.ConflictsRequest(limit=app.settings.queue_max)
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


async def adjudicate(app: ReviewApp, request: Request, session: Session) -> Any:
    """The final verdict on a disagreement, by a reviewer who gave none on it."""
    return await _verdict(app, request, session, "Adjudicate", cad_pb2.Adjudication)


async def _receipt(
    app: ReviewApp, session: Session, receipt: cad_pb2.CorrectionReceipt, counts: int = 1
) -> dict[str, Any]:
    """What the page shows of a receipt; the sitting's count moves unless it was a replay."""
    reviewed = session.reviewed
    if not receipt.replayed:
        reviewed = await app.sessions_call("count", session.sid, counts)
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
