"""gRPC servicers: convert, call one domain function in a worker thread, convert back."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cad import validation
from cad.errors import InvalidInput, LimitExceeded, NotFound
from cad.labels.review import ReviewService
from cad.labels.store.records import AuditEvent
from cad.metrics import ServiceMetrics
from cad.models.inference import Classifier, ClassifyOutcome
from cad.models.registry import VersionInfo
from cad.models.volume_inference import VolumeClassifier
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc import converters
from service.rpc.auth import PermissionDenied, current_identity
from service.uploads import SpilledInstances, UploadBudget, return_memory

T = TypeVar("T")
R = TypeVar("R")


def acting_as(claimed: str, what: str) -> str:
    """Who performs the call: the token's identity when authentication is on (a different
    ``claimed`` name is refused), else the name the client sent."""
    identity = current_identity.get()
    if identity is None:
        return claimed
    if claimed.strip() and claimed.strip() != identity.name:
        raise PermissionDenied(
            f"{what} {validation.quote(claimed.strip())} is not the caller; the token is {identity.name}'s"
        )
    return identity.name


class CadInferenceServicer(cad_pb2_grpc.CadInferenceServicer):
    """Classify single images and video streams."""

    def __init__(
        self,
        classifier: Classifier,
        executor: Executor,
        metrics: ServiceMetrics,
        stream_max_inflight: int,
        volumes: VolumeClassifier | None = None,
        uploads: UploadBudget | None = None,
        series_spool: Path | None = None,
    ) -> None:
        self.classifier = classifier
        self.executor = executor
        self.metrics = metrics
        self.stream_max_inflight = stream_max_inflight
        self.volumes = volumes or VolumeClassifier(classifier)
        self.uploads = uploads or UploadBudget(3 * self.volumes.limits.max_series_bytes)
        """Bytes all ClassifyVolume uploads together hold (CAD_MAX_SERIES_BYTES_IN_FLIGHT)."""
        self.series_spool = series_spool

    async def _classify(
        self, request: cad_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> ClassifyOutcome:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        identity = current_identity.get()
        domain_request = converters.classify_input(
            request, deadline, identity.name if identity is not None else ""
        )
        return await self._cancellable(self.classifier.classify, domain_request)

    async def _cancellable(self, work: Callable[[R], T], request: R) -> T:
        """``work(request)`` in a worker thread; when the client cancels the call, the request's
        ``cancelled`` event is set, so the worker stops at its next check instead of finishing
        work nobody will read."""
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.executor,
                work,
                dataclasses.replace(request, cancelled=cancelled),  # type: ignore[type-var]
            )
        except asyncio.CancelledError:
            cancelled.set()
            self.metrics.cancelled.inc()
            raise

    async def Classify(  # noqa: N802 (gRPC method name)
        self, request: cad_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ClassifyResponse:
        return converters.classify_response(await self._classify(request, context))

    async def ClassifyStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[cad_pb2.ClassifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[cad_pb2.ClassifyResponse]:
        """Frames in, results out in frame order.

        Up to ``stream_max_inflight`` frames are processed concurrently; the
        reader stops reading once that many are waiting to be sent, so a slow
        client applies back-pressure through HTTP/2 flow control instead of
        making the server buffer.
        """
        pending: asyncio.Queue[asyncio.Future[ClassifyOutcome] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.stream_max_inflight)
        gauge = self.metrics.stream_frames_in_flight
        held = 0  # frames of this stream read and not yet sent

        async def read() -> None:
            nonlocal held
            requests = request_iterator.__aiter__()
            while True:
                await slots.acquire()  # a frame is read only when one may be in flight
                try:
                    request = await requests.__anext__()
                except StopAsyncIteration:
                    break
                held += 1
                gauge.inc()
                pending.put_nowait(asyncio.ensure_future(self._classify(request, context)))
            pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        frame = 0
        try:
            while True:
                if reader.done():
                    reader.result()  # re-raise a read failure
                    task = await pending.get()
                else:
                    getter = asyncio.ensure_future(pending.get())
                    done, _ = await asyncio.wait(
                        {getter, reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter not in done:
                        getter.cancel()
                        continue
                    task = getter.result()
                if task is None:
                    break
                try:
                    outcome = await task
                except (InvalidInput, LimitExceeded, NotFound) as exc:
                    raise type(exc)(f"stream frame {frame}: {exc}") from None
                yield converters.classify_response(outcome)
                held -= 1
                gauge.dec()
                slots.release()
                frame += 1
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            gauge.dec(held)

    async def ClassifyVolume(  # noqa: N802
        self,
        request_iterator: AsyncIterator[cad_pb2.VolumeChunk],
        context: grpc.aio.ServicerContext,
    ) -> cad_pb2.ClassifyVolumeResponse:
        """A CT series streamed in (the header first), classified once it is all here; an
        upload over the series byte limit is refused as it passes it, not after."""
        limits = self.volumes.limits
        header: cad_pb2.VolumeHeader | None = None
        instances = SpilledInstances(self.series_spool)  # on disk as they come, not in memory
        size = reserved = 0
        try:
            async for chunk in request_iterator:
                if chunk.HasField("header"):
                    if header is not None:
                        raise InvalidInput(
                            "the upload has two headers: send the header once, first"
                        )
                    if len(instances):
                        raise InvalidInput("the header must come in the upload's first message")
                    header = chunk.header
                elif header is None:
                    raise InvalidInput("the upload's first message must carry the header")
                for blob in chunk.instances:
                    size += len(blob)
                    if size > limits.max_series_bytes or len(instances) >= limits.max_slices:
                        raise LimitExceeded(
                            f"the series passed {limits.max_series_bytes} bytes or "
                            f"{limits.max_slices} instances (settings CAD_MAX_SERIES_BYTES, "
                            "CAD_MAX_SERIES_INSTANCES)"
                        )
                    self.uploads.reserve(len(blob))  # server-wide, across every upload
                    reserved += len(blob)
                    instances.append(blob)
                del chunk  # the message's memory goes now, not with the next one
            if header is None:
                raise InvalidInput("the upload is empty: send a header and the series' instances")
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            domain_request = converters.volume_input(header, instances, deadline)
            outcome = await self._cancellable(self.volumes.classify, domain_request)
            return converters.volume_response(outcome)
        finally:
            self.uploads.release(reserved)
            instances.close()
            # what the upload's messages and assembly freed goes back to the system, refused
            # or not (glibc keeps freed heap otherwise: the process stays gigabytes large)
            await asyncio.get_running_loop().run_in_executor(self.executor, return_memory)


class ModelAdminServicer(cad_pb2_grpc.ModelAdminServicer):
    """Which model is served, its versions, and pinning (rollback)."""

    def __init__(
        self,
        classifier: Classifier,
        executor: Executor,
        audit_trail: Callable[[str, str, int], list[AuditEvent]] | None = None,
    ) -> None:
        self.models = classifier.models
        self.executor = executor
        self.audit_trail = audit_trail

    async def GetModel(  # noqa: N802
        self, request: cad_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ModelInfo:
        model = self.models.require()
        return converters.model_info(model.info, model)

    async def ListVersions(  # noqa: N802
        self, request: cad_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ListVersionsResponse:
        registry = self.models.registry
        infos, pinned = await asyncio.get_running_loop().run_in_executor(
            self.executor,
            lambda: ([registry.get(v) for v in registry.versions()], registry.pinned()),
        )
        return converters.versions(infos, self.models.current, pinned, self.models.refused)

    async def GetVersion(  # noqa: N802
        self, request: cad_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ModelInfo:
        version = converters.version_number(request.version)
        registry = self.models.registry

        def read() -> VersionInfo:  # the registry is on disk: off the event loop
            if version not in registry.versions():
                raise NotFound(f"no version {validation.quote(request.version)}")
            return registry.get(version)

        info = await asyncio.get_running_loop().run_in_executor(self.executor, read)
        current = self.models.current
        return converters.model_info(
            info, current if current and current.version == version else None
        )

    async def PinVersion(  # noqa: N802
        self, request: cad_pb2.PinRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.PinResponse:
        version = converters.version_number(request.version)
        model = await asyncio.get_running_loop().run_in_executor(
            self.executor,
            self.models.pin,
            version,
            acting_as(converters.person(request.actor, "actor"), "actor"),
            validation.bounded(request.reason, "reason", validation.MAX_REASON_CHARS),
        )
        return cad_pb2.PinResponse(serving_version=str(model.version), pinned_version=str(version))

    async def Unpin(  # noqa: N802
        self, request: cad_pb2.UnpinRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.PinResponse:
        model = await asyncio.get_running_loop().run_in_executor(
            self.executor,
            self.models.unpin,
            acting_as(converters.person(request.actor, "actor"), "actor"),
        )
        return cad_pb2.PinResponse(serving_version=str(model.version) if model else "")

    async def GetAuditTrail(  # noqa: N802
        self, request: cad_pb2.AuditRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.AuditResponse:
        if self.audit_trail is None:
            raise NotFound("this server has no audit trail")
        since = validation.parse_time(request.since)
        action = validation.bounded(request.action, "action", validation.MAX_VARIANT_CHARS)
        events = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.audit_trail, since, action, request.limit or 1000
        )
        return converters.audit_response(events)


class CadReviewServicer(cad_pb2_grpc.CadReviewServicer):
    """Reviewer corrections, missed findings, the annotation queue and label export."""

    def __init__(self, review: ReviewService, executor: Executor) -> None:
        self.review = review
        self.executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args))

    async def SubmitCorrection(  # noqa: N802
        self, request: cad_pb2.Correction, context: grpc.aio.ServicerContext
    ) -> cad_pb2.CorrectionReceipt:
        result = await self._run(
            self.review.submit_correction,
            converters.identifier(request.candidate_id, "candidate_id"),
            converters.verdict_name(request.verdict),
            acting_as(converters.person(request.reviewer, "reviewer"), "reviewer"),
            converters.identifier(request.idempotency_key, "idempotency_key"),
            request.note,
        )
        return await self._told(converters.receipt(result), result.event.reviewer)

    async def _told(self, message: Any, reviewer: str) -> Any:
        """Add the disagreements ``reviewer`` has not been told of to a reply (each told once)."""
        message.notices.extend(converters.notices(await self._run(self.review.notices, reviewer)))
        return message

    async def GetConflicts(  # noqa: N802
        self, request: cad_pb2.ConflictsRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ConflictList:
        return converters.conflict_list(await self._run(self.review.conflicts, request.limit))

    async def Adjudicate(  # noqa: N802
        self, request: cad_pb2.Adjudication, context: grpc.aio.ServicerContext
    ) -> cad_pb2.CorrectionReceipt:
        identity = current_identity.get()
        if identity is None:
            raise InvalidInput(
                "adjudication needs authentication: who settles a disagreement must be known"
            )
        result = await self._run(
            self.review.adjudicate,
            converters.identifier(request.candidate_id, "candidate_id"),
            converters.verdict_name(request.verdict),
            identity.name,
            converters.identifier(request.idempotency_key, "idempotency_key"),
            request.note,
        )
        return converters.receipt(result)

    async def Retract(  # noqa: N802
        self, request: cad_pb2.Retraction, context: grpc.aio.ServicerContext
    ) -> cad_pb2.CorrectionReceipt:
        result = await self._run(
            self.review.retract,
            converters.identifier(request.event_id, "event_id"),
            acting_as(converters.person(request.reviewer, "reviewer"), "reviewer"),
            converters.identifier(request.idempotency_key, "idempotency_key"),
        )
        return await self._told(converters.receipt(result), result.event.reviewer)

    async def ReleaseClaims(  # noqa: N802
        self, request: cad_pb2.ClaimRelease, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ClaimReleaseReply:
        identity = current_identity.get()  # claims are the authenticated reviewer's own
        ids = [converters.identifier(c, "candidate_ids") for c in request.candidate_ids]
        if "" in ids:
            raise InvalidInput(
                f"candidate_ids[{ids.index('')}] is empty: name each candidate to release, or send "
                "none to release all of yours"
            )
        released = await self._run(
            self.review.release_claims, identity.name if identity else "", ids
        )
        return cad_pb2.ClaimReleaseReply(released=released)

    async def AddMissedFinding(  # noqa: N802
        self, request: cad_pb2.MissedFinding, context: grpc.aio.ServicerContext
    ) -> cad_pb2.CorrectionReceipt:
        if not request.HasField("box"):
            raise InvalidInput("box must be set")
        result = await self._run(
            self.review.add_missed_finding,
            converters.identifier(request.request_id, "request_id"),
            converters.box_of(request.box),
            acting_as(converters.person(request.reviewer, "reviewer"), "reviewer"),
            converters.identifier(request.idempotency_key, "idempotency_key"),
            request.note,
        )
        return await self._told(converters.receipt(result), result.event.reviewer)

    async def GetAnnotationQueue(  # noqa: N802
        self, request: cad_pb2.QueueRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.QueueResponse:
        overrides = {
            k: getattr(request, k) for k in ("alpha", "lambda1", "lambda2") if request.HasField(k)
        }
        identity = current_identity.get()  # claims are per authenticated reviewer
        result = await self._run(
            self.review.annotation_queue,
            request.limit,
            validation.bounded(request.variant, "variant", validation.MAX_VARIANT_CHARS),
            request.seed,
            request.omega,
            overrides,
            identity.name if identity else "",
            self.review.claim_s,
        )
        response = converters.queue_response(result)
        return await self._told(response, identity.name) if identity else response

    async def GetReviewImage(  # noqa: N802
        self, request: cad_pb2.ReviewImageRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ReviewImage:
        request_id = converters.identifier(request.request_id, "request_id")
        window = None
        if request.HasField("window"):
            window = (request.window.center, request.window.width)
        return converters.review_image(
            await self._run(
                self.review.review_image,
                request_id,
                request.labels_only,
                window,
                request.offset_mm,
            )
        )

    async def GetReviewStats(  # noqa: N802
        self, request: cad_pb2.ReviewStatsRequest, context: grpc.aio.ServicerContext
    ) -> cad_pb2.ReviewStats:
        identity = current_identity.get()
        unlabeled, precision = await self._run(self.review.stats)
        others, claims_end = await self._run(
            self.review.others_claims, identity.name if identity else ""
        )
        return cad_pb2.ReviewStats(
            reviewer=identity.name if identity else "",
            unlabeled=unlabeled,
            claimed_by_others=others,
            claims_end=claims_end,
            versions=[
                cad_pb2.VersionPrecision(model_version=v, confirmed=tp, dismissed=fp)
                for v, (tp, fp) in sorted(precision.items(), key=lambda kv: _version_key(kv[0]))
            ],
        )

    async def ExportLabels(  # noqa: N802
        self, request: cad_pb2.ExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cad_pb2.LabeledCandidate]:
        since = validation.parse_time(request.since)
        items = await self._run(lambda: list(self.review.export(since)))
        for item in items:
            yield converters.labeled_candidate(item)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
