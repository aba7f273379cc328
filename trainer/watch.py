"""``cad train watch``: run a round whenever enough new labels have arrived; Prometheus metrics."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cad.errors import LeaseHeld
from cad.labels.store import open_store
from cad.labels.store.leases import Lease, holder_name
from cad.models.registry import ModelRegistry
from trainer.data import ids_hash_of, labeled_examples
from trainer.round import ROUNDS_FILE, TRAINER_LEASE, RoundReport, run_round
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rounds = Counter(
            "cad_trainer_rounds", "Training rounds by outcome.", ["outcome"], registry=registry
        )
        self.last_auc = Gauge(
            "cad_trainer_last_val_auc",
            "Validation AUC of the last round's model.",
            registry=registry,
        )
        self.duration = Histogram(
            "cad_trainer_round_duration_seconds",
            "Duration of a training round.",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600, 7200),
            registry=registry,
        )
        self.labels_used = Gauge(
            "cad_trainer_labels_used", "Labels the last round trained on.", registry=registry
        )
        self.rescored = Gauge(
            "cad_trainer_rescored_candidates",
            "Unlabeled candidates the last round re-scored (what the version had not scored yet).",
            registry=registry,
        )
        self.audit_labels = Gauge(
            "cad_trainer_audit_slice_labels",
            "Audit-slice labels the last round measured on (never trained on).",
            registry=registry,
        )
        self.pending = Gauge(
            "cad_trainer_new_labels",
            "Labels not yet used by the serving version.",
            registry=registry,
        )

    def observe(self, report: RoundReport) -> None:
        self.rounds.labels(report.outcome).inc()
        self.duration.observe(report.duration_s)
        self.labels_used.set(report.labels)
        self.audit_labels.set(report.audit)
        if "pool_rescored" in report.metrics:
            self.rescored.set(report.metrics["pool_rescored"])
        if report.metrics.get("val_auc") is not None:
            self.last_auc.set(report.metrics["val_auc"])


@dataclass
class Watcher:
    """Runs a round whenever at least ``min_new_labels`` labels are new.

    New means not seen by the last round this watcher attempted, whatever its outcome: after a
    rejected (or skipped) round the same labels never start another one; the watcher waits for
    reviewers to add more. A restarted watcher takes the last round recorded in the registry's
    ``rounds.jsonl`` as attempted when its label set is the store's current one; otherwise it
    counts against the labels the serving version was trained on.
    """

    settings: TrainerSettings
    metrics: TrainerMetrics
    attempted: frozenset[str] | None = None
    """Candidate ids of the labels the last attempted round saw."""
    lease: Lease | None = None
    """The trainer lease while :meth:`run` holds it (a bare :meth:`step` takes its own)."""

    def _labeled_ids(self) -> frozenset[str]:
        store = open_store(self.settings.store_url)
        try:
            return frozenset(e.candidate_id for e in labeled_examples(store))
        finally:
            store.close()

    def new_labels(self, ids: frozenset[str] | None = None) -> int:
        ids = self._labeled_ids() if ids is None else ids
        registry = ModelRegistry(self.settings.registry_root, self.settings.model_name)
        store = open_store(self.settings.store_url)
        try:
            target = registry.with_pins_in(store).target()  # the pin is in the store
        finally:
            store.close()
        if self.attempted is None and _last_round_hash(registry) == ids_hash_of(ids):
            self.attempted = ids  # a restart after a round that saw exactly these labels
        if self.attempted is not None:
            return len(ids - self.attempted)
        used = 0
        if target is not None:
            used = registry.get(target).manifest.labels.count
        return len(ids) - used

    def step(self) -> RoundReport | None:
        """Check once; run a round if enough new labels. Returns its report, if any."""
        ids = self._labeled_ids()
        pending = self.new_labels(ids)
        self.metrics.pending.set(pending)
        if pending < self.settings.min_new_labels:
            return None
        log.info(
            "%d new labels (threshold %d): starting a round", pending, self.settings.min_new_labels
        )
        # one that raises (store down, disk full) is retried at the next poll
        report = run_round(self.settings, lease=self.lease)
        self.attempted = ids
        self.metrics.observe(report)
        self.metrics.pending.set(self.new_labels())
        print(report.summary(), flush=True)
        return report

    def run(self, stop: threading.Event, max_rounds: int | None = None) -> int:
        """Watch until ``stop``, holding the store's trainer lease all along.

        Raises:
            LeaseHeld: another trainer holds the lease (at start, or took it while the database
                was away).
        """
        store = open_store(self.settings.store_url)
        try:
            with store.lease(TRAINER_LEASE, holder_name("cad train watch")) as lease:
                self.lease = lease
                return self._loop(stop, max_rounds)
        finally:
            self.lease = None
            store.close()

    def _loop(self, stop: threading.Event, max_rounds: int | None) -> int:
        rounds = 0
        while not stop.is_set():
            try:
                if self.step() is not None:
                    rounds += 1
            except LeaseHeld:
                raise
            except Exception:
                log.exception("training round failed; retrying after the poll interval")
            if max_rounds is not None and rounds >= max_rounds:
                break
            stop.wait(self.settings.watch_poll_s)
        return rounds


def _last_round_hash(registry: ModelRegistry) -> str | None:
    path = registry.model_dir / ROUNDS_FILE
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    for line in reversed(lines):
        try:
            return str(json.loads(line).get("labels_sha256") or "") or None
        except ValueError:  # a torn last line after a crash: the one before it
            continue
    return None


def watch(
    settings: TrainerSettings, stop: threading.Event | None = None, max_rounds: int | None = None
) -> int:
    metrics = TrainerMetrics(CollectorRegistry())
    server = None
    if settings.watch_metrics_port >= 0:
        server, _ = start_http_server(settings.watch_metrics_port, registry=metrics.registry)
        log.info("trainer metrics on :%d", server.server_address[1])
    try:
        return Watcher(settings, metrics).run(stop or threading.Event(), max_rounds)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
