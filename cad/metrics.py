"""Prometheus metrics of the server, on a registry passed in (no global state)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cad.errors import StoreUnavailable
from cad.measures import auc_ci, roc_auc

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


class ServiceMetrics:
    """Every metric the inference server exports."""

    # long: declarative, one definition per metric with its help text, read as a catalogue
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "cad_grpc_requests",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "cad_grpc_request_duration_seconds",
            "Time from receiving a gRPC call to its last response, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_latency = Histogram(
            "cad_model_inference_duration_seconds",
            "Compute time: one ONNX Runtime run over a batch of patches.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "cad_model_batch_patches",
            "Patches per ONNX Runtime run.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_queue_latency = Histogram(
            "cad_batch_queue_duration_seconds",
            "Queue time: from a request's patches entering the batcher to their first model run.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_queue_requests = Gauge(
            "cad_batch_queue_requests",
            "Requests waiting in the dynamic batcher.",
            registry=registry,
        )
        self.batch_refused = Counter(
            "cad_batch_refused",
            "Requests the batcher answered without running the model: queue_full or deadline.",
            ["reason"],
            registry=registry,
        )
        self.candidates = Counter("cad_candidates", "Candidates classified.", registry=registry)
        self.cancelled = Counter(
            "cad_requests_cancelled",
            "Classifications their client cancelled; the work stopped at its next check.",
            registry=registry,
        )
        self.patches = Counter("cad_patches", "Patches classified.", registry=registry)
        self.model = Info(
            "cad_model",
            "The model version being served and its execution provider.",
            registry=registry,
        )
        self.model_loaded = Gauge(
            "cad_model_loaded", "1 while a model is loaded and serving, else 0.", registry=registry
        )
        self.model_version = Gauge(
            "cad_model_version",
            "The model version this replica serves (0: none yet). Replicas that disagree for "
            "longer than a few registry polls raise CadReplicasServeDifferentVersions.",
            registry=registry,
        )
        self.model_followed = Gauge(
            "cad_model_followed_version",
            "The version this replica should serve: the pinned one, else the newest it accepted.",
            registry=registry,
        )
        self.model_load_failures = Counter(
            "cad_model_load_failures",
            "Model versions refused at load (checksum, signature, warm-up).",
            registry=registry,
        )
        self.stream_frames_in_flight = Gauge(
            "cad_stream_frames_in_flight",
            "ClassifyStream frames read and not yet sent, over all streams.",
            registry=registry,
        )

        self.corrections = Counter(
            "cad_corrections",
            "Reviewer corrections recorded, by verdict (true_positive confirms, false_positive dismisses).",
            ["verdict"],
            registry=registry,
        )
        self.missed_findings = Counter(
            "cad_missed_findings", "False negatives added by reviewers.", registry=registry
        )
        self.label_conflicts = Counter(
            "cad_label_conflicts",
            "Corrections that disagree with an earlier reviewer's label of the same candidate.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "cad_annotation_queue_depth",
            "Classified candidates without a label.",
            registry=registry,
        )

        self.store_up = Gauge(
            "cad_store_up",
            "1 while this replica reaches the label store, else 0 (classifications are spooled).",
            registry=registry,
        )
        self.spool_records = Gauge(
            "cad_spool_records",
            "Classification records waiting in this replica's local spool for the label store.",
            registry=registry,
        )
        self.spool_oldest_age = Gauge(
            "cad_spool_oldest_age_seconds",
            "How long the oldest spooled record has waited (0 when the spool is empty).",
            registry=registry,
        )
        self.spool_written = Counter(
            "cad_spool_written",
            "Spooled classification records written to the label store once it was back.",
            registry=registry,
        )
        self.queue_top_oldest = Gauge(
            "cad_queue_top_oldest_scored_version",
            "The oldest model version that scored any of the default queue's top 20 items (below "
            "the served version: the re-scoring after a publish has not reached the queue's top).",
            registry=registry,
        )
        self.spool_dropped = Counter(
            "cad_spool_dropped",
            "Classification records dropped because the spool was full (answered, not recorded).",
            registry=registry,
        )

    def bind_store(
        self,
        count_unlabeled: Callable[[], int],
        precision_by_version: Callable[[], dict[str, tuple[int, int]]],
        reachable: Callable[[], bool] = lambda: True,
        audit_slice: Callable[[], dict[str, tuple[list[int], list[float]]]] | None = None,
        top_versions: Callable[[], list[str]] | None = None,
    ) -> None:
        """Metrics read from the label store at scrape time (shared by all replicas). While the
        store is unreachable they are left out (NaN, no series), never a failed scrape."""

        def depth() -> float:
            if not reachable():
                return math.nan
            try:
                return float(count_unlabeled())
            except StoreUnavailable:
                return math.nan

        def precision() -> dict[str, tuple[int, int]]:
            if not reachable():
                return {}
            try:
                return precision_by_version()
            except StoreUnavailable:
                return {}

        self.queue_depth.set_function(depth)
        if top_versions is not None:

            def oldest() -> float:
                if not reachable():
                    return math.nan
                try:
                    versions = [int(v) for v in top_versions() if v.isdigit()]
                except StoreUnavailable:
                    return math.nan
                return float(min(versions)) if versions else math.nan

            self.queue_top_oldest.set_function(oldest)
        self.registry.register(_PrecisionCollector(precision))
        if audit_slice is not None:

            def scores() -> dict[str, tuple[list[int], list[float]]]:
                if not reachable():
                    return {}
                try:
                    return audit_slice()
                except StoreUnavailable:
                    return {}

            self.registry.register(_AuditSliceCollector(scores))

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_latency.observe(seconds)


class _PrecisionCollector(Collector):
    """Live precision of each served model version as reviewers see it."""

    def __init__(self, source: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        precision = GaugeMetricFamily(
            "cad_model_live_precision",
            "Confirmed / (confirmed + dismissed) among reviewed candidates, by model version.",
            labels=["version"],
        )
        reviewed = GaugeMetricFamily(
            "cad_model_reviewed_candidates",
            "Reviewed candidates by model version and current label.",
            labels=["version", "label"],
        )
        for version, (confirmed, dismissed) in sorted(self.source().items()):
            if confirmed + dismissed:
                precision.add_metric([version], confirmed / (confirmed + dismissed))
            reviewed.add_metric([version, "confirmed"], confirmed)
            reviewed.add_metric([version, "dismissed"], dismissed)
        yield precision
        yield reviewed


class _AuditSliceCollector(Collector):
    """Each model version's AUC on the audit slice's labels (the uniform random sample no ranking
    chose and no round trained on), with its bootstrap 95% interval: the unbiased yardstick."""

    def __init__(self, source: Callable[[], dict[str, tuple[list[int], list[float]]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        auc = GaugeMetricFamily(
            "cad_audit_slice_auc",
            "ROC AUC of each model version on the audit slice's labels (the probabilities it gave "
            "them), with the bootstrap 95% interval's bounds: bound=estimate|low|high.",
            labels=["version", "bound"],
        )
        labels = GaugeMetricFamily(
            "cad_audit_slice_labels",
            "Labelled audit-slice candidates by the version that scored them and by label.",
            labels=["version", "label"],
        )
        for version, (y, p) in sorted(self.source().items()):
            positives = sum(y)
            labels.add_metric([version, "finding"], positives)
            labels.add_metric([version, "not_finding"], len(y) - positives)
            if 0 < positives < len(y):
                low, high = auc_ci(y, p, n_boot=400)
                auc.add_metric([version, "estimate"], roc_auc(y, p))
                auc.add_metric([version, "low"], low)
                auc.add_metric([version, "high"], high)
        yield auc
        yield labels
