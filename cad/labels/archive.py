"""Content-addressed image archive: the decoded (windowed 8-bit RGB) image, lossless PNG.

The trainer regenerates exactly the patches the server saw from these files,
and reviewers mark missed findings on them, without going back to the PACS.
Blobs live at ``<root>/<sha[:2]>/<sha>.png``, written once (deduplicated by
hash of the PNG bytes) with temp file + rename.

When a blob is made durable (``fsync``):

- ``each``: before :meth:`ImageArchive.put` returns, so before the response is sent;
- ``background`` (the server's default): a syncer thread fsyncs new blobs in batches every
  ``sync_interval_s``. A killed process loses nothing (the file is complete in the page cache);
  a power loss can lose the images of the last interval's unlabeled frames. A labeled image is
  never among them: corrections and missed findings call :meth:`ImageArchive.make_durable`
  first. It keeps the disk's fsync latency (spikes of 100-300 ms on a busy virtual disk) out of
  the video path.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cad.durable import fsync_path, write_atomic
from cad.labels.store.sql import SqlLabelStore

log = logging.getLogger(__name__)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


FSYNC_MODES = ("each", "background")


class ImageArchive:
    def __init__(self, root: Path, fsync: str = "each", sync_interval_s: float = 0.2) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(
                f"archive fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}"
            )
        self.root = Path(root)
        self.fsync = fsync
        self.sync_interval_s = sync_interval_s
        self._pending: dict[Path, None] = {}  # written, not yet fsynced (insertion order)
        self._cond = threading.Condition()
        self._syncer: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Blobs written and not yet fsynced (``background`` mode)."""
        with self._cond:
            return len(self._pending)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.png"

    def put(self, pixels: npt.NDArray[np.uint8], png: bytes | None = None) -> tuple[str, int]:
        """Archive an (H, W, 3) uint8 image; returns (sha256, size in bytes). Idempotent.

        ``png``: the same pixels already encoded (metadata-free), e.g. the PNG frame a client
        sent (see ``DecodedImage.png``); saves compressing them again.
        """
        data = png if png is not None else encode_png(pixels)
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():
            return sha, len(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._cond:
            background = self.fsync == "background" and not self._closed
            if background:
                write_atomic(target, data, sync=False)
                self._pending[target] = None
                if self._syncer is None:
                    self._syncer = threading.Thread(
                        target=self._sync_loop, name="cad-archive-sync", daemon=True
                    )
                    self._syncer.start()
                self._cond.notify_all()
        if not background:
            write_atomic(target, data)
        return sha, len(data)

    def make_durable(self, sha256: str) -> None:
        """fsync one blob and its folder now (whoever wrote it, whatever the mode): called before
        a label that refers to the image is stored. A missing blob is left to the caller."""
        path = self.path(sha256)
        with self._cond:
            self._pending.pop(path, None)
        if path.is_file():
            fsync_path(path)
            fsync_path(path.parent)

    def flush(self) -> None:
        """fsync every pending blob now."""
        with self._cond:
            batch = self._take_pending()
        self._sync(batch)

    def _take_pending(self) -> list[Path]:
        batch = list(self._pending)
        self._pending.clear()
        return batch

    def close(self) -> None:
        """Flush and stop the syncer; later puts fsync each blob."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            syncer = self._syncer
        if syncer is not None:
            syncer.join()
        self.flush()

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return  # close() flushes what is left
                # Gather a batch; puts do not cut this short, close() does.
                self._cond.wait_for(lambda: self._closed, self.sync_interval_s)
                batch = self._take_pending()
            self._sync(batch)

    @staticmethod
    def _sync(batch: list[Path]) -> None:
        folders = []
        for path in batch:
            try:
                fsync_path(path)
            except FileNotFoundError:
                continue  # pruned meanwhile
            except OSError as exc:
                log.error("archive: fsync of %s failed: %s", path.name, exc)
                continue
            if path.parent not in folders:
                folders.append(path.parent)
        for folder in folders:
            try:
                fsync_path(folder)
            except OSError as exc:
                log.error("archive: fsync of folder %s failed: %s", folder.name, exc)

    def get(self, sha256: str) -> npt.NDArray[np.uint8]:
        """The archived image as (H, W, 3) uint8."""
        from PIL import Image

        with Image.open(self.path(sha256)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    def png(self, sha256: str) -> bytes:
        """The archived PNG file as stored (8-bit RGB, image chunks only).

        Raises:
            FileNotFoundError: nothing is archived under ``sha256`` (any more).
        """
        return self.path(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def delete_unless_used(self, sha256: str, in_use: Callable[[], bool]) -> bool:
        """Delete a blob no row refers to, without racing a writer that is about to refer to it.

        The blob is first moved aside, then ``in_use`` is asked again: a row written meanwhile
        (writers insert their row, then check the blob is there: see :meth:`ensure`) puts it
        back. True: deleted."""
        path = self.path(sha256)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.pruning")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if in_use():
            os.replace(aside, path)  # the same bytes: content-addressed
            return False
        aside.unlink()
        return True

    def ensure(self, sha256: str, pixels: npt.NDArray[np.uint8], png: bytes | None) -> None:
        """After a row referring to ``sha256`` was stored: put the blob back if a pruner removed
        it between :meth:`put` and the row (the pruner re-checks rows after moving a blob aside,
        so once the row exists the blob stays)."""
        if not self.path(sha256).exists():
            log.warning(
                "archive: image %s was pruned while it was being recorded; restored", sha256[:12]
            )
            self.put(pixels, png)


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
    now = now or datetime.now(UTC)
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
        if not store.sha_in_use(sha) and archive.delete_unless_used(
            sha, functools.partial(store.sha_in_use, sha)
        ):
            blobs += 1
            freed += size
    if removed:
        log.info(
            "archive retention: forgot %d unlabeled images, %d blobs, %d bytes",
            removed,
            blobs,
            freed,
        )
    return PruneReport(removed, blobs, freed)
