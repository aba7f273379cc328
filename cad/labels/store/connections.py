"""Reaching the database: the two SQL dialects, SQLite's one connection, PostgreSQL's bounded pool that
checks a connection before lending it, and which errors mean the database is unreachable."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from cad.clock import utc_now

log = logging.getLogger(__name__)


def now() -> str:
    """Event time: microseconds, so that label order is the order of events."""
    return utc_now("microseconds")


@dataclass(frozen=True)
class Dialect:
    name: str
    param: str
    for_update: str
    begin: str
    relaxed_before: str
    """Run before BEGIN of a relaxed transaction (``relaxed_after`` after it ends)."""
    relaxed_in_tx: str
    """Run right after BEGIN of a relaxed transaction."""
    relaxed_after: str
    read_begin: str = "BEGIN"
    """BEGIN of a read-only transaction: SQLite's deferred BEGIN takes no write lock, so a long
    read (a re-scoring worker's window of half a million) does not hold the others' reads past
    their busy timeout; WAL readers see one snapshot and never block a writer."""


# A relaxed commit does not wait for the disk. Both engines write their log in order, so the next
# durable commit (a label) makes every earlier relaxed one durable too; a power cut can lose only
# the relaxed commits after the last durable one, a crash of the process none.
SQLITE = Dialect(
    "sqlite", "?", "", "BEGIN IMMEDIATE", "PRAGMA synchronous=NORMAL", "", "PRAGMA synchronous=FULL"
)
POSTGRES = Dialect(
    "postgresql", "%s", " FOR UPDATE", "BEGIN", "", "SET LOCAL synchronous_commit = off", ""
)

PG_NOW = (
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
)
"""PostgreSQL's clock in the format of :func:`now`."""


class Connections(Protocol):
    """Where a store's connections come from."""

    def connection(self) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...


class SqliteConnection:
    """One connection under a lock: SQLite is a local file, with no outage to come back from."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.RLock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ConnectFailed(Exception):
    """No new PostgreSQL connection could be made (the database refused or did not answer)."""


class PostgresPool:
    """A bounded pool of PostgreSQL connections, made on demand.

    Every idle connection is checked (an empty query) before it is lent and replaced if it is
    dead, so the first call after a database restart gets a fresh connection; a broken
    connection is dropped when it comes back. Connecting is tried afresh by each call that needs
    it, bounded by ``timeout_s``: no background reconnect schedule, so the store is usable again
    the moment the database answers. At most ``max_size`` connections are lent at once; a call
    waits up to ``timeout_s`` for one.
    """

    def __init__(self, url: str, max_size: int, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_size = max_size
        self._slots = threading.BoundedSemaphore(max_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, math.ceil(self.timeout_s))
            )
        except psycopg.OperationalError as exc:
            raise ConnectFailed(first_message_line(exc)) from None

    def _checkout(self) -> Any:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            try:
                conn.execute("")
                return conn
            except Exception:  # noqa: BLE001  any failure of the idle check means a dead connection
                conn.close()  # died while idle (a database restart): the next one, or a new one

    @contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg

        if not self._slots.acquire(timeout=self.timeout_s):
            raise ConnectFailed(f"all {self.max_size} label store connections stayed busy")
        try:
            conn = self._checkout()
            try:
                yield conn
            except psycopg.Error:
                conn.close()  # after a database error a fresh one (a demoted primary's goes)
                raise
            finally:
                from psycopg.pq import TransactionStatus

                if (
                    conn.broken
                    or conn.closed
                    or conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    conn.close()
                else:
                    with self._lock:
                        self._idle.append(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def postgres_outage(exc: BaseException) -> str:
    """``refused``: no connection could be had (trying again at once is pointless); ``lost``: a
    lent connection broke; "": not an outage (a constraint, a syntax error...)."""
    import psycopg

    if isinstance(exc, ConnectFailed):
        return "refused"
    if isinstance(exc, psycopg.InterfaceError):
        return "lost"
    if getattr(exc, "sqlstate", None) == "25006":
        # read_only_sql_transaction: this connection's server was the primary and is a standby
        # now (a switchover); a fresh connection finds the new primary (target_session_attrs)
        return "lost"
    if not isinstance(exc, psycopg.OperationalError):
        return ""
    state = getattr(exc, "sqlstate", None)
    # no SQLSTATE: the socket went away; 08: connection exceptions; 57P0x: the server shut down
    return "lost" if state is None or state.startswith(("08", "57P")) else ""


def first_message_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg's run over several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
