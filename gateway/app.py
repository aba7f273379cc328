"""``cad dicom-gateway``: a PACS sends images by C-STORE; each is classified through the CAD
server's Classify RPC (so the archive, the review queue and the metrics see it like any other
request) and the results go back as a TID 1500 SR by C-STORE to the configured destination.

Nothing is lost between those steps: the storage handler only writes the instance to the
durable ``inbox`` folder and acknowledges; a worker classifies it and writes the SR to the
``outbox`` folder; a sender delivers the outbox, retrying with back-off until the destination
takes it (a restart picks up both folders where they were). An instance seen before (its SOP
Instance UID) is acknowledged and not classified again; an SR, the gateway's own or another
CAD's, is never classified as an image. Logs name counts, frames and AE titles, never a UID or
a patient attribute.

What may send, and what is classified: associations from callers outside
``CAD_GATEWAY_CALLING_AES`` or calling another AE title are refused and counted; objects of a SOP
class the server cannot classify (RT Dose, Segmentation, PDF, presentation states, ECG ...) are
acknowledged, ignored and counted. Compressed images are accepted in every transfer syntax the
server decodes. Received objects are written to disk as they arrive, never held whole in memory;
each frame is sent as a file of its own (``gateway.frames``), a few frames of one object per
turn, so a long cine never holds up the images behind it. A refusal for the object's own sake
(INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) sets it aside at once with a counted reason; a
failure of its own (a deadline) is retried ``CAD_GATEWAY_MAX_ATTEMPTS`` times; only the server
being away pauses everything. Every ``Classify`` carries an idempotency key derived from the
instance and frame, so an object sent again after a crash is recorded once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydicom import dcmread
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from gateway.catchup import OrthancCatchUp
from gateway.frames import frame_count, frame_file, read_header
from gateway.settings import GatewaySettings
from gateway.sr import (
    Finding,
    Finding3D,
    Point3D,
    Region,
    build_series_sr,
    build_sr,
    build_volume_sr,
    points_of,
    regions_of,
)
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.durable import copy_atomic, write_atomic
from service.logs import configure_logging
from service.rpc.channel import client_channel
from service.settings import from_flags

log = logging.getLogger(__name__)
# highdicom logs the source instance's UID at INFO while it builds an SR: never logged
logging.getLogger("highdicom").setLevel(logging.WARNING)

SR_MODALITY = "SR"
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
"""Comprehensive 3D SR Storage: what the gateway sends."""

TRANSFER_SYNTAXES = [
    getattr(uids, name)
    for name in (
        "ExplicitVRLittleEndian",
        "ImplicitVRLittleEndian",
        "ExplicitVRBigEndian",
        "DeflatedExplicitVRLittleEndian",
        "JPEGBaseline8Bit",
        "JPEGExtended12Bit",
        "JPEGLossless",
        "JPEGLosslessSV1",
        "JPEGLSLossless",
        "JPEGLSNearLossless",
        "JPEG2000Lossless",
        "JPEG2000",
        "RLELossless",
    )
]
"""What the gateway accepts: every transfer syntax the CAD server decodes (pydicom with the
pylibjpeg plugins the package installs). Video syntaxes (MPEG, HEVC) are not decoded there."""

CLASSIFIABLE = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image, for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image, for processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image, for presentation",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
}
"""The SOP classes classified by default (``CAD_GATEWAY_SOP_CLASSES`` replaces the list): images
whose pixels the server decodes frame by frame. Not here, so acknowledged and ignored: RT, SEG,
encapsulated PDF, presentation states, waveforms, video endoscopy (MPEG) and every other class."""

SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    COMPREHENSIVE_3D_SR,
    "1.2.840.10008.5.1.4.1.1.88.35",
}
"""Structured reports: read for an upstream CAD's regions (callers in sr mode), never classified."""

SERVER_AWAY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
"""Answers that say nothing about the object: every object would get them, so all wait."""

REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
"""Refusals of the object itself: it is set aside at once, never retried."""


def refused_for_good(code: grpc.StatusCode, details: str) -> bool:
    """True when the server refused the object itself. RESOURCE_EXHAUSTED also answers a full
    inference queue, which says "retry" in its message (service.models.batcher): that one is
    load, not the object, and is retried."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in (details or "").lower():
        return False
    return code in REFUSED


class GatewayMetrics:
    """The gateway's Prometheus metrics (its own registry; ``/metrics`` on ``metrics_port``)."""

    def __init__(self, registry: CollectorRegistry, inbox: Path, outbox: Path) -> None:
        self.registry = registry
        self.received = Counter(
            "cad_gateway_images_received",
            "Images received by C-STORE and queued",
            registry=registry,
        )
        self.duplicates = Counter(
            "cad_gateway_duplicates",
            "Instances received again (acknowledged, not classified again)",
            registry=registry,
        )
        self.reports_ignored = Counter(
            "cad_gateway_reports_ignored", "SRs received (never classified)", registry=registry
        )
        self.classify_failures = Counter(
            "cad_gateway_classify_failures",
            "Images the CAD server refused or that could not be read (set aside)",
            registry=registry,
        )
        self.set_aside = Counter(
            "cad_gateway_set_aside",
            "Objects set aside unclassified, by reason (the server's status, unreadable, "
            "unpaired, attempts)",
            ["reason"],
            registry=registry,
        )
        self.ignored = Counter(
            "cad_gateway_ignored",
            "Objects acknowledged and not classified, by reason (sop_class: not an image the "
            "server classifies)",
            ["reason"],
            registry=registry,
        )
        self.associations_refused = Counter(
            "cad_gateway_associations_refused",
            "Associations refused, by reason (calling_ae, called_ae, other)",
            ["reason"],
            registry=registry,
        )
        self.retries = Counter(
            "cad_gateway_classify_retries",
            "Classifications of an object that failed for a reason of its own and were retried",
            registry=registry,
        )
        self.expired = Counter(
            "cad_gateway_set_aside_deleted",
            "Set-aside objects deleted after CAD_GATEWAY_FAILED_RETENTION_DAYS",
            registry=registry,
        )
        self.sent = Counter("cad_gateway_srs_sent", "SRs the destination took", registry=registry)
        self.send_failures = Counter(
            "cad_gateway_send_failures", "SR sends that failed (retried)", registry=registry
        )
        self.receipt_to_sr = Histogram(
            "cad_gateway_receipt_to_sr_seconds",
            "From an image's receipt to the destination's acceptance of its SR",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        queue = Gauge(
            "cad_gateway_queue_depth",
            "Instances waiting: images to classify (inbox), SRs to send (outbox)",
            ["queue"],
            registry=registry,
        )
        queue.labels("inbox").set_function(lambda: len(list(inbox.glob("*.dcm"))))
        queue.labels("outbox").set_function(lambda: len(list(outbox.glob("*.dcm"))))


@dataclass
class GatewayStats:
    """What the gateway has done since it started (what its tests and an operator read)."""

    received: int = 0
    duplicates: int = 0
    reports_ignored: int = 0
    upstream_reports: int = 0
    unpaired: int = 0
    classified: int = 0
    failed: int = 0
    sent: int = 0
    send_failures: int = 0
    ignored: int = 0
    refused_associations: int = 0
    set_aside: dict[str, int] = field(default_factory=dict)
    """Objects set aside unclassified, by reason."""
    retries: int = 0
    receipt_to_sent_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    """The most recent receipt-to-SR times (bounded: a gateway runs for months)."""


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # classified with its series meanwhile
        return 0


def idempotency_key(instance: str, frame: int, boxes: list[tuple[float, ...]]) -> str:
    """The key of one frame's Classify: the same instance (its key, not its UID), frame and
    candidates give the same key, so a retry after a crash is recorded once by the server."""
    text = json.dumps([instance, frame, [list(b) for b in boxes]])
    return "dicom-gateway:" + hashlib.sha256(text.encode()).hexdigest()


def _key(uid: str) -> str:
    """A file name for an instance that does not carry its UID (folders are not logs, but a
    listing should not show them either)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def parse_destination(text: str) -> tuple[str, str, int] | None:
    """``AE@host:port`` -> (AE, host, port); "" or a DICOMweb URL -> None."""
    if not text or text.startswith(("http://", "https://")):
        return None
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return ae, host, int(port)
    except ValueError:
        raise ValueError(f"destination {text!r}: write it as AE@host:port") from None


@dataclass
class _Retry:
    """An object whose last attempt failed for a reason of its own: when it may go again."""

    attempts: int
    next_at: float


class Gateway:
    """The SCP, the classifying worker and the sender, in one process."""

    def __init__(self, settings: GatewaySettings, channel: grpc.Channel | None = None) -> None:
        self.settings = settings
        self.destination = parse_destination(settings.destination)
        self.stow_url = (
            settings.destination.rstrip("/") + "/studies"
            if settings.destination.startswith(("http://", "https://"))
            else ""
        )
        """STOW-RS: SRs are POSTed here (a DICOMweb service root + /studies) instead of C-STORE."""
        self.channel = channel or client_channel(
            settings.server, settings.tls_ca, settings.tls_server_name
        )
        self.stub = cad_pb2_grpc.CadInferenceStub(self.channel)
        self.token = settings.token_file.read_text().strip() if settings.token_file else ""
        root = settings.spool_dir
        self.inbox, self.outbox, self.seen, self.failed, self.regions, self.results = (
            root / "inbox",
            root / "outbox",
            root / "seen",
            root / "failed",
            root / "regions",
            root / "results",
        )
        for folder in (
            self.inbox,
            self.outbox,
            self.seen,
            self.failed,
            self.regions,
            self.results,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        self.stats = GatewayStats()
        self.metrics = GatewayMetrics(CollectorRegistry(), self.inbox, self.outbox)
        self.metrics_port = 0
        self.device_uid = _device_uid(root)
        self._wake = threading.Condition()
        self._regions_lock = threading.Lock()
        """Associations store in threads of their own: one SR's regions merged at a time."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._callers = {
            **{ae.strip(): "frame" for ae in settings.frame_callers.split(",") if ae.strip()},
            **{ae.strip(): "sr" for ae in settings.sr_callers.split(",") if ae.strip()},
        }
        self.calling_aes = [ae.strip() for ae in settings.calling_aes.split(",") if ae.strip()]
        self.sop_classes = {
            uid.strip() for uid in settings.sop_classes.split(",") if uid.strip()
        } or set(CLASSIFIABLE)
        self._accept_lock = threading.Lock()
        self.catch_up = (
            OrthancCatchUp(
                settings.catch_up,
                root,
                self.has_seen,
                self.accept,
                settings.catch_up_caller or (self.calling_aes or ["ORTHANC"])[0],
                settings.catch_up_delay_s,
                settings.catch_up_credentials_file,
            )
            if settings.catch_up
            else None
        )
        self._retry: dict[str, _Retry] = {}
        """Objects waiting to be tried again (by file stem); a restart tries them at once."""
        self._purged_at = 0.0
        self._server: Any = None
        self._metrics_http: Any = None
        self.port = 0
        # Received objects go to a file as their P-DATA arrives, never into memory whole
        # (pynetdicom's switch is process-wide; the gateway is a process of its own).
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.supported_contexts = [
            build_context(str(cx.abstract_syntax), list[str | UID](TRANSFER_SYNTAXES))
            for cx in AllStoragePresentationContexts
        ]
        self.ae.add_supported_context(Verification)
        self.ae.require_called_aet = True
        self.ae.require_calling_aet = self.calling_aes
        self.sender_ae = AE(ae_title=settings.ae_title)
        self.sender_ae.add_requested_context(COMPREHENSIVE_3D_SR)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Gateway:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda _e: SUCCESS),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        self.port = self._server.server_address[1]
        if self.settings.metrics_port >= 0:
            http, _ = start_http_server(
                self.settings.metrics_port, self.settings.host, registry=self.metrics.registry
            )
            self._metrics_http = http
            self.metrics_port = http.server_port
        loops = [("classify", self._classify_loop), ("send", self._send_loop)]
        if self.catch_up is not None:
            loops.append(("catch-up", self._catch_up_loop))
        for name, loop in loops:
            thread = threading.Thread(target=loop, name=f"cad-gateway-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "DICOM gateway %s listening on %s:%d; SRs to %s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            self.destination[0] if self.destination else "the outbox only",
        )
        if not self.calling_aes:
            log.warning(
                "any calling AE title may send to the gateway: set CAD_GATEWAY_CALLING_AES to the "
                "PACS and modalities that may"
            )
        return self

    def stop(self) -> None:
        """Stop receiving, finish the current step, keep the folders (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._notify()
        if self._server is not None:
            self._server.shutdown()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        for thread in self._threads:
            thread.join(30)
        self.channel.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _wait(self, seconds: float) -> None:
        with self._wake:
            self._wake.wait(seconds)

    # ------------------------------------------------------------------ receiving

    def _on_rejected(self, event: Any) -> None:
        """An association refused by pynetdicom's checks: counted, the caller's AE logged."""
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.calling_aes and calling not in self.calling_aes:
            reason = "calling_ae"
        elif str(event.assoc.requestor.primitive.called_ae_title).strip() != self.settings.ae_title:
            reason = "called_ae"
        else:
            reason = "other"
        self.stats.refused_associations += 1
        self.metrics.associations_refused.labels(reason).inc()
        log.warning("an association from %r was refused (%s)", calling, reason)

    def _on_store(self, event: Any) -> int:
        """Queue and acknowledge; the worker does the rest. The object arrives as a file
        (``event.dataset_path``): it is read for its attributes and copied, never held whole."""
        request = event.request
        uid = str(request.AffectedSOPInstanceUID or "")
        if not uid:
            return 0xC210
        caller = str(event.assoc.requestor.ae_title).strip()
        return self.accept(Path(event.dataset_path), caller, uid, str(request.AffectedSOPClassUID))

    def has_seen(self, uid: str) -> bool:
        """An instance received (or caught up with) before, or one of the gateway's own SRs."""
        return (self.seen / _key(uid)).exists()

    def accept(self, received: Path, caller: str, uid: str = "", sop_class: str = "") -> int:
        """One instance as ``caller`` sent it (a C-STORE, or the catch-up from the PACS): queued,
        read for its regions, ignored or refused; its DIMSE status. One at a time, so that the
        push and the catch-up never queue one instance twice."""
        try:
            ds = dcmread(received, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 (a peer's malformed data set: refused, not raised)
            log.warning("a C-STORE from %s could not be decoded", caller)
            return 0xC210
        uid = uid or str(getattr(ds, "SOPInstanceUID", "") or "")
        sop_class = sop_class or str(getattr(ds, "SOPClassUID", "") or "")
        if not uid:
            return 0xC210
        with self._accept_lock:
            marker = self.seen / _key(uid)
            if marker.exists():  # received before, or one of the gateway's own SRs
                self.stats.duplicates += 1
                self.metrics.duplicates.inc()
                return SUCCESS
            if sop_class in SR_CLASSES or str(getattr(ds, "Modality", "")) == SR_MODALITY:
                return self._on_report(ds, caller, marker)  # never classified as an image
            if sop_class not in self.sop_classes:
                self.stats.ignored += 1
                self.metrics.ignored.labels("sop_class").inc()
                log.info("an object of SOP class %s from %s is not classified", sop_class, caller)
                return SUCCESS
            try:
                write_atomic(
                    self.inbox / f"{_key(uid)}.json",
                    json.dumps(
                        {
                            "caller": caller,
                            "modality": str(getattr(ds, "Modality", "") or ""),
                            "series": str(getattr(ds, "SeriesInstanceUID", "") or ""),
                            "for": str(getattr(ds, "FrameOfReferenceUID", "") or ""),
                            "uid": _key(uid),
                        }
                    ).encode(),
                )
                copy_atomic(received, self.inbox / f"{_key(uid)}.dcm")
                write_atomic(marker, f"{time.time()}\n".encode())
            except OSError as exc:
                log.error("an image could not be queued (%s); the sender is told to retry", exc)
                return OUT_OF_RESOURCES
        self.stats.received += 1
        self.metrics.received.inc()
        self._notify()
        return SUCCESS

    def _on_report(self, header: Dataset, caller: str, marker: Path) -> int:
        """An SR: an upstream CAD's regions kept (callers in sr mode), else ignored."""
        if self.mode_of(caller) != "sr":
            self.stats.reports_ignored += 1
            self.metrics.reports_ignored.inc()
            return SUCCESS
        try:
            self._keep_regions(regions_of(header))
            self._keep_points(points_of(header))
            write_atomic(marker, f"{time.time()}\n".encode())
        except OSError as exc:
            log.error("an SR's regions could not be kept (%s); the sender is told to retry", exc)
            return OUT_OF_RESOURCES
        self.stats.upstream_reports += 1
        self._notify()
        return SUCCESS

    def _catch_up_loop(self) -> None:
        """Every ``catch_up_interval_s``: what the PACS stored and did not push (see
        :mod:`gateway.catchup`)."""
        assert self.catch_up is not None
        while not self._stop.is_set():
            try:
                self.catch_up.poll()
            except OSError as exc:  # the PACS away, or an instance not queued: next time
                log.warning("catching up with the PACS failed (%s); retrying", exc)
            self._stop.wait(self.settings.catch_up_interval_s)

    # ------------------------------------------------------------------ classifying

    def mode_of(self, caller: str) -> str:
        """Where the candidates of ``caller``'s images come from: ``frame`` or ``sr``."""
        return self._callers.get(caller, self.settings.mode)

    def _keep_regions(self, regions: list[Region]) -> None:
        """An upstream SR's regions, kept per referenced instance (merged with earlier ones)."""
        by_instance: dict[str, list[Region]] = {}
        for r in regions:
            by_instance.setdefault(r.sop_instance_uid, []).append(r)
        with self._regions_lock:
            for uid, found in by_instance.items():
                path = self.regions / f"{_key(uid)}.json"
                kept = json.loads(path.read_text()) if path.exists() else []
                kept += [[r.frame_index, r.x, r.y, r.width, r.height] for r in found]
                write_atomic(path, json.dumps(kept).encode())

    def _points_path(self, frame_of_reference: str) -> Path:
        return self.regions / f"for-{_key(frame_of_reference)}.json"

    def _keep_points(self, points: list[Point3D]) -> None:
        """An upstream SR's 3D points (PE candidates), kept per frame of reference."""
        by_frame: dict[str, list[Point3D]] = {}
        for p in points:
            by_frame.setdefault(p.frame_of_reference_uid, []).append(p)
        with self._regions_lock:
            for uid, found in by_frame.items():
                path = self._points_path(uid)
                kept = json.loads(path.read_text()) if path.exists() else []
                kept += [[p.x, p.y, p.z] for p in found]
                write_atomic(path, json.dumps(kept).encode())

    def _classify_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._purge_set_aside()
            pending = sorted(self.inbox.glob("*.dcm"), key=_mtime)
            done_any = False
            now = time.time()
            for path in pending:
                if self._stop.is_set():
                    return
                if not path.exists():  # classified with its series a moment ago
                    continue
                retry = self._retry.get(path.stem)
                if retry is not None and retry.next_at > now:
                    continue  # its own failure: the others go first meanwhile
                try:
                    done_any |= self._classify(path)
                    backoff = 0.5
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    if code in SERVER_AWAY:
                        log.warning("the CAD server did not answer (%s); retrying", code.name)
                        self._wait(backoff)
                        backoff = min(backoff * 2, self.settings.retry_max_s)
                        break
                    if refused_for_good(code, details):
                        log.warning("an image was refused by the CAD server: %s", details)
                        self._set_aside(path, code.name.lower())
                    else:
                        self._failed_once(path, code.name)
                    done_any = True
                except Exception as exc:  # noqa: BLE001 (an image it cannot read: set aside)
                    log.warning(
                        "an image could not be classified (%s); set aside", type(exc).__name__
                    )
                    self._set_aside(path, "unreadable")
                    done_any = True
            done_any |= self._flush_results()
            if not done_any:
                self._wait(1.0 if pending or any(self.results.iterdir()) else 5.0)

    def _failed_once(self, path: Path, why: str) -> None:
        """A failure of the object's own (a deadline, a server error): tried again after a
        back-off while the others go on, set aside after ``max_attempts``."""
        retry = self._retry.get(path.stem) or _Retry(0, 0.0)
        retry.attempts += 1
        if retry.attempts >= self.settings.max_attempts:
            log.warning("an image failed %d times (%s); set aside", retry.attempts, why)
            self._set_aside(path, "attempts")
            return
        retry.next_at = time.time() + min(2.0**retry.attempts, self.settings.retry_max_s)
        self._retry[path.stem] = retry
        self.stats.retries += 1
        self.metrics.retries.inc()
        log.warning("an image failed (%s, attempt %d); retried later", why, retry.attempts)

    def _set_aside(self, path: Path, reason: str) -> None:
        """Out of the queue, unclassified, with its reason beside it and counted; deleted after
        ``failed_retention_days``."""
        self._retry.pop(path.stem, None)
        if path.exists():
            path.replace(self.failed / path.name)
            write_atomic((self.failed / path.name).with_suffix(".reason"), reason.encode())
        path.with_suffix(".json").unlink(missing_ok=True)
        path.with_suffix(".progress").unlink(missing_ok=True)
        self.stats.failed += 1
        self.stats.set_aside[reason] = self.stats.set_aside.get(reason, 0) + 1
        self.metrics.classify_failures.inc()
        self.metrics.set_aside.labels(reason).inc()

    def _purge_set_aside(self) -> None:
        """Delete set-aside objects older than the retention (checked once a minute)."""
        now = time.time()
        if now - self._purged_at < 60:
            return
        self._purged_at = now
        horizon = now - self.settings.failed_retention_days * 86400
        for path in self.failed.iterdir():
            try:
                if path.stat().st_mtime < horizon:
                    counted = path.suffix == ".dcm" or path.is_dir()
                    if path.is_dir():  # a series' results whose SR could not be built
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    if counted:
                        self.metrics.expired.inc()
            except FileNotFoundError:
                continue

    def _candidates(
        self, path: Path, meta: dict[str, Any], frames: int, rows: int, cols: int
    ) -> tuple[list[tuple[float, ...]], str] | bool:
        """The boxes to classify on ``path`` and their recipe; or True/False when the object
        was handled another way (classified with its series, set aside) or must wait."""
        sidecar = path.with_suffix(".json")
        if self.mode_of(meta["caller"]) != "sr":
            return [(f, 0.0, 0.0, float(cols), float(rows)) for f in range(frames)], "frame"
        kept = self.regions / f"{path.stem}.json"
        points = self._points_path(meta.get("for", ""))
        if not kept.exists() and meta.get("modality") == "CT" and points.exists():
            return self._classify_series(meta["series"], meta["for"])
        if not kept.exists():
            if time.time() - path.stat().st_mtime < self.settings.pair_wait_s:
                return False  # its SR may still come
            log.warning("an image waited %.0f s for its SR; set aside", self.settings.pair_wait_s)
            self._set_aside(path, "unpaired")
            sidecar.unlink(missing_ok=True)
            self.stats.unpaired += 1
            return True
        return [tuple(r) for r in json.loads(kept.read_text())], ""

    def _classify(self, path: Path) -> bool:
        """A turn of one received object: up to ``frames_per_turn`` of its frames classified,
        each sent as a file of its own; once every frame is, its SR written. False while it
        waits for the SR that names its candidates. Whole-frame: every frame one candidate
        (recipe ``frame``); from an SR: its regions, on their frames, with the model's recipe.
        What a turn found is kept beside the object (``.progress``): a restart goes on."""
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {"caller": ""}
        ds = read_header(path)
        frames = frame_count(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        found = self._candidates(path, meta, frames, rows, cols)
        if isinstance(found, bool):
            return found
        boxes, recipe = found
        progress_path = path.with_suffix(".progress")
        progress: dict[str, Any] = (
            json.loads(progress_path.read_text())
            if progress_path.exists()
            else {"version": "", "frames": {}}
        )
        todo = [f for f in sorted({int(b[0]) for b in boxes}) if str(f) not in progress["frames"]]
        for frame in todo[: self.settings.frames_per_turn]:
            mine = [b for b in boxes if int(b[0]) == frame]
            reply = self.stub.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=frame_file(path, ds, frame),
                    frame_index=0,  # the frame is sent as a file of its own
                    recipe=recipe,
                    source_id=f"dicom-gateway frame {frame + 1}" if frames > 1 else "",
                    idempotency_key=idempotency_key(meta.get("uid") or path.stem, frame, mine),
                    candidates=[
                        cad_pb2.Candidate(
                            client_id=f"frame-{frame + 1}-{i + 1}",
                            box=cad_pb2.Box(x=b[1], y=b[2], width=b[3], height=b[4]),
                        )
                        for i, b in enumerate(mine)
                    ],
                ),
                timeout=self.settings.rpc_timeout_s,
                metadata=[("authorization", f"Bearer {self.token}")] if self.token else None,
            )
            if progress["version"] and reply.model_version != progress["version"]:
                progress = {"version": "", "frames": {}}  # a new model: one SR, one version
            progress["version"] = reply.model_version
            progress["frames"][str(frame)] = [r.probability for r in reply.results]
        remaining = [f for f in todo if str(f) not in progress["frames"]]
        if remaining:
            write_atomic(progress_path, json.dumps(progress).encode(), sync=False)
            return True
        findings = []
        for frame in sorted({int(b[0]) for b in boxes}):
            mine = [b for b in boxes if int(b[0]) == frame]
            probabilities = progress["frames"][str(frame)]
            for b, p in zip(mine, probabilities, strict=True):
                findings.append(Finding(frame, b[1], b[2], b[3], b[4], p))
        version = progress["version"]
        received = path.stat().st_mtime
        if self.settings.sr_grouping == "image":
            sr = build_sr(ds, findings, version, self.device_uid)
            self._to_outbox(sr, received, path.stem)
        else:  # kept until its series is complete: one SR for the series
            self._keep_result(path, version, received, findings)
        path.unlink()
        sidecar.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)
        self._retry.pop(path.stem, None)
        self.stats.classified += 1
        log.info(
            "classified an image: %d candidate(s) on %d frame(s), model v%s",
            len(findings),
            frames,
            version,
        )
        self._notify()
        return True

    def _to_outbox(self, sr: Any, received: float, name: str) -> None:
        """An SR into the outbox (its UID first marked as the gateway's own: never input)."""
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        write_atomic(self.seen / _key(str(sr.SOPInstanceUID)), b"ours\n")
        write_atomic(self.outbox / f"{int(received * 1e6)}-{name}.dcm", buffer.getvalue())

    def _keep_result(
        self, path: Path, version: str, received: float, findings: list[Finding]
    ) -> None:
        """One image's findings, kept with its header (no pixels) in its series' group (per
        model version) until the series is complete (:meth:`_flush_results`)."""
        header = dcmread(path, stop_before_pixels=True)
        series = _key(str(getattr(header, "SeriesInstanceUID", "") or "") or path.stem)
        group = self.results / _key(f"{series}\0{version}")  # (bookkeeping names no UID)
        group.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        header.save_as(buffer, enforce_file_format=True)
        write_atomic(group / f"{path.stem}.dcm", buffer.getvalue())
        kept = [[f.frame_index, f.x, f.y, f.width, f.height, f.probability] for f in findings]
        write_atomic(
            group / f"{path.stem}.json",  # last: a group's .json files are its complete results
            json.dumps(
                {"series": series, "version": version, "received": received, "findings": kept}
            ).encode(),
        )

    def _flush_results(self) -> bool:
        """One SR per series whose images are all classified and which has been quiet for
        ``series_quiet_s`` (no image of it waiting, none classified that recently). An image
        of the series arriving later gets an SR of its own in the same SR series."""
        groups = [g for g in self.results.iterdir() if g.is_dir()]
        if not groups:
            return False
        waiting = set()
        for sidecar in self.inbox.glob("*.json"):
            try:
                waiting.add(_key(json.loads(sidecar.read_text()).get("series") or sidecar.stem))
            except (OSError, ValueError):
                continue
        done = False
        now = time.time()
        for group in groups:
            items = sorted(group.glob("*.json"))
            if not items:
                continue
            kept = [json.loads(p.read_text()) for p in items]
            newest = max(p.stat().st_mtime for p in items)
            if kept[0]["series"] in waiting or now - newest < self.settings.series_quiet_s:
                continue
            try:
                images = [
                    (
                        dcmread(p.with_suffix(".dcm")),
                        [Finding(int(f[0]), *f[1:]) for f in k["findings"]],
                    )
                    for p, k in zip(items, kept, strict=True)
                ]
                sr = build_series_sr(images, kept[0]["version"], self.device_uid)
                self._to_outbox(sr, min(k["received"] for k in kept), group.name)
            except Exception as exc:  # noqa: BLE001 (one series' SR never stops the others)
                log.warning("a series' SR could not be built (%s); set aside", type(exc).__name__)
                group.replace(self.failed / f"results-{group.name}")
                write_atomic(self.failed / f"results-{group.name}.reason", b"sr")
                self.stats.set_aside["sr"] = self.stats.set_aside.get("sr", 0) + 1
                self.metrics.set_aside.labels("sr").inc()
                continue
            shutil.rmtree(group)
            log.info("an SR for %d image(s) of one series", len(images))
            done = True
        if done:
            self._notify()
        return done

    def _classify_series(self, series: str, frame_of_reference: str) -> bool:
        """A CT series whose upstream SR named 3D points (PE candidates): classified as one
        volume once no instance of it has arrived for ``series_quiet_s``; one SR for the
        series, its points with their probabilities. False while the series may still grow."""
        files = []
        for sidecar in self.inbox.glob("*.json"):
            meta = json.loads(sidecar.read_text())
            if meta.get("series") == series and sidecar.with_suffix(".dcm").exists():
                files.append(sidecar.with_suffix(".dcm"))
        if not files:
            return False
        newest = max(f.stat().st_mtime for f in files)
        if time.time() - newest < self.settings.series_quiet_s:
            return False
        with self._regions_lock:
            kept = json.loads(self._points_path(frame_of_reference).read_text())
        points = [Point3D(frame_of_reference, *p) for p in kept]
        blobs = [f.read_bytes() for f in files]
        header = cad_pb2.VolumeHeader(
            source_id=f"series:{_key(series)}",
            candidates=[
                cad_pb2.VolumeCandidate(
                    client_id=f"point-{i + 1}",
                    patient_mm=cad_pb2.Point3D(x=p.x, y=p.y, z=p.z),
                )
                for i, p in enumerate(points)
            ],
        )
        chunks = [cad_pb2.VolumeChunk(header=header)]
        chunks += [cad_pb2.VolumeChunk(instances=[b]) for b in blobs]  # one instance a message
        try:
            reply = self.stub.ClassifyVolume(
                iter(chunks),
                timeout=self.settings.rpc_timeout_s,
                metadata=[("authorization", f"Bearer {self.token}")] if self.token else None,
            )
        except grpc.RpcError as exc:
            if not refused_for_good(exc.code(), exc.details() or ""):
                raise  # the server is away, or a failure of its own: retried
            log.warning("a CT series was refused by the CAD server: %s", exc.details())
            for f in files:
                self._set_aside(f, exc.code().name.lower())
            return True
        datasets = [dcmread(io.BytesIO(b)) for b in blobs]
        findings = [Finding3D(p, r.probability) for p, r in zip(points, reply.results, strict=True)]
        sr = build_volume_sr(datasets, findings, reply.model_version, self.device_uid)
        received = min(f.stat().st_mtime for f in files)
        self._to_outbox(sr, received, _key(series))
        for f in files:
            f.unlink()
            f.with_suffix(".json").unlink(missing_ok=True)
        self.stats.classified += 1
        log.info(
            "classified a CT series: %d point(s) in %d instance(s), model v%s",
            len(points),
            len(files),
            reply.model_version,
        )
        self._notify()
        return True

    # ------------------------------------------------------------------ sending

    def _send_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            pending = sorted(self.outbox.glob("*.dcm"))
            if not pending or (self.destination is None and not self.stow_url):
                self._wait(5.0)
                continue
            try:
                sent = self._send(pending[0])
            except Exception as exc:  # noqa: BLE001 (a network or peer fault: kept, retried)
                log.warning("an SR could not be sent (%s); retrying", type(exc).__name__)
                sent = False
            if sent:
                backoff = 0.5
                continue
            self.stats.send_failures += 1
            self.metrics.send_failures.inc()
            self._wait(backoff)
            # capped low: an attempt at an absent destination costs a refused connection, and
            # the first SR should go soon after it is back (not a minute later)
            backoff = min(backoff * 2, self.settings.send_retry_max_s)

    def _send(self, path: Path) -> bool:
        """C-STORE (or STOW-RS) one SR to the destination; True once it took it (the file is
        then gone)."""
        if self.stow_url:
            if not self._stow(path.read_bytes()):
                return False
            return self._sent(path)
        assert self.destination is not None
        ae_title, host, port = self.destination
        ds = dcmread(path)
        assoc = self.sender_ae.associate(host, port, ae_title=ae_title)
        if not assoc.is_established:
            log.warning(
                "the destination %s at %s:%d does not answer; retrying", ae_title, host, port
            )
            return False
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        if code != SUCCESS:
            log.warning("the destination %s refused an SR (status %s); retrying", ae_title, code)
            return False
        return self._sent(path)

    def _stow(self, data: bytes) -> bool:
        """POST one instance to the STOW-RS URL (multipart/related, application/dicom)."""
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            self.stow_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.rpc_timeout_s) as response:
                ok = 200 <= response.status < 300
        except OSError as exc:  # refused, unreachable, or an HTTP error status
            log.warning("the DICOMweb destination did not take an SR (%s); retrying", exc)
            return False
        return ok

    def _sent(self, path: Path) -> bool:
        received_us = int(path.name.split("-", 1)[0])
        self.stats.receipt_to_sent_s.append(time.time() - received_us / 1e6)
        self.metrics.receipt_to_sr.observe(self.stats.receipt_to_sent_s[-1])
        path.unlink()
        self.stats.sent += 1
        self.metrics.sent.inc()
        return True


def _device_uid(root: Path) -> str:
    """The gateway's device observer UID: made once, kept beside its folders."""
    from pydicom.uid import generate_uid

    path = root / "device-uid"
    if not path.exists():
        write_atomic(path, generate_uid().encode())
    return path.read_text().strip()


def main(argv: list[str] | None = None) -> int:
    """``cad dicom-gateway``: receive images by C-STORE, send CAD results back as SRs."""
    parser = argparse.ArgumentParser(prog="cad dicom-gateway", description=main.__doc__)
    parser.add_argument("--ae-title", help="the gateway's AE title (CAD_GATEWAY_AE_TITLE)")
    parser.add_argument("--port", type=int, help="DICOM port (CAD_GATEWAY_PORT)")
    parser.add_argument("--server", help="CAD server host:port (CAD_GATEWAY_SERVER)")
    parser.add_argument("--destination", help="AE@host:port for SRs (CAD_GATEWAY_DESTINATION)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    settings = from_flags(GatewaySettings, args, ("ae_title", "port", "server", "destination"))
    gateway = Gateway(settings).start()
    print(f"DICOM gateway {settings.ae_title} on {settings.host}:{gateway.port}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
    return 0
