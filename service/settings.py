"""The inference server's settings, composed of the shared groups in :mod:`cad.settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cad.settings import RegistrySettings, StoreSettings


class ServerSettings(RegistrySettings, StoreSettings):
    """Settings of the inference server. Every field reads ``CAD_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="CAD_", extra="ignore")

    host: str = Field("0.0.0.0", description="gRPC bind address.")  # noqa: S104  in a container; CAD_HOST narrows it
    port: int = Field(50051, description="gRPC port; 0 picks a free one.")
    metrics_host: str = Field("0.0.0.0", description="Prometheus HTTP bind address.")  # noqa: S104  in a container; CAD_HOST narrows it
    metrics_port: int = Field(
        9464, description="Prometheus /metrics port; 0 picks a free one, -1 disables."
    )
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime providers: auto, cpu or cuda."
    )
    intra_op_threads: int = Field(
        0, description="ONNX Runtime intra-op threads; 0 = runtime default."
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Preferred batch: the batcher runs the model once this many patches wait.",
    )
    batch_max_size: int = Field(64, ge=1, description="Most patches in one model run.")
    batch_max_queue_delay_ms: float = Field(
        2.0, ge=0, description="Longest a waiting request is held back to fill a batch."
    )
    batch_max_queue_requests: int = Field(
        256,
        ge=1,
        description="Requests allowed to wait for the model; more get RESOURCE_EXHAUSTED.",
    )
    batch_runners: int = Field(
        1, ge=1, description="Threads running the model (1 on CPU; 2 can help on GPU)."
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation: disable, basic, extended or all."
    )
    optimized_model_cache: Path | None = Field(
        None, description="Folder caching optimised graphs per model checksum (None: no cache)."
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto", description="ONNX Runtime I/O binding: auto (on for CUDA), on or off."
    )
    batch_buckets: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Pad model batches to powers of two up to the max batch, each shape run once at "
        "load: auto (on for CUDA, where a new shape's first run costs a cuDNN search), on or off.",
    )
    patch_sampling: Literal["auto", "host", "graph"] = Field(
        "auto",
        description="Where patches are cut: host (numpy on the CPU, then copied to the model), "
        "graph (the image and one affine map per patch go to an ONNX sampling graph in front of "
        "the model, on its device) or auto (graph on CUDA, host otherwise).",
    )
    cpu_mem_arena: bool = Field(
        True,
        description="ONNX Runtime's CPU memory arena: keeps the largest batch's buffers for reuse "
        "(RSS stays at that high-water mark); false allocates and frees per run.",
    )
    precision: Literal["fp32", "int8", "fp16"] = Field(
        "fp32",
        description="fp32, or int8 or fp16: serve a version's variant of that precision where its "
        "AUC drop is allowed (`cad model quantize --precision`); fp16 pays off on CUDA only.",
    )
    int8_max_auc_drop: float = Field(
        0.005,
        ge=0,
        description="Largest validation AUC drop of an int8 variant that may be served.",
    )
    fp16_max_auc_drop: float = Field(
        0.005,
        ge=0,
        description="Largest validation AUC drop of an fp16 variant that may be served.",
    )
    intra_op_spinning: bool = Field(
        False,
        description="Let ONNX Runtime worker threads spin between runs. Off by default: on a small "
        "CPU machine the spinning threads starve decoding and patch extraction (video latency tail).",
    )
    workers: int = Field(4, ge=1, description="Threads decoding images and running the model.")
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest gRPC message accepted (RESOURCE_EXHAUSTED over it).",
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest decoded frame, height x width (RESOURCE_EXHAUSTED over it).",
    )
    max_frames: int = Field(
        10_000, ge=1, description="Most frames a multi-frame DICOM may declare."
    )
    max_candidates: int = Field(
        256, ge=1, description="Most candidates in one request (RESOURCE_EXHAUSTED over it)."
    )
    max_volume_voxels: int = Field(
        160_000_000,
        ge=1,
        description="Largest CT volume of a ClassifyVolume request, slices x rows x columns "
        "(RESOURCE_EXHAUSTED over it; 160 M is about 600 slices of 512 x 512).",
    )
    max_series_instances: int = Field(
        2_000, ge=1, description="Most DICOM instances in one ClassifyVolume series."
    )
    max_series_bytes: int = Field(
        1_500_000_000,
        ge=1,
        description="Most bytes of DICOM one ClassifyVolume upload may stream in (refused as "
        "soon as the upload passes it, before the series is assembled).",
    )
    max_series_bytes_in_flight: int = Field(
        3_000_000_000,
        ge=1,
        description="Most bytes all ClassifyVolume uploads together may hold at once (on disk, "
        "see series_spool_dir); an upload that would pass it is RESOURCE_EXHAUSTED (retry later).",
    )
    series_spool_dir: Path | None = Field(
        None,
        description="Where uploads wait, as unlinked temporary files, until their series is "
        "assembled; empty: the system's temporary folder.",
    )
    stream_max_inflight: int = Field(
        4, ge=1, description="Frames of one ClassifyStream being processed or waiting to be sent."
    )
    poll_interval_s: float = Field(
        2.0, gt=0, description="How often the registry is checked for new versions."
    )
    store_pool_size: int = Field(
        8, ge=1, description="Most PostgreSQL connections one server process holds (a pool)."
    )
    store_timeout_s: float = Field(
        3.0,
        gt=0,
        description="Longest a call waits for a label store connection before the store counts as "
        "unreachable (UNAVAILABLE for reviews; classifications go to the spool).",
    )
    store_probe_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the server checks the label store (readiness, writing the spool).",
    )
    spool_dir: Path | None = Field(
        None,
        description="Local folder where classification records wait while the label store is "
        "unreachable: one per replica (a second process is refused), on a disk that survives a "
        "restart of the process. None: the archive root's sibling `<archive>-spool`.",
    )
    spool_max_records: int = Field(
        50_000,
        ge=1,
        description="Most records the spool holds; more are answered but not recorded "
        "(cad_spool_dropped_total).",
    )
    record_sync: Literal["each", "background"] = Field(
        "background",
        description="When classified frames reach the disk: each (archived image fsynced and "
        "rows committed durably before the response) or background (images fsynced in batches, "
        "rows committed without waiting for the disk; a label always makes its image and every "
        "earlier row durable first).",
    )
    record_sync_interval_ms: float = Field(
        200.0, gt=0, description="Background mode: how long new images wait to be fsynced together."
    )
    archive_max_age_s: float | None = Field(
        30 * 24 * 3600.0,
        description="Unlabeled images older than this are forgotten (None keeps them).",
    )
    archive_max_unlabeled_bytes: int | None = Field(
        20 * 1024**3,
        description="Oldest unlabeled images are forgotten above this total (None: no cap).",
    )
    retention_interval_s: float = Field(3600.0, gt=0, description="How often retention runs.")
    queue_fresh_first: bool = Field(
        False,
        description="Ranked queues take the candidates the serving version scored first: set it "
        "where the trainer re-scores with a budget (CAD_RESCORE_BUDGET), whose untouched "
        "candidates keep an older version's scores.",
    )
    queue_claim_s: float = Field(
        600.0,
        ge=0,
        description="How long an annotation-queue item handed to an authenticated reviewer stays "
        "theirs: other reviewers' queues skip it until a verdict or the claim ends (0: no claims).",
    )
    queue_whole_frames: bool = Field(
        True,
        description="A reviewer who claims items is handed each frame the queue picks whole: its "
        "other unlabeled candidates come with it, in a row, claimed together (false: candidate by "
        "candidate, a frame's candidates possibly split between reviewers).",
    )
    queue_max_per_source: int = Field(
        0,
        ge=0,
        description="A ranked annotation queue hands out at most this many candidates of one "
        "source (a study, else a video or image source) at once, the next best of other sources "
        "in their place, so one long examination cannot fill it (0: no cap).",
    )
    audit_fraction: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="The audit slice: this share of the model's candidates, drawn uniformly when "
        "recorded, is served to reviewers at random places in every queue, never chosen by a "
        "ranking and never trained on; the gate and cad_audit_slice_auc measure each version on "
        "it, an unbiased yardstick (the shipped deployments set 0.05; 0: none).",
    )
    max_note_chars: int = Field(2000, ge=0, description="Longest reviewer note accepted.")
    grace_s: float = Field(5.0, ge=0, description="Shutdown grace period for in-flight calls.")
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate (chain): TLS on the gRPC port."
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of the server certificate."
    )
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: set it to require client certificates (mutual TLS)."
    )
    auth_tokens_file: Path | None = Field(
        None,
        description="JSON bearer-token table (identities and roles); unset: authentication off.",
    )
    auth_open_health: bool = Field(True, description="Health checks need no token.")
    auth_open_reflection: bool = Field(False, description="Server reflection needs no token.")
    reflection: bool = Field(True, description="Serve gRPC server reflection at all.")
    hash_uids: bool = Field(
        False,
        description="Store Study/Series/SOP Instance UIDs as keyed hashes (HMAC-SHA256), not in clear.",
    )
    uid_hash_key_file: Path | None = Field(
        None,
        description="Secret key for hashed UIDs (the same on every replica); required with hash_uids.",
    )
