"""Crash-safe file writes: the one implementation used by the registry and the image archive."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory fsync makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: Path, sync: bool) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` to write; on success it replaces ``path`` in one rename
    (fsynced first, and the folder after, when ``sync``)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if sync:
        fsync_path(path.parent)


def write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    ``sync=False`` leaves the fsyncs of the file and of its folder to the caller (the file is
    complete for every reader and survives a crash of the process, not yet a power loss).
    """
    with _replacing(path, sync) as fh:
        fh.write(data)


def copy_atomic(source: Path, path: Path, sync: bool = True) -> None:
    """Copy the file ``source`` to ``path`` as :func:`write_atomic` writes bytes: streamed, so a
    file of any size costs a buffer of memory, and readers see no file or the whole copy."""
    with source.open("rb") as src, _replacing(path, sync) as fh:
        shutil.copyfileobj(src, fh, 1 << 20)
