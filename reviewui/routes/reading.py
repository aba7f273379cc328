"""What a reviewer reads: the annotation queue in the order asked for, a frame's candidates and
its image (the image marks the frame as shown to this session: only then may a verdict on it be
recorded), and the reviewer's progress."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cad.aift import DEFAULT_VARIANT, QUEUE_ORDERS
from reviewui.proxy import LABELS, box_json, notices_json
from reviewui.security import PageError, json_error, same_site
from reviewui.sessions import Session
from service.api.cad.v1 import cad_pb2

if TYPE_CHECKING:
    from reviewui.app import ReviewApp


def routes(app: ReviewApp) -> list[Route]:
    def bound(handler: Any) -> Any:
        async def call(request: Request, session: Session) -> Any:
            return await handler(app, request, session)

        return app.api(call)

    async def png_of(request: Request) -> Response:
        return await png(app, request)

    return [
        Route("/api/queue", bound(queue), methods=["GET"]),
        Route("/api/progress", bound(progress), methods=["GET"]),
        Route("/api/image/{request_id}", bound(image), methods=["GET"]),
        Route("/api/image/{request_id}/png", png_of, methods=["GET"]),
    ]


async def queue(app: ReviewApp, request: Request, session: Session) -> Any:
    variant = request.query_params.get("variant", DEFAULT_VARIANT)
    if variant not in QUEUE_ORDERS:
        raise PageError(400, f"unknown variant; choose one of {', '.join(QUEUE_ORDERS)}")
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise PageError(400, "how many items: a whole number") from None
    if not 1 <= limit <= app.settings.queue_max:
        raise PageError(400, f"how many items: between 1 and {app.settings.queue_max}")
    reply = await app.cad.call(
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


async def image(app: ReviewApp, request: Request, session: Session) -> Any:
    request_id = request.path_params["request_id"]
    reply = await app.cad.review_image(session, request_id, fresh=True)  # labels as they are
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
        "volume": volume_json(reply.volume) if reply.HasField("volume") else None,
    }


def volume_json(v: cad_pb2.VolumeView) -> dict[str, Any]:
    """Where a CT volume candidate is and the limits the reader works within."""
    return {
        "series_uid": v.series_uid,
        "slice_index": v.slice_index,
        "sop_instance_uid": v.sop_instance_uid,
        "point_mm": [v.point_mm.x, v.point_mm.y, v.point_mm.z],
        "window": [v.window.center, v.window.width],
        "candidate_window": [v.candidate_window.center, v.candidate_window.width],
        "scroll_limit_mm": v.scroll_limit_mm,
        "mm_per_pixel": v.mm_per_pixel,
        "missed_reach_mm": v.missed_reach_mm,
        "panel": v.panel,
    }


def view_of(request: Request) -> cad_pb2.ReviewImageRequest | None:
    """A volume candidate's view from the PNG's query (``center``, ``width``, ``offset``), or
    None: the image as it was first served."""
    q = request.query_params
    if not any(k in q for k in ("center", "width", "offset")):
        return None
    try:
        view = cad_pb2.ReviewImageRequest(offset_mm=float(q.get("offset", "0")))
        if "center" in q or "width" in q:
            view.window.center = float(q.get("center", "nan"))
            view.window.width = float(q.get("width", "nan"))
    except ValueError:
        raise PageError(400, "center, width and offset must be numbers") from None
    return view


async def png(app: ReviewApp, request: Request) -> Response:
    try:
        sid, session = await app.signed_in(request)
    except PageError as exc:
        return json_error(exc)
    request_id = request.path_params["request_id"]
    try:
        same_site(request)
        reply = await app.cad.review_image(session, request_id, view=view_of(request))
        await app.sessions_call("mark_shown", sid, request_id)  # this page has the frame now
    except PageError as exc:
        if exc.signin:
            await app.drop(sid)
        return json_error(exc)
    return Response(reply.png, media_type="image/png")


async def progress(app: ReviewApp, request: Request, session: Session) -> Any:
    stats = await app.cad.call(session, "GetReviewStats", cad_pb2.ReviewStatsRequest())
    return {
        "reviewer": session.reviewer,
        "reviewed": session.reviewed,
        "unlabeled": stats.unlabeled,
        "claimed_by_others": stats.claimed_by_others,
        "claims_end": stats.claims_end,
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
