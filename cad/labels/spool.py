"""Classification records that could not reach the label store, kept on local disk until it can.

Inference must not depend on the label store: when recording a classification finds the store
unreachable, the answer still goes out and the record (image reference, candidates, patch
predictions) is written here, one fsynced file per record, named by a sequence number so that it
is written to the store in the order it was made. :meth:`RecordSpool.drain` writes the oldest
first and removes each file only after the store committed it; the store ignores a record whose
request id it already holds, so a crash between the two writes it exactly once all the same.

The spool is bounded (``max_records``): when full, the record is dropped, counted, and said in
the log; the answer to the client still goes out.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from cad.clock import utc_now
from cad.durable import write_atomic
from cad.errors import StoreUnavailable
from cad.labels.store.records import CandidateRecord, ImageRecord
from cad.metrics import ServiceMetrics

log = logging.getLogger(__name__)

SUFFIX = ".record.json"


def _encode(image: ImageRecord, candidates: Sequence[CandidateRecord]) -> bytes:
    rows = []
    for c in candidates:
        row = asdict(replace(c, patch_probs=None))
        if c.patch_probs is not None:
            probs = np.ascontiguousarray(c.patch_probs, dtype="<f4")
            row["patch_probs"] = {
                "shape": list(probs.shape),
                "f4": base64.b64encode(probs.tobytes()).decode("ascii"),
            }
        rows.append(row)
    return json.dumps({"image": asdict(image), "candidates": rows}).encode()


def _decode(data: bytes) -> tuple[ImageRecord, list[CandidateRecord]]:
    doc = json.loads(data)
    candidates = []
    for row in doc["candidates"]:
        probs: Any = row.pop("patch_probs")
        if probs is not None:
            raw = base64.b64decode(probs["f4"])
            probs = np.frombuffer(raw, dtype="<f4").reshape(probs["shape"]).copy()
        candidates.append(CandidateRecord(**row, patch_probs=probs))
    return ImageRecord(**doc["image"]), candidates


class RecordSpool:
    """A bounded, durable, ordered folder of classification records waiting for the store."""

    def __init__(self, folder: Path, max_records: int, metrics: ServiceMetrics) -> None:
        self.folder = folder
        self.max_records = max_records
        self.metrics = metrics
        folder.mkdir(parents=True, exist_ok=True)
        self._lockfile = (folder / ".owner").open("a+")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise RuntimeError(
                f"the spool folder {folder} is in use by another server process: give each "
                "replica its own CAD_SPOOL_DIR"
            ) from None
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._files = sorted(p.name for p in folder.glob(f"*{SUFFIX}"))
        self._next = 1 + max((int(n.split("-", 1)[0]) for n in self._files), default=0)
        self._added: dict[str, float] = {n: self._mtime(n) for n in self._files}
        self._full_said = False
        self.peak = len(self._files)
        """Most records held at once since start."""
        metrics.spool_records.set_function(lambda: float(len(self._files)))
        metrics.spool_oldest_age.set_function(self.oldest_age)
        if self._files:
            log.warning(
                "label store spool %s holds %d records from before the restart; they are written "
                "when the store is reachable",
                folder,
                len(self._files),
            )

    def close(self) -> None:
        """Let another process take the folder (what is spooled stays for it)."""
        self._lockfile.close()

    def _mtime(self, name: str) -> float:
        try:
            return (self.folder / name).stat().st_mtime
        except FileNotFoundError:
            return time.time()

    @property
    def pending(self) -> int:
        return len(self._files)

    def oldest_age(self) -> float:
        """Seconds the oldest waiting record has waited (0 when empty)."""
        with self._lock:
            if not self._files:
                return 0.0
            return max(0.0, time.time() - self._added[self._files[0]])

    def append(self, image: ImageRecord, candidates: Sequence[CandidateRecord]) -> bool:
        """Keep a record until the store can take it. False: the spool is full; it was dropped.

        An image without a ``created`` time gets the time it is spooled, taken in order with
        the sequence number, so that the spool's order is the order of those times."""
        with self._lock:
            if not image.created:
                image = replace(image, created=utc_now("microseconds"))
            data = _encode(image, candidates)
            if len(self._files) >= self.max_records:
                self.metrics.spool_dropped.inc()
                if not self._full_said:
                    self._full_said = True
                    log.error(
                        "label store spool %s is full (%d records, CAD_SPOOL_MAX_RECORDS): "
                        "classifications are answered but no longer recorded until the store is "
                        "back (counted in cad_spool_dropped_total)",
                        self.folder,
                        self.max_records,
                    )
                return False
            name = f"{self._next:020d}-{image.request_id}{SUFFIX}"
            self._next += 1
            write_atomic(self.folder / name, data)  # fsynced, with its folder
            self._files.append(name)
            self._added[name] = time.time()
            self.peak = max(self.peak, len(self._files))
        return True

    def drain(self, write: Callable[[ImageRecord, list[CandidateRecord]], None]) -> int:
        """Write waiting records to the store, oldest first, until it is empty or the store is
        unreachable again. Returns how many were written."""
        written = 0
        with self._drain_lock:  # one drainer: order is kept
            while True:
                with self._lock:
                    if not self._files:
                        self._full_said = False
                        break
                    name = self._files[0]
                path = self.folder / name
                try:
                    image, candidates = _decode(path.read_bytes())
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    bad = path.with_name(name + ".unreadable")
                    log.error("spooled record %s is unreadable (%s); kept as %s", name, exc, bad)
                    os.replace(path, bad)
                else:
                    try:
                        write(image, candidates)
                    except StoreUnavailable:
                        break
                    path.unlink(missing_ok=True)
                    written += 1
                    self.metrics.spool_written.inc()
                with self._lock:
                    self._files.pop(0)
                    self._added.pop(name, None)
        if written:
            log.info("wrote %d spooled classification records to the label store", written)
        return written
