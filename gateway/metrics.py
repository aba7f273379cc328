"""The gateway's Prometheus metrics and the counts its tests and an operator read."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
