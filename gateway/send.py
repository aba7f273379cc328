"""Delivering the outbox: each SR by C-STORE to the destination PACS (or STOW-RS to a DICOMweb
service), oldest first, retried with a capped back-off until the destination takes it."""

from __future__ import annotations

import logging
import time
import urllib.request
import uuid
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from gateway.metrics import GatewayMetrics, GatewayStats
from gateway.policy import COMPREHENSIVE_3D_SR, SUCCESS, parse_destination
from gateway.settings import GatewaySettings
from gateway.spool import Spool

log = logging.getLogger(__name__)


class Sender:
    """The sending thread's work: :meth:`loop` until the spool's stop flag is set."""

    def __init__(
        self, settings: GatewaySettings, spool: Spool, stats: GatewayStats, metrics: GatewayMetrics
    ) -> None:
        self.settings, self.spool, self.stats, self.metrics = settings, spool, stats, metrics
        self.destination = parse_destination(settings.destination)
        self.stow_url = (
            settings.destination.rstrip("/") + "/studies"
            if settings.destination.startswith(("http://", "https://"))
            else ""
        )
        """STOW-RS: SRs are POSTed here (a DICOMweb service root + /studies) instead of C-STORE."""
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.add_requested_context(COMPREHENSIVE_3D_SR)

    def loop(self) -> None:
        backoff = 0.5
        while not self.spool.stop.is_set():
            pending = sorted(self.spool.outbox.glob("*.dcm"))
            if not pending or (self.destination is None and not self.stow_url):
                self.spool.wait(5.0)
                continue
            try:
                sent = self.send(pending[0])
            except Exception as exc:  # noqa: BLE001 (a network or peer fault: kept, retried)
                log.warning("an SR could not be sent (%s); retrying", type(exc).__name__)
                sent = False
            if sent:
                backoff = 0.5
                continue
            self.stats.send_failures += 1
            self.metrics.send_failures.inc()
            self.spool.wait(backoff)
            # capped low: an attempt at an absent destination costs a refused connection, and
            # the first SR should go soon after it is back (not a minute later)
            backoff = min(backoff * 2, self.settings.send_retry_max_s)

    def send(self, path: Path) -> bool:
        """C-STORE (or STOW-RS) one SR to the destination; True once it took it (the file is
        then gone)."""
        if self.stow_url:
            if not self._stow(path.read_bytes()):
                return False
            return self._sent(path)
        assert self.destination is not None  # noqa: S101  an invariant, not input checking
        ae_title, host, port = self.destination
        ds = dcmread(path)
        assoc = self.ae.associate(host, port, ae_title=ae_title)
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
        request = urllib.request.Request(  # noqa: S310  an http(s) destination here
            self.stow_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.rpc_timeout_s) as response:  # noqa: S310  an http(s) destination here
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
