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
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from cad.durable import copy_atomic, write_atomic
from cad.logs import configure_logging
from cad.settings import from_flags
from gateway.catchup import OrthancCatchUp
from gateway.classify import Classifier
from gateway.metrics import GatewayMetrics, GatewayStats
from gateway.policy import (
    CLASSIFIABLE,
    OUT_OF_RESOURCES,
    SR_CLASSES,
    SR_MODALITY,
    SUCCESS,
    TRANSFER_SYNTAXES,
    file_key,
)
from gateway.send import Sender
from gateway.settings import GatewaySettings
from gateway.spool import Spool
from gateway.sr import points_of, regions_of
from service.api.cad.v1 import cad_pb2_grpc
from service.rpc.channel import client_channel

log = logging.getLogger(__name__)
# highdicom logs the source instance's UID at INFO while it builds an SR: never logged
logging.getLogger("highdicom").setLevel(logging.WARNING)


class Gateway:
    """The SCP that receives, with the classifying worker (:class:`gateway.classify.Classifier`)
    and the sender (:class:`gateway.send.Sender`) in threads of their own, sharing the folders of
    one :class:`gateway.spool.Spool`."""

    def __init__(self, settings: GatewaySettings, channel: grpc.Channel | None = None) -> None:
        self.settings = settings
        self.channel = channel or client_channel(
            settings.server, settings.tls_ca, settings.tls_server_name
        )
        self.stub = cad_pb2_grpc.CadInferenceStub(self.channel)
        self.spool = Spool(settings.spool_dir)
        spool = self.spool
        self.inbox, self.outbox, self.seen = spool.inbox, spool.outbox, spool.seen
        self.failed, self.regions, self.results = spool.failed, spool.regions, spool.results
        self.stats = GatewayStats()
        self.metrics = GatewayMetrics(CollectorRegistry(), self.inbox, self.outbox)
        self.metrics_port = 0
        self.device_uid = _device_uid(settings.spool_dir)
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
        self.classifier = Classifier(
            settings, spool, self.stats, self.metrics, self.stub, self.device_uid, self.mode_of
        )
        self.sender = Sender(settings, spool, self.stats, self.metrics)
        self.destination = self.sender.destination
        self.catch_up = (
            OrthancCatchUp(
                settings.catch_up,
                settings.spool_dir,
                self.has_seen,
                self.accept,
                settings.catch_up_caller or (self.calling_aes or ["ORTHANC"])[0],
                settings.catch_up_delay_s,
                settings.catch_up_credentials_file,
            )
            if settings.catch_up
            else None
        )
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
        loops = [("classify", self.classifier.loop), ("send", self.sender.loop)]
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
        if self.spool.stop.is_set():
            return
        self.spool.stop.set()
        self.spool.notify()
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
        return (self.spool.seen / file_key(uid)).exists()

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
            marker = self.spool.seen / file_key(uid)
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
                    self.spool.inbox / f"{file_key(uid)}.json",
                    json.dumps(
                        {
                            "caller": caller,
                            "modality": str(getattr(ds, "Modality", "") or ""),
                            "series": str(getattr(ds, "SeriesInstanceUID", "") or ""),
                            "for": str(getattr(ds, "FrameOfReferenceUID", "") or ""),
                            "uid": file_key(uid),
                        }
                    ).encode(),
                )
                copy_atomic(received, self.spool.inbox / f"{file_key(uid)}.dcm")
                write_atomic(marker, f"{time.time()}\n".encode())
            except OSError as exc:
                log.error("an image could not be queued (%s); the sender is told to retry", exc)
                return OUT_OF_RESOURCES
        self.stats.received += 1
        self.metrics.received.inc()
        self.spool.notify()
        return SUCCESS

    def _on_report(self, header: Dataset, caller: str, marker: Path) -> int:
        """An SR: an upstream CAD's regions kept (callers in sr mode), else ignored."""
        if self.mode_of(caller) != "sr":
            self.stats.reports_ignored += 1
            self.metrics.reports_ignored.inc()
            return SUCCESS
        try:
            self.spool.keep_regions(regions_of(header))
            self.spool.keep_points(points_of(header))
            write_atomic(marker, f"{time.time()}\n".encode())
        except OSError as exc:
            log.error("an SR's regions could not be kept (%s); the sender is told to retry", exc)
            return OUT_OF_RESOURCES
        self.stats.upstream_reports += 1
        self.spool.notify()
        return SUCCESS

    def _catch_up_loop(self) -> None:
        """Every ``catch_up_interval_s``: what the PACS stored and did not push (see
        :mod:`gateway.catchup`)."""
        assert self.catch_up is not None  # noqa: S101  an invariant, not input checking
        while not self.spool.stop.is_set():
            try:
                self.catch_up.poll()
            except OSError as exc:  # the PACS away, or an instance not queued: next time
                log.warning("catching up with the PACS failed (%s); retrying", exc)
            self.spool.stop.wait(self.settings.catch_up_interval_s)

    def mode_of(self, caller: str) -> str:
        """Where the candidates of ``caller``'s images come from: ``frame`` or ``sr``."""
        return self._callers.get(caller, self.settings.mode)


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
