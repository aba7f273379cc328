"""Server settings: one class, read once in ``main`` from ``CAD_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Settings of the inference server. Every field reads ``CAD_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="CAD_", extra="ignore")

    registry_root: Path = Field(Path("registry"), description="Model registry root folder.")
    model_name: str = Field("cad", description="Model to serve, a folder under the registry.")
    host: str = Field("0.0.0.0", description="gRPC bind address.")
    port: int = Field(50051, description="gRPC port; 0 picks a free one.")
    metrics_host: str = Field("0.0.0.0", description="Prometheus HTTP bind address.")
    metrics_port: int = Field(9464, description="Prometheus /metrics port; 0 picks a free one, -1 disables.")
    providers: str = Field("auto", description="ONNX Runtime providers: auto, cpu or cuda.")
    intra_op_threads: int = Field(0, description="ONNX Runtime intra-op threads; 0 = runtime default.")
    batch_size: int = Field(32, ge=1, description="Patches per model run.")
    workers: int = Field(4, ge=1, description="Threads decoding images and running the model.")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted (RESOURCE_EXHAUSTED over it)."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded frame, height x width (RESOURCE_EXHAUSTED over it)."
    )
    max_frames: int = Field(10_000, ge=1, description="Most frames a multi-frame DICOM may declare.")
    max_candidates: int = Field(
        256, ge=1, description="Most candidates in one request (RESOURCE_EXHAUSTED over it)."
    )
    stream_max_inflight: int = Field(
        4, ge=1, description="Frames of one ClassifyStream being processed or waiting to be sent."
    )
    poll_interval_s: float = Field(2.0, gt=0, description="How often the registry is checked for new versions.")
    store_url: str = Field(
        "sqlite:///data/labels.sqlite3",
        description="Label store: sqlite:///path (embedded, WAL) or postgresql://user@host/db.",
    )
    archive_root: Path = Field(Path("data/archive"), description="Content-addressed image archive folder.")
    archive_max_age_s: float | None = Field(
        30 * 24 * 3600.0, description="Unlabeled images older than this are forgotten (None keeps them)."
    )
    archive_max_unlabeled_bytes: int | None = Field(
        20 * 1024**3, description="Oldest unlabeled images are forgotten above this total (None: no cap)."
    )
    retention_interval_s: float = Field(3600.0, gt=0, description="How often retention runs.")
    max_note_chars: int = Field(2000, ge=0, description="Longest reviewer note accepted.")
    grace_s: float = Field(5.0, ge=0, description="Shutdown grace period for in-flight calls.")
