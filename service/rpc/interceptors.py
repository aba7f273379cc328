"""One interceptor: domain errors -> gRPC status codes, and per-call latency/status metrics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cad.errors import (
    INTERRUPTS,
    AlreadyExists,
    CadError,
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    LeaseHeld,
    LimitExceeded,
    ModelRejected,
    ModelUnavailable,
    NotDisputed,
    NotFound,
    NotScored,
    Settled,
    StoreUnavailable,
)
from cad.metrics import ServiceMetrics
from cad.validation import MAX_STATUS_CHARS
from service.rpc.auth import AccessPolicy, PermissionDenied, Unauthenticated, current_identity

log = logging.getLogger(__name__)


# What each domain error answers as; the first match wins (the status-code reference page is
# generated from this list by scripts/gen_reference_docs.py).
STATUS_CODES: list[tuple[type[CadError], grpc.StatusCode]] = [
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ModelRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (LeaseHeld, grpc.StatusCode.FAILED_PRECONDITION),
    (Settled, grpc.StatusCode.FAILED_PRECONDITION),
    (NotDisputed, grpc.StatusCode.FAILED_PRECONDITION),
    (NotScored, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def status_for(exc: CadError) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class _Call:
    """Tracks one call's status code and records metrics when it ends."""

    def __init__(self, metrics: ServiceMetrics, method: str) -> None:
        self.metrics = metrics
        self.method = method
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.recorded = False

    async def fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        """Abort the call with the status matching ``exc`` (raises AbortError).

        Any exception becomes a status, ``BaseException`` subclasses included (a native
        decoder's panic surfaces as one): a call never ends without an answer."""
        if isinstance(exc, CadError):
            self.code = status_for(exc)
            message = str(exc)
            if len(message) > MAX_STATUS_CHARS:  # metadata has a hard size limit
                message = message[: MAX_STATUS_CHARS - 3] + "..."
            self.done()  # abort sends the status: count it before any client can see it
            await context.abort(self.code, message)
        ref = uuid.uuid4().hex[:12]
        log.error("unexpected error in %s (ref %s)", self.method, ref, exc_info=exc)
        self.code = grpc.StatusCode.INTERNAL
        self.done()
        await context.abort(self.code, f"internal error (ref {ref}); the server log has details")

    def aborted(self, context: grpc.aio.ServicerContext) -> None:
        code = context.code()
        self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    def done(self) -> None:
        """Record the call once, with the status decided so far."""
        if self.recorded:
            return
        self.recorded = True
        self.metrics.requests.labels(self.method, self.code.name).inc()
        self.metrics.request_latency.labels(self.method).observe(time.perf_counter() - self.start)


_HANDLER_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    # the request iterator in, one answer out: wrapped as unary
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)
"""A handler's kinds: its attribute, grpc's constructor, whether its answers stream out."""


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Authorises every call (bearer token and role, see :mod:`service.rpc.auth`), maps
    :class:`CadError` subclasses to status codes and records every call's outcome."""

    def __init__(self, metrics: ServiceMetrics, policy: AccessPolicy | None = None) -> None:
        self.metrics = metrics
        self.policy = policy or AccessPolicy(None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        method = full.rsplit("/", 1)[-1]
        metadata = handler_call_details.invocation_metadata
        for kind, make, streaming in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior:
                wrap = self._streaming if streaming else self._unary
                return make(
                    wrap(behavior, method, full, metadata),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        raise TypeError(f"{full}: a handler of no known kind would skip authorisation")

    @contextlib.asynccontextmanager
    async def _guarded(
        self, method: str, full: str, metadata: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_Call]:
        """Around one call: authorise it, turn whatever it raises into a status, count it once."""
        call = _Call(self.metrics, method)
        try:
            current_identity.set(self.policy.authorize(full, metadata))
            yield call
        except grpc.aio.AbortError:
            call.aborted(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.code = grpc.StatusCode.CANCELLED  # the client went away (mid-stream)
            raise
        except INTERRUPTS:
            call.code = grpc.StatusCode.UNKNOWN
            raise
        except BaseException as exc:  # noqa: BLE001  every handler failure is mapped to a status and counted
            await call.fail(context, exc)
        finally:
            call.done()

    def _unary(
        self, behavior: Callable[..., Any], method: str, full: str, metadata: Any
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._guarded(method, full, metadata, context):
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

        return wrapped

    def _streaming(
        self, behavior: Callable[..., Any], method: str, full: str, metadata: Any
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._guarded(method, full, metadata, context):
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                elif inspect.isawaitable(result):
                    await result

        return wrapped
