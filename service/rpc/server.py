"""The inference server: assembly, start/stop, model polling, and the ``cad-server`` entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from cad.clock import utc_now
from cad.errors import LeaseHeld, StoreUnavailable
from cad.labels.archive import PruneReport, prune
from cad.labels.store.leases import holder_name
from cad.logs import configure_logging
from cad.settings import from_flags
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.interceptors import ErrorAndMetricsInterceptor
from service.rpc.servicers import CadInferenceServicer, CadReviewServicer, ModelAdminServicer
from service.rpc.wiring import compose
from service.settings import ServerSettings
from service.uploads import UploadBudget, tune_malloc

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    cad_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("CadInference", "ModelAdmin", "CadReview")
)
ARCHIVE_LEASE = "archive-prune"
HEARTBEAT_S = 15.0
"""How often a server tells the store what it serves, besides every change."""
INFERENCE = cad_pb2.DESCRIPTOR.services_by_name["CadInference"].full_name


class CadServer:
    """One server process's gRPC server, metrics endpoint and model manager."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        parts = compose(settings, registry, on_model_change=lambda: self._update_health())
        self.parts = parts
        self.metrics, self.policy, self.models = parts.metrics, parts.policy, parts.models
        self.store, self.archive, self.spool = parts.store, parts.archive, parts.spool
        self.recorder, self.review, self.batcher = parts.recorder, parts.review, parts.batcher
        self.classifier, self.volumes = parts.classifier, parts.volumes
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="cad-worker")
        self.servicer_uploads = UploadBudget(settings.max_series_bytes_in_flight)
        """Bytes all ClassifyVolume uploads hold together (read by ops and the tests)."""
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._started = utc_now()
        self._beat_state: tuple[int | None, str] | None = None
        self._beat_at = 0.0
        self._health_said: dict[str, bool] = {}
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._store_watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def health_statuses(self) -> dict[str, bool]:
        """What the gRPC health service says, by service name: inference needs a model only
        (it spools while the label store is down); the whole server (readiness), review and
        model administration need the store too."""
        model = self.models.current is not None
        ready = model and self.store.available
        statuses = dict.fromkeys(("", *SERVICE_NAMES), ready)
        statuses[INFERENCE] = model
        return statuses

    def _update_health(self) -> None:
        """Set the health statuses from the model and the store (from any thread)."""
        loop = self._loop
        if loop is None:
            return
        statuses = self.health_statuses()
        if statuses == self._health_said:
            return  # unchanged: the store check runs every second
        self._health_said = statuses

        async def apply() -> None:
            for name, serving in statuses.items():
                await self.health.set(
                    name,
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING,
                )

        asyncio.run_coroutine_threadsafe(apply(), loop)

    async def start(self) -> int:
        """Bind, start serving, load the model in the background. Returns the gRPC port."""
        s = self.settings
        self._loop = asyncio.get_running_loop()
        tune_malloc()  # large buffers (uploads, frames) are returned to the system when freed
        if s.max_series_bytes_in_flight < s.max_series_bytes:
            log.warning(
                "CAD_MAX_SERIES_BYTES_IN_FLIGHT (%d) is below CAD_MAX_SERIES_BYTES (%d): a "
                "series of the largest size allowed can never be uploaded",
                s.max_series_bytes_in_flight,
                s.max_series_bytes,
            )
        limit = s.max_message_bytes
        server = grpc.aio.server(
            interceptors=[ErrorAndMetricsInterceptor(self.metrics, self.policy)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        cad_pb2_grpc.add_CadInferenceServicer_to_server(
            CadInferenceServicer(
                self.classifier,
                self.executor,
                self.metrics,
                s.stream_max_inflight,
                self.volumes,
                self.servicer_uploads,
                s.series_spool_dir,
            ),
            server,
        )
        cad_pb2_grpc.add_ModelAdminServicer_to_server(
            ModelAdminServicer(self.classifier, self.executor, self.store.fleet.audit), server
        )
        cad_pb2_grpc.add_CadReviewServicer_to_server(
            CadReviewServicer(self.review, self.executor), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if s.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = server_credentials(s)
        if credentials is None:
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        else:
            self.port = server.add_secure_port(f"{s.host}:{s.port}", credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC to {s.host}:{s.port}")
        if s.metrics_port >= 0:
            self._metrics_http, _ = start_http_server(
                s.metrics_port, addr=s.metrics_host, registry=self.metrics.registry
            )
            self.metrics_port = int(self._metrics_http.server_address[1])
        await server.start()
        self._server = server
        self.metrics.model_loaded.set(0)
        self._poller = asyncio.ensure_future(self._poll_models())
        self._retention = asyncio.ensure_future(self._retain())
        self._store_watch = asyncio.ensure_future(self._watch_store())
        log.info(
            "CAD server listening on %s:%s (metrics on %s), providers %s, %s, %s",
            s.host,
            self.port,
            self.metrics_port if s.metrics_port >= 0 else "off",
            ",".join(self.models.options.providers),
            "mutual TLS"
            if s.tls_client_ca_file
            else ("TLS" if credentials else "plaintext (no TLS)"),
            "bearer tokens" if self.policy.tokens else "authentication OFF",
        )
        if self.policy.tokens is None:
            log.warning(
                "authentication is off: set CAD_AUTH_TOKENS_FILE before exposing this server"
            )
        return self.port

    async def refresh_models(self) -> bool:
        """Check the registry now (in a worker thread). True if a new version was swapped in."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.models.refresh)

    async def _poll_models(self) -> None:
        said = ""
        while True:
            try:
                await self.refresh_models()
            except Exception:
                log.exception("model registry poll failed")
            if self.models.current is None and self.models.status != said:
                said = self.models.status  # say why once, not every poll
                log.warning("%s", said)
            await asyncio.sleep(self.settings.poll_interval_s)

    def check_store(self) -> bool:
        """Reach the label store now; when it answers, write what was spooled meanwhile. Updates
        readiness and ``cad_store_up``. True: the store is reachable."""
        up = self.store.ping()
        self.metrics.store_up.set(1 if up else 0)
        self._update_health()
        if up:
            self._heartbeat()
        if up and self.spool.pending:  # ready first: reviews need not wait for the backlog
            self.recorder.drain()
            up = self.store.available
            self.metrics.store_up.set(1 if up else 0)
            self._update_health()
        return up

    def _heartbeat(self) -> None:
        """Tell the store what this process serves (``cad model prune`` never removes it), when
        it changed or every :data:`HEARTBEAT_S` seconds."""
        model = self.models.current
        state = (model.version, model.precision) if model else (None, self.models.precision)
        due = time.monotonic() - self._beat_at >= HEARTBEAT_S
        if state == self._beat_state and not due:
            return
        try:
            self.store.fleet.heartbeat(
                self.replica_id,
                self.models.registry.name,
                state[0],
                state[1],
                socket.gethostname(),
                self._started,
            )
        except StoreUnavailable:
            return
        self._beat_state, self._beat_at = state, time.monotonic()

    async def _watch_store(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self.executor, self.check_store)
            except Exception:
                log.exception("label store check failed")
            await asyncio.sleep(self.settings.store_probe_interval_s)

    def prune_archive_now(self) -> PruneReport | None:
        """Apply the archive retention, if no other replica is at it (one pruner at a time, by
        the store's ``archive-prune`` lease). None: another holds the lease; it was skipped."""
        s = self.settings
        try:
            with self.store.lease(ARCHIVE_LEASE, holder_name("cad-server")):
                return prune(
                    self.store, self.archive, s.archive_max_age_s, s.archive_max_unlabeled_bytes
                )
        except LeaseHeld as exc:
            log.info("archive retention skipped: %s", exc)
            return None

    async def prune_archive(self) -> PruneReport | None:
        """:meth:`prune_archive_now` in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.prune_archive_now)

    async def _retain(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval_s)
            try:
                await self.prune_archive()
            except Exception:
                log.exception("archive retention failed")

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds, release all."""
        for task in (self._poller, self._retention, self._store_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(self.settings.grace_s if grace is None else grace)
            self._server = None
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()  # after the workers: requests they still wait on finish first
        self.archive.close()  # fsyncs the blobs still pending
        with contextlib.suppress(StoreUnavailable):
            self.store.fleet.forget_replica(self.replica_id)
        self.spool.close()
        self.store.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


class ServerThread:
    """Runs a :class:`CadServer` on its own event loop in a background thread.

    For tests, the demo and embedding: ``start()`` returns once the port is
    bound; ``stop()`` shuts down gracefully and joins the thread.
    """

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry | None = None) -> None:
        self.server = CadServer(settings, registry)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cad-server", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def refresh_models(self) -> bool:
        """Poll the registry now instead of waiting for the poll interval."""
        return bool(self.call(self.server.refresh_models()))

    def stop(self, grace: float | None = None) -> None:
        try:
            self.call(self.server.stop(grace))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_credentials(s: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings (None: plaintext). Client CA set: mutual TLS."""
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        raise ValueError("set both CAD_TLS_CERT_FILE and CAD_TLS_KEY_FILE, or neither")
    if s.tls_cert_file is None or s.tls_key_file is None:
        if s.tls_client_ca_file is not None:
            raise ValueError(
                "CAD_TLS_CLIENT_CA_FILE (mutual TLS) needs CAD_TLS_CERT_FILE and CAD_TLS_KEY_FILE"
            )
        return None
    ca = s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def freeze_startup_objects() -> int:
    """Move every object alive after start-up (imported modules, gRPC and ONNX Runtime
    bindings, settings: some 10^5 objects) out of the garbage collector's reach, so that a
    full collection only walks what requests create. Without it a full collection walked them
    all while every worker waited on the GIL (pauses of ~15 ms on 2 cores, in the video
    latency tail). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully."""
    server = CadServer(settings)
    await server.start()
    log.info(
        "froze %d start-up objects out of the garbage collector's full passes",
        freeze_startup_objects(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.grace_s)
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    """``cad-server``: serve the registry's current model over gRPC."""
    parser = argparse.ArgumentParser(prog="cad-server", description=main.__doc__)
    parser.add_argument("--port", type=int, help="gRPC port (default CAD_PORT or 50051)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (CAD_METRICS_PORT)")
    parser.add_argument("--registry", help="registry root (CAD_REGISTRY_ROOT)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    settings = from_flags(
        ServerSettings,
        args,
        {"port": "port", "metrics_port": "metrics_port", "registry": "registry_root"},
    )
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
