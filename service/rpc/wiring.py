"""The parts one server process is built from, composed from its settings: the metrics, the
access policy, the model manager, the label store with its archive and spool, the recorder, the
review service, the batcher and the classifiers. :class:`service.rpc.server.CadServer` adds the
transport (gRPC, health, the metrics endpoint) and its background tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from cad.aift import DEFAULT_VARIANT, VARIANTS
from cad.imaging import ImageLimits
from cad.labels.archive import ImageArchive
from cad.labels.recorder import Recorder, UidHasher
from cad.labels.review import ReviewService
from cad.labels.spool import RecordSpool
from cad.labels.store import SqlLabelStore, open_store
from cad.metrics import ServiceMetrics
from cad.models.batcher import BatchingConfig, DynamicBatcher
from cad.models.inference import Classifier
from cad.models.lifecycle import AuditListener, CallbackListener, MemoryTrimListener
from cad.models.manager import ModelManager
from cad.models.providers import SessionOptions, select_providers
from cad.models.registry import ModelRegistry
from cad.models.volume_inference import VolumeClassifier
from cad.volumes import VolumeLimits
from service.rpc.auth import AccessPolicy, ReloadingTokenTable
from service.settings import ServerSettings


@dataclass
class ServerParts:
    """What a server serves with; each part built once, from the settings."""

    metrics: ServiceMetrics
    policy: AccessPolicy
    models: ModelManager
    store: SqlLabelStore
    archive: ImageArchive
    spool: RecordSpool
    recorder: Recorder
    review: ReviewService
    batcher: DynamicBatcher
    classifier: Classifier
    volumes: VolumeClassifier


def compose(
    settings: ServerSettings,
    registry: CollectorRegistry | None = None,
    on_model_change: Callable[[], None] = lambda: None,
) -> ServerParts:
    """The parts of a server with these settings (the store may be down: it is opened anyway
    and reached when it is back). ``on_model_change`` runs whenever the served model changes."""
    metrics = ServiceMetrics(registry or CollectorRegistry())
    policy = AccessPolicy(
        ReloadingTokenTable(settings.auth_tokens_file) if settings.auth_tokens_file else None,
        open_health=settings.auth_open_health,
        open_reflection=settings.auth_open_reflection,
    )
    models = ModelManager(
        ModelRegistry(settings.registry_root, settings.model_name),
        session_options(settings),
        metrics,
        precision=settings.precision,
        max_auc_drop={"int8": settings.int8_max_auc_drop, "fp16": settings.fp16_max_auc_drop},
    )
    store = open_server_store(settings)
    metrics.store_up.set(1 if store.available else 0)
    for listener in (  # after the metrics listener the manager made; the store exists now
        AuditListener(store.fleet.add_audit),
        MemoryTrimListener(),
        CallbackListener(lambda _model: on_model_change()),
    ):
        models.add_listener(listener)
    archive = ImageArchive(
        settings.archive_root, settings.record_sync, settings.record_sync_interval_ms / 1000
    )
    metrics.bind_store(
        store.queue.count_unlabeled,
        store.queue.precision_by_version,
        lambda: store.available,
        store.queue.audit_slice_scores,
        lambda: store.queue.top_scored_versions(VARIANTS[DEFAULT_VARIANT]),
    )
    root = settings.archive_root
    spool = RecordSpool(
        settings.spool_dir or root.with_name(f"{root.name}-spool"),
        settings.spool_max_records,
        metrics,
    )
    recorder = Recorder(store, archive, uid_hasher(settings), spool)
    # the pin lives in the store (registries are mounted read-only on servers)
    models.registry.with_pins_in(store, spool.folder / "last-pin.json")
    review = review_service(settings, store, metrics, archive)
    if settings.queue_fresh_first:
        review.fresh_version = lambda: str(models.current.version) if models.current else None
    batcher = DynamicBatcher(batching_config(settings), metrics)
    classifier = Classifier(
        models,
        metrics,
        ImageLimits(settings.max_image_pixels, settings.max_frames),
        settings.max_candidates,
        batcher,
        recorder,
    )
    volumes = VolumeClassifier(
        classifier,
        VolumeLimits(
            settings.max_volume_voxels, settings.max_series_instances, settings.max_series_bytes
        ),
        recorder,
    )
    return ServerParts(
        metrics, policy, models, store, archive, spool, recorder, review, batcher, classifier,
        volumes,
    )  # fmt: skip


def session_options(settings: ServerSettings) -> SessionOptions:
    """How the server's ONNX Runtime sessions are made, from its settings."""
    return SessionOptions(
        tuple(select_providers(settings.providers)),
        settings.intra_op_threads,
        graph_optimization=settings.graph_optimization,
        optimized_cache=settings.optimized_model_cache,
        io_binding=settings.io_binding,
        spinning=settings.intra_op_spinning,
        batch_buckets=settings.batch_buckets,
        max_batch=settings.batch_max_size,
        cpu_mem_arena=settings.cpu_mem_arena,
        patch_sampling=settings.patch_sampling,
    )


def batching_config(settings: ServerSettings) -> BatchingConfig:
    """The dynamic batcher's configuration, from the server's settings."""
    return BatchingConfig(
        preferred_batch=min(settings.batch_size, settings.batch_max_size),
        max_batch=settings.batch_max_size,
        max_queue_delay_s=settings.batch_max_queue_delay_ms / 1000,
        max_queue_requests=settings.batch_max_queue_requests,
        runners=settings.batch_runners,
    )


def open_server_store(settings: ServerSettings) -> SqlLabelStore:
    """The label store as this server's settings say (it may be down at start)."""
    store = open_store(
        settings.store_url, settings.store_pool_size, settings.store_timeout_s, require=False
    )
    store.audit_fraction = settings.audit_fraction
    return store


def review_service(
    settings: ServerSettings, store: SqlLabelStore, metrics: ServiceMetrics, archive: ImageArchive
) -> ReviewService:
    """The review domain as this server's settings say (claims, the per-source cap)."""
    review = ReviewService(store, metrics, settings.max_note_chars, archive, settings.queue_claim_s)
    review.per_source = settings.queue_max_per_source
    review.whole_frames = settings.queue_whole_frames
    return review


def uid_hasher(s: ServerSettings) -> UidHasher | None:
    if not s.hash_uids:
        return None
    if s.uid_hash_key_file is None:
        raise ValueError(
            "CAD_HASH_UIDS needs CAD_UID_HASH_KEY_FILE (a secret shared by all replicas)"
        )
    return UidHasher(s.uid_hash_key_file.read_bytes().strip())
