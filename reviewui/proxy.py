"""The review page's side of the CAD server: each call made with the signed-in reviewer's own
token, gRPC statuses turned into what the page tells the reviewer, and replies into JSON."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import grpc
from starlette.concurrency import run_in_threadpool

from reviewui.security import SIGNIN_MESSAGES, PageError
from reviewui.sessions import Session
from reviewui.settings import ReviewUiSettings
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.channel import client_channel

IMAGE_CACHE = 64
"""Review images (PNG and candidates) kept in this process across sessions, most recent."""

LABELS = {
    cad_pb2.UNLABELED: "unlabeled",
    cad_pb2.POSITIVE: "finding",
    cad_pb2.NEGATIVE: "no finding",
    cad_pb2.LABEL_STATE_UNSPECIFIED: "unlabeled",
}


def notices_json(notices: Any) -> list[dict[str, str]]:
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


def page_error(exc: grpc.RpcError) -> PageError:
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


def box_json(box: cad_pb2.Box) -> dict[str, float]:
    return {"x": box.x, "y": box.y, "width": box.width, "height": box.height}


class CadProxy:
    """One gRPC channel to the CAD server; every call carries the session's own token, and a
    frame's image is fetched once per session (its labels again whenever the page asks)."""

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
        self._images: OrderedDict[tuple[str, str], cad_pb2.ReviewImage] = OrderedDict()
        self._images_lock = threading.Lock()

    def close(self) -> None:
        self.channel.close()

    def _call(self, session: Session, method: str, request: Any) -> Any:
        rpc = getattr(self.stub, method)
        try:
            return rpc(
                request,
                timeout=self.settings.rpc_timeout_s,
                metadata=[("authorization", f"Bearer {session.token}")],
            )
        except grpc.RpcError as exc:
            raise page_error(exc) from None

    async def call(self, session: Session, method: str, request: Any) -> Any:
        return await run_in_threadpool(self._call, session, method, request)

    async def review_image(
        self,
        session: Session,
        request_id: str,
        fresh: bool = False,
        view: cad_pb2.ReviewImageRequest | None = None,
    ) -> cad_pb2.ReviewImage:
        """A frame's image and candidates, as this session last fetched them (``fresh``: the
        labels as they are now, the PNG kept from before when there is one). ``view``: a CT
        volume candidate's planes in another window or with the cross-section moved along the
        vessel, asked for afresh (not kept)."""
        if view is not None:
            view.request_id = request_id
            return await self.call(session, "GetReviewImage", view)
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

    def forget(self, sid: str) -> None:
        """Drop a session's cached frames (sign-out)."""
        with self._images_lock:
            for key in [k for k in self._images if k[0] == sid]:
                del self._images[key]
