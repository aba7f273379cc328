"""Series uploads held on disk, not in memory, under one server-wide budget.

A ClassifyVolume upload streams a CT series in as many messages as it needs (up to
``CAD_MAX_SERIES_BYTES``, 1.5 GB). Held as a list of ``bytes``, N concurrent uploads hold N times
that, and the memory stays with the process after a refusal (glibc keeps freed heap for reuse).
Here each instance is written to an unlinked temporary file as its message arrives, so an upload
costs one message of memory while it streams; the server-wide ``CAD_MAX_SERIES_BYTES_IN_FLIGHT``
bounds what all uploads together may hold on disk (RESOURCE_EXHAUSTED beyond it, asking the
client to retry later); and after each upload the freed memory is handed back to the system
(:func:`return_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from cad.errors import LimitExceeded

log = logging.getLogger(__name__)


class UploadBudget:
    """Bytes of series uploads held across all streams. Used from the server's event loop only
    (one thread), so a plain count is enough."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0

    def reserve(self, size: int) -> None:
        if self.held + size > self.budget:
            raise LimitExceeded(
                f"the server already holds {self.held} bytes of series uploads, and this one "
                f"would pass its budget of {self.budget} (CAD_MAX_SERIES_BYTES_IN_FLIGHT); "
                "retry with back-off"
            )
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


class SpilledInstances(Sequence[bytes]):
    """The DICOM instances of one upload in an unlinked temporary file; an instance is read back
    when it is asked for. ``close`` (or the garbage collector) frees the disk."""

    def __init__(self, folder: Path | None = None) -> None:
        # held open across calls (an upload streams in): closed by close() or the collector
        self._file: Any = tempfile.TemporaryFile(prefix="cad-series-", dir=folder)  # noqa: SIM115
        self._spans: list[tuple[int, int]] = []
        self.nbytes = 0

    def append(self, blob: bytes) -> None:
        self._file.seek(0, 2)
        self._spans.append((self._file.tell(), len(blob)))
        self._file.write(blob)
        self.nbytes += len(blob)

    def __len__(self) -> int:
        return len(self._spans)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        offset, size = self._spans[index]
        self._file.seek(offset)
        data: bytes = self._file.read(size)
        return data

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        self._file.close()


_M_MMAP_THRESHOLD = -3
_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim  # noqa: B018 (glibc only: musl and others have none)
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def tune_malloc(mmap_threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``mmap_threshold`` bytes or more from their own mappings, returned to
    the system when freed. glibc otherwise raises its threshold after the first large free (up to
    32 MB), and a refused upload's messages then stay in the heap. True where applied (glibc)."""
    libc = _glibc()
    return bool(libc) and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


def return_memory() -> None:
    """Hand free heap memory back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
