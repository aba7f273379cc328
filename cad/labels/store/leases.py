"""Leases: exclusive, named pieces of work (the trainer, the archive pruner), as PostgreSQL advisory
locks on a connection of their own or, on SQLite, file locks beside the database."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import socket
import zlib
from pathlib import Path
from typing import Any

from cad.errors import (
    LeaseHeld,
    StoreUnavailable,
)
from cad.labels.store.connections import SQLITE, first_message_line
from cad.labels.store.core import StoreCore

log = logging.getLogger(__name__)


LEASE_CLASS = 4243
"""First key of every lease's PostgreSQL advisory lock (the second is the name's CRC-32)."""


def holder_name(what: str) -> str:
    """Who holds a lease, as its message names them: what, host, process id."""
    return f"{what} on {socket.gethostname()} (pid {os.getpid()})"


class Lease:
    """An exclusive lease on a named piece of work (``trainer``, ``archive-prune``), so that one
    process does it at a time across every host sharing the store.

    PostgreSQL: a session advisory lock on a connection of its own, named after the holder
    (``application_name``), so a refusal can name the holder and the lock goes away with the
    holder's process or connection. SQLite: an exclusive ``flock`` on a file beside the
    database, holding the holder's name.
    """

    def __init__(self, store: StoreCore, name: str, holder: str) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.key = zlib.crc32(name.encode()) & 0x7FFFFFFF
        self._conn: Any = None
        self._file: Any = None
        self._lost = False

    def acquire(self) -> Lease:
        """Take the lease now or raise.

        Raises:
            LeaseHeld: another process holds it (the message names it).
            StoreUnavailable: the store cannot be reached.
        """
        if self.store.dialect is SQLITE:
            self._acquire_file()
        else:
            self._acquire_advisory()
        log.info("lease %r taken by %s", self.name, self.holder)
        return self

    def _refused(self, other: str) -> LeaseHeld:
        return LeaseHeld(
            f"the {self.name} lease is held by {other or 'another process'}; "
            "one at a time: wait for it to finish, or stop it"
        )

    def _acquire_file(self) -> None:
        path = Path(f"{self.store.path}.{self.name}.lease")
        fh = path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip()
            fh.close()
            raise self._refused(other) from None
        fh.seek(0)
        fh.truncate()
        fh.write(self.holder)
        fh.flush()
        self._file = fh

    def _acquire_advisory(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(
                self.store.url,
                autocommit=True,
                application_name=self.holder[:63],
                connect_timeout=max(1, math.ceil(self.store.timeout_s)),
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"the label store is unreachable ({first_message_line(exc)}); the {self.name} lease "
                "could not be taken"
            ) from None
        got = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (LEASE_CLASS, self.key)
        ).fetchone()
        if got and got[0]:
            self._conn = conn
            return
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s",
            (LEASE_CLASS, self.key),
        ).fetchone()
        conn.close()
        raise self._refused(row[0] if row else "")

    def ensure(self) -> None:
        """Check the lease is still held before more of the work; after a lost connection (a
        database restart drops advisory locks) take it again.

        Raises:
            LeaseHeld: someone else took it meanwhile. StoreUnavailable: the store is down.
        """
        if self._conn is None and not self._lost:
            return  # SQLite (a file lock), or never taken
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return
            except Exception:  # noqa: BLE001  any failure of the check means the connection is gone
                log.warning("lease %r: its connection was lost; taking it again", self.name)
            self.release()
            self._lost = True
        self._acquire_advisory()
        self._lost = False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # the session's advisory lock goes with it
            finally:
                self._conn = None
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
