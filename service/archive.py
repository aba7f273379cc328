"""Content-addressed image archive: the decoded (windowed 8-bit RGB) image, lossless PNG.

The trainer regenerates exactly the patches the server saw from these files,
and reviewers mark missed findings on them, without going back to the PACS.
Blobs live at ``<root>/<sha[:2]>/<sha>.png``, written once (deduplicated by
hash of the PNG bytes) with temp file + fsync + rename.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.durable import write_atomic
from service.store.sql import SqlLabelStore

log = logging.getLogger(__name__)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ImageArchive:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.png"

    def put(self, pixels: npt.NDArray[np.uint8]) -> tuple[str, int]:
        """Archive an (H, W, 3) uint8 image; returns (sha256, size in bytes). Idempotent."""
        data = encode_png(pixels)
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():
            return sha, len(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return sha, len(data)

    def get(self, sha256: str) -> npt.NDArray[np.uint8]:
        """The archived image as (H, W, 3) uint8."""
        from PIL import Image

        with Image.open(self.path(sha256)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


@dataclass(frozen=True)
class PruneReport:
    images_removed: int
    blobs_removed: int
    bytes_removed: int


def prune(
    store: SqlLabelStore,
    archive: ImageArchive,
    max_age_s: float | None,
    max_unlabeled_bytes: int | None,
    now: datetime | None = None,
) -> PruneReport:
    """Forget unlabeled images older than ``max_age_s``, then the oldest unlabeled ones until
    their total size is at most ``max_unlabeled_bytes``. Labeled images are never pruned."""
    now = now or datetime.now(timezone.utc)
    images = store.unlabeled_images()
    total = sum(size for _, _, size, _ in images)
    removed = blobs = freed = 0
    cutoff = (now - timedelta(seconds=max_age_s)).isoformat() if max_age_s is not None else None
    for request_id, sha, size, created in images:  # oldest first
        too_old = cutoff is not None and created < cutoff
        too_big = max_unlabeled_bytes is not None and total > max_unlabeled_bytes
        if not (too_old or too_big):
            continue
        if not store.delete_unlabeled_image(request_id):
            continue
        removed += 1
        total -= size
        if not store.sha_in_use(sha):
            archive.delete(sha)
            blobs += 1
            freed += size
    if removed:
        log.info("archive retention: forgot %d unlabeled images, %d blobs, %d bytes", removed, blobs, freed)
    return PruneReport(removed, blobs, freed)
