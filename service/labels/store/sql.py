"""The SQL label store: one implementation, SQLite and PostgreSQL dialects.

Every write is one transaction committed before the call returns (SQLite:
WAL with ``synchronous=FULL``; PostgreSQL: its default durable commit), so an
acknowledged correction survives a crash of the server at any moment.

PostgreSQL is reached through a bounded pool that checks a connection before lending it and
connects afresh after an outage (:class:`PostgresPool`). Every operation is safe to run twice (reads; writes keyed
by an idempotency key, a request id or an event id), so one that meets a dead connection is run
once more on a fresh one; if that fails too the store is unreachable and the caller gets
:class:`~service.errors.StoreUnavailable` (UNAVAILABLE), never an internal error.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from service.aift.scoring import (
    PAPER_ALPHA,
    Variant,
    as_class_probs,
    majority_terms,
    total_diversity,
    total_entropy,
)
from service.durable import write_atomic
from service.errors import (
    AlreadyExists,
    InvalidInput,
    LeaseHeld,
    NotFound,
    Settled,
    StoreUnavailable,
)
from service.labels.store.migrations import MIGRATIONS
from service.labels.store.records import (
    AuditEvent,
    CandidateRecord,
    Conflict,
    ConflictNotice,
    ImageCandidate,
    ImageRecord,
    LabeledCandidate,
    LabelEvent,
    QueueEntry,
    Receipt,
)
from service.models.registry import utc_now
from service.validation import quote

log = logging.getLogger(__name__)

T = TypeVar("T")


class IdempotencyConflict(AlreadyExists):
    """An idempotency key was reused with a different request body (ALREADY_EXISTS)."""


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


# A relaxed commit does not wait for the disk. Both engines write their log in order, so the next
# durable commit (a label) makes every earlier relaxed one durable too; a power cut can lose only
# the relaxed commits after the last durable one, a crash of the process none.
SQLITE = Dialect(
    "sqlite", "?", "", "BEGIN IMMEDIATE", "PRAGMA synchronous=NORMAL", "", "PRAGMA synchronous=FULL"
)
POSTGRES = Dialect(
    "postgresql", "%s", " FOR UPDATE", "BEGIN", "", "SET LOCAL synchronous_commit = off", ""
)

_PG_NOW = (
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
)
"""PostgreSQL's clock in the format of :func:`now`."""

_IMAGE_COLUMNS = (
    "request_id, sha256, size_bytes, height, width, frame_index, source_kind, source_id, "
    "study_uid, series_uid, sop_instance_uid, modality, recipe, model_version, created"
)
_CANDIDATE_COLUMNS = (
    "candidate_id, request_id, client_id, x, y, width, height, recipe, model_version, "
    "probability, entropy, diversity, score, patch_probs, patch_shape, origin, created"
)
_CANDIDATE_FIELDS = tuple(name.strip() for name in _CANDIDATE_COLUMNS.split(","))
_CANDIDATE_INSERT = (
    _CANDIDATE_COLUMNS + ", scored_version, entropy_alpha, diversity_alpha, random_key"
)
_EVENT_COLUMNS = (
    "event_id, candidate_id, seq, kind, label_before, label_after, reviewer, note, "
    "idempotency_key, body_sha256, conflict, created"
)


def _probs_blob(probs: np.ndarray | None) -> tuple[bytes | None, str | None]:
    if probs is None:
        return None, None
    arr = np.ascontiguousarray(probs, dtype="<f4")
    return arr.tobytes(), json.dumps(list(arr.shape))


def random_key(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a candidate id (random queue order)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big") / float(1 << 56)


Terms = tuple[float | None, float | None, float | None, float | None]


def _ranking_terms(
    probs: Sequence[np.ndarray | None],
    entropy: Sequence[float | None],
    diversity: Sequence[float | None],
) -> list[Terms]:
    """What the annotation queue ranks by, per candidate, computed here from the patch
    predictions so that it is what ``aift_scores`` computes from the stored blobs: total entropy
    and diversity over all patches and over the alpha-majority patches (every named variant is a
    sum of two). Candidates without predictions keep the given entropy and diversity. One
    vectorised pass per patch-array shape, outside any transaction."""
    terms: list[Terms] = [(e, d, None, None) for e, d in zip(entropy, diversity, strict=True)]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, pr in enumerate(probs):
        if pr is not None:
            by_shape.setdefault(np.shape(pr), []).append(i)
    for indices in by_shape.values():
        stored = np.stack([np.asarray(probs[i], dtype="<f4") for i in indices])  # as the blobs
        p = as_class_probs(stored)
        e, d = total_entropy(p), total_diversity(p)
        ea, da = majority_terms(p)
        for row, i in enumerate(indices):
            terms[i] = (float(e[row]), float(d[row]), float(ea[row]), float(da[row]))
    return terms


def _queue_entry(r: Sequence[Any]) -> QueueEntry:
    """A queue entry from a row of candidate_id .. source_id, patch_probs, patch_shape, sha256,
    recipe, study_uid (the order every queue query reads them in)."""
    probs = _probs_array(r[10], r[11])
    assert probs is not None  # queue queries read candidates with predictions only
    return QueueEntry(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], probs, r[12], r[13], r[14]
    )


def _probs_array(blob: Any, shape: str | None) -> np.ndarray | None:
    if blob is None or shape is None:
        return None
    return np.frombuffer(bytes(blob), dtype="<f4").reshape(json.loads(shape))


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
            raise ConnectFailed(_first(exc)) from None

    def _checkout(self) -> Any:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            try:
                conn.execute("")
                return conn
            except Exception:
                conn.close()  # died while idle (a database restart): the next one, or a new one

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self.timeout_s):
            raise ConnectFailed(f"all {self.max_size} label store connections stayed busy")
        try:
            conn = self._checkout()
            try:
                yield conn
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


def _postgres_outage(exc: BaseException) -> str:
    """``refused``: no connection could be had (trying again at once is pointless); ``lost``: a
    lent connection broke; "": not an outage (a constraint, a syntax error...)."""
    import psycopg

    if isinstance(exc, ConnectFailed):
        return "refused"
    if isinstance(exc, psycopg.InterfaceError):
        return "lost"
    if not isinstance(exc, psycopg.OperationalError):
        return ""
    state = getattr(exc, "sqlstate", None)
    # no SQLSTATE: the socket went away; 08: connection exceptions; 57P0x: the server shut down
    return "lost" if state is None or state.startswith(("08", "57P")) else ""


class SqlLabelStore:
    """Candidates, archived images and label events in SQLite or PostgreSQL.

    Thread-safe: SQLite through one connection under a lock; PostgreSQL through a pool
    (PostgreSQL row locks serialise writers across threads and replicas).
    """

    def __init__(
        self,
        connections: Connections,
        dialect: Dialect,
        integrity_errors: tuple[type[BaseException], ...],
        outage: Callable[[BaseException], str] = lambda _exc: "",
        migrate: bool = True,
    ) -> None:
        self._connections = connections
        self.dialect = dialect
        self._integrity_errors = integrity_errors
        self._outage = outage
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self.available = True
        """False from an operation that found the store unreachable until one that reached it."""
        self.last_error = ""
        self.unavailable_since: float | None = None
        """``time.monotonic()`` of the first failure of the current outage (None: reachable)."""
        self.url = ""
        """PostgreSQL: the connection URL (a lease opens a connection of its own)."""
        self.path: Path | None = None
        """SQLite: the database file (leases are files beside it)."""
        self.timeout_s = 3.0
        if migrate:
            self.migrate()

    # ------------------------------------------------------------------ plumbing

    def _sql(self, text: str) -> str:
        return text.replace("?", self.dialect.param) if self.dialect.param != "?" else text

    @contextmanager
    def _tx(self, relaxed: bool = False) -> Iterator[Any]:
        """One transaction on one connection, one attempt; ``relaxed``: its commit does not wait
        for the disk (see Dialect)."""
        d = self.dialect
        with self._connections.connection() as conn:
            cur = conn.cursor()
            if relaxed and d.relaxed_before:
                cur.execute(d.relaxed_before)
            try:
                cur.execute(d.begin)
                if relaxed and d.relaxed_in_tx:
                    cur.execute(d.relaxed_in_tx)
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                else:
                    cur.execute("COMMIT")
            finally:
                if relaxed and d.relaxed_after:
                    cur.execute(d.relaxed_after)
                cur.close()

    def _run(self, body: Callable[[Any], T], relaxed: bool = False) -> T:
        """Run ``body(cursor)`` in one transaction; on a lost connection once more on a fresh
        one (every operation of this store is safe to repeat), then StoreUnavailable."""
        if not self._migrated:
            self.migrate()
        return self._attempt(body, relaxed)

    def run(self, body: Callable[[Any], T]) -> T:
        """Run ``body(cursor)`` in one transaction as this store's own operations are run (once
        more on a lost connection, else StoreUnavailable); for tables other modules keep in the
        store (the review UI's sign-ins). ``body`` must be safe to repeat; write its SQL with
        ``?`` placeholders through :meth:`sql`."""
        return self._run(body)

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in this store's dialect."""
        return self._sql(text)

    def _attempt(self, body: Callable[[Any], T], relaxed: bool = False) -> T:
        for attempt in (1, 2):
            try:
                with self._tx(relaxed) as cur:
                    result = body(cur)
            except Exception as exc:
                kind = self._outage(exc)
                if not kind:
                    raise
                if attempt == 1 and kind == "lost":
                    log.warning("label store: %s; retrying on a fresh connection", _first(exc))
                    continue
                self._mark_down(exc)
                raise StoreUnavailable(
                    f"the label store is unreachable ({_first(exc)}); nothing was stored, "
                    "retry later"
                ) from None
            self._mark_up()
            return result
        raise AssertionError("unreachable")

    def _mark_down(self, exc: BaseException) -> None:
        if self.available:
            log.error("label store unreachable: %s", _first(exc))
            self.unavailable_since = time.monotonic()
        self.available = False
        self.last_error = _first(exc)

    def _mark_up(self) -> None:
        if not self.available:
            log.warning("label store reachable again")
        self.available = True
        self.unavailable_since = None

    def _now(self, cur: Any) -> str:
        """Event time from the database's clock (PostgreSQL), so that every replica's events
        order by one clock; SQLite is on this machine, whose clock it is."""
        if self.dialect is not POSTGRES:
            return now()
        cur.execute(_PG_NOW)
        return str(cur.fetchone()[0])

    def db_now(self) -> str:
        """The store's clock now (ISO 8601, UTC, microseconds)."""
        return self._run(self._now)

    def _query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def body(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(self._sql(text), tuple(params))
            return list(cur.fetchall())

        return self._run(body)

    def ping(self) -> bool:
        """Reach the store now (migrating it if it was unreachable at start). False: down."""
        try:
            self._query("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        self._connections.close()

    def lease(self, name: str, holder: str) -> Lease:
        """An exclusive lease on ``name`` (``with store.lease(...)``, or acquire/release)."""
        return Lease(self, name, holder)

    def migrate(self) -> list[int]:
        """Apply pending numbered migrations; returns those applied now."""
        with self._migrate_lock:
            applied_now: list[int] = []

            def body(cur: Any) -> None:
                applied_now.clear()
                if self.dialect is POSTGRES:
                    cur.execute("SELECT pg_advisory_xact_lock(4242)")  # replicas migrate in turn
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "description TEXT NOT NULL, applied TEXT NOT NULL)"
                )
                cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in cur.fetchall()}
                for version, description, statements in MIGRATIONS:
                    if version in done:
                        continue
                    for statement in statements:
                        cur.execute(statement)
                    cur.execute(
                        self._sql("INSERT INTO schema_migrations VALUES (?, ?, ?)"),
                        (version, description, now()),
                    )
                    applied_now.append(version)

            self._attempt(body)
            self._migrated = True
        if applied_now:
            log.info("label store: applied migrations %s", applied_now)
        if 5 in applied_now or 8 in applied_now:
            self._backfill_ranking_terms()
        return applied_now

    def _backfill_ranking_terms(self, batch: int = 2000) -> int:
        """Compute the queue's ranking terms of candidates stored before migration 5."""
        done = 0
        while True:
            rows = self._attempt(
                lambda cur: (
                    cur.execute(
                        self._sql(
                            "SELECT candidate_id, patch_probs, patch_shape, entropy, diversity "
                            "FROM candidates WHERE (entropy_alpha IS NULL OR random_key IS NULL) AND "
                            "patch_probs IS NOT NULL "
                            "LIMIT ?"
                        ),
                        (batch,),
                    ),
                    cur.fetchall(),
                )[1]
            )
            if not rows:
                break
            terms = _ranking_terms(
                [_probs_array(r[1], r[2]) for r in rows], [r[3] for r in rows], [r[4] for r in rows]
            )
            updates = [(*t, random_key(r[0]), r[0]) for t, r in zip(terms, rows, strict=True)]

            def write(cur: Any, updates: list[tuple[Any, ...]] = updates) -> None:
                cur.executemany(
                    self._sql(
                        "UPDATE candidates SET entropy = ?, diversity = ?, entropy_alpha = ?, "
                        "diversity_alpha = ?, random_key = ? WHERE candidate_id = ?"
                    ),
                    updates,
                )

            self._attempt(write)
            done += len(rows)
        if done:
            log.info("label store: ranking terms computed for %d earlier candidates", done)
        return done

    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    # ------------------------------------------------------------------ classification records

    def record_classification(
        self, image: ImageRecord, candidates: Sequence[CandidateRecord], durable: bool = True
    ) -> None:
        """Store one classified image and its candidates in one transaction.

        ``durable=False``: a relaxed commit (survives a crash of the process; a power cut can lose
        it unless a later durable commit, such as any label, came first)."""
        given = image.created
        terms = _ranking_terms(
            [c.patch_probs for c in candidates],
            [c.entropy for c in candidates],
            [c.diversity for c in candidates],
        )

        def body(cur: Any) -> None:
            created = given or self._now(cur)
            cur.execute(
                self._sql(
                    f"INSERT INTO images ({_IMAGE_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
                    "ON CONFLICT (request_id) DO NOTHING"
                ),
                (
                    image.request_id,
                    image.sha256,
                    image.size_bytes,
                    image.height,
                    image.width,
                    image.frame_index,
                    image.source_kind,
                    image.source_id,
                    image.study_uid,
                    image.series_uid,
                    image.sop_instance_uid,
                    image.modality,
                    image.recipe,
                    image.model_version,
                    created,
                ),
            )
            if cur.rowcount == 0:
                return  # recorded before (a retry, or a spooled record written twice): once only
            for c, t in zip(candidates, terms, strict=True):
                self._insert_candidate(cur, c, created, t)

        self._run(body, relaxed=not durable)

    def _insert_candidate(
        self, cur: Any, c: CandidateRecord, created: str, terms: Terms | None = None
    ) -> None:
        """``terms``: the candidate's ranking terms (:func:`_ranking_terms`); computed here when
        not given."""
        blob, shape = _probs_blob(c.patch_probs)
        entropy, diversity, entropy_alpha, diversity_alpha = (
            terms or _ranking_terms([c.patch_probs], [c.entropy], [c.diversity])[0]
        )
        cur.execute(
            self._sql(
                f"INSERT INTO candidates ({_CANDIDATE_INSERT}) VALUES ({', '.join('?' * 21)})"
            ),
            (
                c.candidate_id,
                c.request_id,
                c.client_id,
                c.x,
                c.y,
                c.width,
                c.height,
                c.recipe,
                c.model_version,
                c.probability,
                entropy,
                diversity,
                c.score,
                blob,
                shape,
                c.origin,
                c.created or created,
                c.model_version,
                entropy_alpha,
                diversity_alpha,
                random_key(c.candidate_id),
            ),
        )

    def get_image(self, request_id: str) -> ImageRecord:
        rows = self._query(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE request_id = ?", (request_id,)
        )
        if not rows:
            raise NotFound(f"no archived image for request_id {quote(request_id)}")
        return ImageRecord(*rows[0])

    def get_candidate(self, candidate_id: str) -> CandidateRecord:
        rows = self._query(
            f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE candidate_id = ?", (candidate_id,)
        )
        if not rows:
            raise NotFound(f"unknown candidate_id {quote(candidate_id)}")
        return self._candidate(rows[0])

    def candidates_of(self, request_id: str) -> list[ImageCandidate]:
        """Every candidate recorded on a request's image, model-proposed and missed, with its
        current label, in the order they were recorded."""
        rows = self._query(
            f"SELECT {_CANDIDATE_COLUMNS}, label, label_reviewer, conflict FROM candidates "
            "WHERE request_id = ? ORDER BY created, candidate_id",
            (request_id,),
        )
        return [
            ImageCandidate(self._candidate(r[:17]), r[17], r[18] or "", bool(r[19])) for r in rows
        ]

    @staticmethod
    def _candidate(row: Sequence[Any]) -> CandidateRecord:
        values = list(row)
        probs = _probs_array(values[13], values[14])
        fields = dict(zip(_CANDIDATE_FIELDS[:13], values[:13], strict=True))
        return CandidateRecord(**fields, patch_probs=probs, origin=values[15], created=values[16])

    # ------------------------------------------------------------------ label events

    def _replay(self, cur: Any, key: str, body_sha256: str) -> Receipt | None:
        cur.execute(
            self._sql(f"SELECT {_EVENT_COLUMNS} FROM label_events WHERE idempotency_key = ?"),
            (key,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        event = self._event(row)
        if event.body_sha256 != body_sha256:
            raise IdempotencyConflict(
                f"idempotency_key {key!r} was already used for a different request "
                f"(event {event.event_id}); use a new key for a new correction"
            )
        return Receipt(event, replayed=True)

    @staticmethod
    def _event(row: Sequence[Any]) -> LabelEvent:
        v = list(row)
        return LabelEvent(
            v[0], v[1], int(v[2]), v[3], v[4], int(v[5]), v[6], v[7], v[8], v[9], bool(v[10]), v[11]
        )

    def _with_idempotency(self, key: str, body_sha256: str, write: Any) -> Receipt:
        """Run ``write(cur)`` once per idempotency key; replay the stored receipt after."""
        for _attempt in range(3):
            try:

                def body(cur: Any) -> Receipt:
                    replay = self._replay(cur, key, body_sha256)
                    if replay is not None:
                        return replay
                    return Receipt(write(cur), replayed=False)

                return self._run(body)
            except self._integrity_errors:
                continue  # a concurrent writer took the key (or seq); read its result
        raise RuntimeError(f"could not record the event for idempotency_key {key!r}")

    def add_label(
        self, candidate_id: str, label: int, reviewer: str, note: str, key: str, body_sha256: str
    ) -> Receipt:
        """Append a correction event to an existing candidate and update its current label."""

        def write(cur: Any) -> LabelEvent:
            cur.execute(
                self._sql(
                    "SELECT label, label_reviewer, events, conflict, request_id, adjudicated "
                    "FROM candidates WHERE candidate_id = ?" + self.dialect.for_update
                ),
                (candidate_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"unknown candidate_id {quote(candidate_id)}")
            before, last_reviewer, events, old_conflict, request_id, adjudicated = row
            if adjudicated:
                raise Settled(
                    f"candidate {quote(candidate_id)} was settled by adjudication; its label is "
                    "final"
                )
            conflict = before is not None and before != label and last_reviewer != reviewer
            event = LabelEvent(
                f"ev-{uuid.uuid4().hex}",
                candidate_id,
                int(events) + 1,
                "correction",
                before,
                label,
                reviewer,
                note,
                key,
                body_sha256,
                conflict,
                self._now(cur),
            )
            self._insert_event(cur, event)
            cur.execute(
                self._sql(
                    "UPDATE candidates SET label = ?, label_reviewer = ?, label_event_id = ?, "
                    "labeled_at = ?, events = ?, conflict = ?, claimed_by = NULL, "
                    "claimed_until = NULL WHERE candidate_id = ?"
                ),
                (
                    label,
                    reviewer,
                    event.event_id,
                    event.created,
                    event.seq,
                    int(bool(old_conflict) or conflict),
                    candidate_id,
                ),
            )
            cur.execute(
                self._sql("UPDATE images SET labeled = 1 WHERE request_id = ?"), (request_id,)
            )
            if conflict:  # both are told, on their next action
                for who, mine, other, theirs in (
                    (last_reviewer, before, reviewer, label),
                    (reviewer, label, last_reviewer, before),
                ):
                    cur.execute(
                        self._sql("INSERT INTO conflict_notices VALUES (?, ?, ?, ?, ?, ?, ?, 0)"),
                        (
                            f"cn-{uuid.uuid4().hex}",
                            who,
                            candidate_id,
                            mine,
                            other,
                            theirs,
                            event.created,
                        ),
                    )
            return event

        return self._with_idempotency(key, body_sha256, write)

    def retract(self, event_id: str, reviewer: str, key: str, body_sha256: str) -> Receipt:
        """Take back ``reviewer``'s own latest event on a candidate (undo): a ``retraction``
        event, and the label goes back to what it was before that event (a retracted missed
        finding: no label, so it is neither trained on nor exported).

        Raises:
            NotFound: no such event. InvalidInput: another reviewer's event. Settled: someone
            labeled the candidate since, or it was adjudicated.
        """

        def write(cur: Any) -> LabelEvent:
            cur.execute(
                self._sql(
                    "SELECT candidate_id, reviewer, label_before, conflict FROM label_events "
                    "WHERE event_id = ?"
                ),
                (event_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"unknown event_id {quote(event_id)}")
            candidate_id, author, label_before, made_conflict = row
            if author != reviewer:
                raise InvalidInput(f"event {quote(event_id)} is {author}'s, not {reviewer}'s")
            cur.execute(
                self._sql(
                    "SELECT label_event_id, events, adjudicated, label FROM candidates "
                    "WHERE candidate_id = ?" + self.dialect.for_update
                ),
                (candidate_id,),
            )
            latest, events, adjudicated, label = cur.fetchone()
            if adjudicated or latest != event_id:
                raise Settled(
                    f"candidate {quote(candidate_id)} was labeled again since event "
                    f"{quote(event_id)}; it can no longer be undone"
                )
            cur.execute(  # who set the label the candidate goes back to
                self._sql(
                    "SELECT reviewer, event_id, created FROM label_events WHERE candidate_id = ? "
                    "AND kind <> 'retraction' AND event_id <> ? ORDER BY seq DESC LIMIT 1"
                ),
                (candidate_id, event_id),
            )
            before = cur.fetchone() if label_before is not None else None
            event = LabelEvent(
                f"ev-{uuid.uuid4().hex}",
                candidate_id,
                int(events) + 1,
                "retraction",
                label,
                -1 if label_before is None else int(label_before),
                reviewer,
                f"retracts {event_id}",
                key,
                body_sha256,
                False,
                self._now(cur),
            )
            self._insert_event(cur, event)
            cur.execute(
                self._sql(
                    "UPDATE candidates SET label = ?, label_reviewer = ?, label_event_id = ?, "
                    "labeled_at = ?, events = ?"
                    # the disagreement this event made is withdrawn with it
                    + (", conflict = 0" if made_conflict else "")
                    + " WHERE candidate_id = ?"
                ),
                (
                    label_before,
                    before[0] if before else None,
                    before[1] if before else None,
                    before[2] if before else None,
                    event.seq,
                    candidate_id,
                ),
            )
            return event

        return self._with_idempotency(key, body_sha256, write)

    def take_notices(self, reviewer: str) -> list[ConflictNotice]:
        """The disagreements ``reviewer`` has not been told of, oldest first, now marked told."""

        def body(cur: Any) -> list[ConflictNotice]:
            cur.execute(
                self._sql(
                    "SELECT n.notice_id, n.candidate_id, c.request_id, n.your_label, "
                    "n.other_reviewer, n.their_label, n.created FROM conflict_notices n "
                    "JOIN candidates c ON c.candidate_id = n.candidate_id "
                    "WHERE n.reviewer = ? AND n.told = 0 ORDER BY n.created, n.notice_id"
                ),
                (reviewer,),
            )
            rows = cur.fetchall()
            for r in rows:
                cur.execute(
                    self._sql("UPDATE conflict_notices SET told = 1 WHERE notice_id = ?"), (r[0],)
                )
            return [ConflictNotice(r[1], r[2], int(r[3]), r[4], int(r[5]), r[6]) for r in rows]

        return self._run(body)

    def conflicts(self, limit: int = 100) -> list[Conflict]:
        """Candidates reviewers disagree on that nobody has adjudicated, oldest first."""
        rows = self._query(
            f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE conflict = 1 AND adjudicated = 0 "
            "ORDER BY labeled_at, candidate_id LIMIT ?",
            (limit,),
        )
        return [Conflict(self._candidate(r), self.events(r[0])) for r in rows]

    def adjudicate(
        self, candidate_id: str, label: int, adjudicator: str, note: str, key: str, body_sha256: str
    ) -> Receipt:
        """The final verdict on a disputed candidate, by a reviewer who gave none on it.

        Raises:
            NotFound: no such candidate. InvalidInput: nothing to settle, or the adjudicator
            took part. Settled: it was settled already.
        """

        def write(cur: Any) -> LabelEvent:
            cur.execute(
                self._sql(
                    "SELECT label, events, conflict, adjudicated FROM candidates "
                    "WHERE candidate_id = ?" + self.dialect.for_update
                ),
                (candidate_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"unknown candidate_id {quote(candidate_id)}")
            before, events, conflict, adjudicated = row
            if adjudicated:
                raise Settled(f"candidate {quote(candidate_id)} was settled already")
            if not conflict:
                raise InvalidInput(f"candidate {quote(candidate_id)} has no disagreement to settle")
            cur.execute(
                self._sql("SELECT DISTINCT reviewer FROM label_events WHERE candidate_id = ?"),
                (candidate_id,),
            )
            if adjudicator in {r[0] for r in cur.fetchall()}:
                raise InvalidInput(
                    f"{adjudicator} gave a verdict on {quote(candidate_id)}: a reviewer who "
                    "gave none settles it"
                )
            event = LabelEvent(
                f"ev-{uuid.uuid4().hex}",
                candidate_id,
                int(events) + 1,
                "adjudication",
                before,
                label,
                adjudicator,
                note,
                key,
                body_sha256,
                False,
                self._now(cur),
            )
            self._insert_event(cur, event)
            cur.execute(
                self._sql(
                    "UPDATE candidates SET label = ?, label_reviewer = ?, label_event_id = ?, "
                    "labeled_at = ?, events = ?, adjudicated = 1, claimed_by = NULL, "
                    "claimed_until = NULL WHERE candidate_id = ?"
                ),
                (label, adjudicator, event.event_id, event.created, event.seq, candidate_id),
            )
            return event

        return self._with_idempotency(key, body_sha256, write)

    def add_missed(
        self, candidate: CandidateRecord, reviewer: str, note: str, key: str, body_sha256: str
    ) -> Receipt:
        """Create a positive candidate supplied by a reviewer (a false negative) with its event."""

        def write(cur: Any) -> LabelEvent:
            cur.execute(
                self._sql(
                    "SELECT request_id FROM images WHERE request_id = ?" + self.dialect.for_update
                ),
                (candidate.request_id,),
            )
            if cur.fetchone() is None:
                raise NotFound(f"no archived image for request_id {quote(candidate.request_id)}")
            event = LabelEvent(
                f"ev-{uuid.uuid4().hex}",
                candidate.candidate_id,
                1,
                "missed",
                None,
                1,
                reviewer,
                note,
                key,
                body_sha256,
                False,
                self._now(cur),
            )
            self._insert_candidate(cur, candidate, event.created)
            self._insert_event(cur, event)
            cur.execute(
                self._sql(
                    "UPDATE candidates SET label = 1, label_reviewer = ?, label_event_id = ?, "
                    "labeled_at = ?, events = 1 WHERE candidate_id = ?"
                ),
                (reviewer, event.event_id, event.created, candidate.candidate_id),
            )
            cur.execute(
                self._sql("UPDATE images SET labeled = 1 WHERE request_id = ?"),
                (candidate.request_id,),
            )
            return event

        return self._with_idempotency(key, body_sha256, write)

    def _insert_event(self, cur: Any, e: LabelEvent) -> None:
        cur.execute(
            self._sql(
                f"INSERT INTO label_events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' * 12)})"
            ),
            (
                e.event_id,
                e.candidate_id,
                e.seq,
                e.kind,
                e.label_before,
                e.label_after,
                e.reviewer,
                e.note,
                e.idempotency_key,
                e.body_sha256,
                int(e.conflict),
                e.created,
            ),
        )

    def events(self, candidate_id: str | None = None) -> list[LabelEvent]:
        """Label events, oldest first (all, or one candidate's)."""
        where, params = ("WHERE candidate_id = ?", (candidate_id,)) if candidate_id else ("", ())
        rows = self._query(
            f"SELECT {_EVENT_COLUMNS} FROM label_events {where} ORDER BY created, seq", params
        )
        return [self._event(r) for r in rows]

    # ------------------------------------------------------------------ audit trail

    def add_audit(
        self, action: str, actor: str, target: str, detail: dict[str, Any] | None = None
    ) -> AuditEvent:
        """Append one audit event (committed before returning)."""
        event_id = uuid.uuid4().hex  # a retry after a lost commit stores it once

        def body(cur: Any) -> AuditEvent:
            event = AuditEvent(
                event_id, self._now(cur), actor or "unknown", action, target, dict(detail or {})
            )
            cur.execute(
                self._sql(
                    "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO NOTHING"
                ),
                (
                    event.event_id,
                    event.created,
                    event.actor,
                    event.action,
                    event.target,
                    json.dumps(event.detail, sort_keys=True, default=str),
                ),
            )
            return event

        event = self._run(body)
        return event

    def audit(self, since: str = "", action: str = "", limit: int = 1000) -> list[AuditEvent]:
        """Audit events after ``since`` (ISO time), oldest first, model events and label events
        (``correction``, ``missed_finding``, ``adjudication``) merged; optionally one action."""
        label_kinds = {
            "correction": "correction",
            "missed_finding": "missed",
            "adjudication": "adjudication",
            "retraction": "retraction",
        }
        action_of = {kind: name for name, kind in label_kinds.items()}
        events: list[AuditEvent] = []
        if action not in label_kinds:  # the filter is in the query, before its LIMIT
            where, params = ("AND action = ? ", (action,)) if action else ("", ())
            model_rows = self._query(
                "SELECT event_id, created, actor, action, target, detail FROM audit_events "
                f"WHERE created > ? {where}ORDER BY created LIMIT ?",
                (since, *params, limit),
            )
            events += [
                AuditEvent(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in model_rows
            ]
        if not action or action in label_kinds:
            where, params = ("AND kind = ? ", (label_kinds[action],)) if action else ("", ())
            label_rows = self._query(
                "SELECT event_id, created, reviewer, kind, candidate_id, label_before, label_after, "
                f"conflict FROM label_events WHERE created > ? {where}ORDER BY created, seq LIMIT ?",
                (since, *params, limit),
            )
            events += [
                AuditEvent(
                    r[0],
                    r[1],
                    r[2],
                    action_of.get(r[3], r[3]),
                    r[4],
                    {"label_before": r[5], "label_after": r[6], "conflict": bool(r[7])},
                )
                for r in label_rows
            ]
        return sorted(events, key=lambda e: e.created)[:limit]

    # ------------------------------------------------------------------ pins and replicas

    def get_pin(self, model: str) -> tuple[bool, int | None]:
        """(whether the store holds the model's pin state, the pinned version or None)."""
        rows = self._query("SELECT version FROM model_pins WHERE model = ?", (model,))
        if not rows:
            return False, None
        return True, None if rows[0][0] is None else int(rows[0][0])

    def set_pin(self, model: str, version: int | None, actor: str, reason: str) -> int | None:
        """Pin ``version`` (None: follow the newest). Returns the version pinned before."""

        def body(cur: Any) -> int | None:
            cur.execute(
                self._sql(
                    "SELECT version FROM model_pins WHERE model = ?" + self.dialect.for_update
                ),
                (model,),
            )
            row = cur.fetchone()
            cur.execute(
                self._sql(
                    "INSERT INTO model_pins VALUES (?, ?, ?, ?, ?) ON CONFLICT (model) DO UPDATE "
                    "SET version = excluded.version, actor = excluded.actor, "
                    "reason = excluded.reason, updated = excluded.updated"
                ),
                (model, version, actor, reason, self._now(cur)),
            )
            return None if row is None or row[0] is None else int(row[0])

        return self._run(body)

    def heartbeat(
        self,
        replica_id: str,
        model: str,
        version: int | None,
        precision: str,
        host: str,
        started: str,
    ) -> None:
        """Say what this server process serves now (``replicas``; seen by the store's clock)."""

        def body(cur: Any) -> None:
            cur.execute(
                self._sql(
                    "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (replica_id) "
                    "DO UPDATE SET model = excluded.model, version = excluded.version, "
                    "precision = excluded.precision, seen = excluded.seen"
                ),
                (replica_id, model, version, precision, host, started, self._now(cur)),
            )

        self._run(body)

    def forget_replica(self, replica_id: str) -> None:
        self._run(
            lambda cur: cur.execute(
                self._sql("DELETE FROM replicas WHERE replica_id = ?"), (replica_id,)
            )
        )

    def replicas(self, model: str, within_s: float) -> list[tuple[str, int | None, str, str]]:
        """Server processes of ``model`` seen within ``within_s`` seconds (by the store's
        clock): (replica id, version, host, last seen), newest first."""

        def body(cur: Any) -> list[tuple[str, int | None, str, str]]:
            cutoff = (
                datetime.fromisoformat(self._now(cur)) - timedelta(seconds=within_s)
            ).isoformat()
            cur.execute(
                self._sql(
                    "SELECT replica_id, version, host, seen FROM replicas "
                    "WHERE model = ? AND seen >= ? ORDER BY seen DESC"
                ),
                (model, cutoff),
            )
            return [(r[0], None if r[1] is None else int(r[1]), r[2], r[3]) for r in cur.fetchall()]

        return self._run(body)

    # ------------------------------------------------------------------ queue, export, metrics

    def unlabeled(self) -> list[QueueEntry]:
        """Every classified candidate without a label, with its patch predictions."""
        rows = self._query(
            "SELECT c.candidate_id, c.request_id, c.x, c.y, c.width, c.height, c.probability, "
            "c.model_version, i.frame_index, i.source_id, c.patch_probs, c.patch_shape, "
            "i.sha256, c.recipe, i.study_uid "
            "FROM candidates c JOIN images i ON i.request_id = c.request_id "
            "WHERE c.label IS NULL AND c.origin = 'model' AND c.patch_probs IS NOT NULL "
            "ORDER BY c.created, c.candidate_id"
        )
        return [_queue_entry(r) for r in rows]

    def claim(
        self, candidate_ids: Sequence[str], reviewer: str, seconds: float, limit: int
    ) -> list[str]:
        """Claim for ``reviewer``, in the given order, the first ``limit`` of these candidates
        that are unlabeled and not claimed by another reviewer (or whose claim has ended), so
        that two reviewers asking at once never get the same item. PostgreSQL: one statement
        that locks the rows it takes and skips rows another transaction holds (``FOR UPDATE
        SKIP LOCKED``: a reviewer never waits on another's claim); SQLite, whose writers are
        serialised: one conditional update per candidate. Returns the ids claimed, in order."""
        ids = list(candidate_ids)

        def body(cur: Any) -> list[str]:
            now_ = self._now(cur)
            until = (datetime.fromisoformat(now_) + timedelta(seconds=seconds)).isoformat()
            free = (
                "label IS NULL AND (claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?)"
            )
            if self.dialect is POSTGRES:
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET claimed_by = ?, claimed_until = ? "
                        "WHERE candidate_id IN (SELECT candidate_id FROM candidates "
                        f"WHERE candidate_id = ANY(?) AND {free} "
                        "ORDER BY array_position(?, candidate_id) LIMIT ? "
                        "FOR UPDATE SKIP LOCKED) RETURNING candidate_id"
                    ),
                    (reviewer, until, ids, now_, reviewer, ids, limit),
                )
                got = {r[0] for r in cur.fetchall()}
                return [cid for cid in ids if cid in got]
            taken: list[str] = []
            for cid in ids:
                if len(taken) >= limit:
                    break
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET claimed_by = ?, claimed_until = ? "
                        f"WHERE candidate_id = ? AND {free}"
                    ),
                    (reviewer, until, cid, now_, reviewer),
                )
                if cur.rowcount == 1:
                    taken.append(cid)
            return taken

        return self._run(body)

    def release_claims(self, reviewer: str, candidate_ids: Sequence[str] = ()) -> int:
        """End ``reviewer``'s claims on these candidates (a skip), or on every candidate when
        none are given (a sign-out); another reviewer's claims are left alone. Returns how
        many ended."""
        ids = list(candidate_ids)

        def body(cur: Any) -> int:
            released = 0
            where = "claimed_by = ?" + (" AND candidate_id = ?" if ids else "")
            for cid in ids or [""]:
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET claimed_by = NULL, claimed_until = NULL "
                        f"WHERE {where}"
                    ),
                    (reviewer, cid) if cid else (reviewer,),
                )
                released += int(cur.rowcount)
            return released

        return self._run(body)

    def random_unlabeled(
        self, seed: int, limit: int, unclaimed_for: str | None = None
    ) -> list[tuple[QueueEntry, float]]:
        """``limit`` unlabeled candidates in a seeded random order read off an index (the
        candidates' fixed random keys from a seed's starting point, wrapping round): a random
        sample without reading the pool. Score: the key."""
        start = random_key(f"seed:{seed}")
        rows: list[tuple[Any, ...]] = []
        for where in ("c.random_key >= ?", "c.random_key < ?"):

            def body(cur: Any, where: str = where, wanted: int = limit - len(rows)) -> list[Any]:
                claims, claim_params = "", tuple[Any, ...]()
                if unclaimed_for is not None:
                    claims = (
                        "AND (c.claimed_until IS NULL OR c.claimed_until < ? OR c.claimed_by = ?) "
                    )
                    claim_params = (self._now(cur), unclaimed_for)
                cur.execute(
                    self._sql(
                        "SELECT c.candidate_id, c.request_id, c.x, c.y, c.width, c.height, "
                        "c.probability, c.model_version, i.frame_index, i.source_id, "
                        "c.patch_probs, c.patch_shape, i.sha256, c.recipe, i.study_uid, "
                        "c.random_key FROM candidates c JOIN images i ON i.request_id = "
                        "c.request_id WHERE c.label IS NULL AND c.origin = 'model' AND "
                        f"c.patch_probs IS NOT NULL AND {where} {claims}"
                        "ORDER BY c.random_key, c.candidate_id LIMIT ?"
                    ),
                    (start, *claim_params, wanted),
                )
                return list(cur.fetchall())

            rows += self._run(body)
            if len(rows) >= limit:
                break
        return [(_queue_entry(r), float(r[15])) for r in rows]

    def ranked_unlabeled(
        self, spec: Variant, limit: int, unclaimed_for: str | None = None
    ) -> list[tuple[QueueEntry, float]]:
        """The top ``limit`` unlabeled candidates by an AIFT variant, ranked in SQL from the
        stored terms (``lambda1 * E + lambda2 * D`` over all patches, or over the
        alpha-majority ones), best first, ties by candidate id. A named variant reads its own
        index, so the cost does not grow with the pool; other weights scan the stored numbers
        (never the patch predictions).

        Raises:
            ValueError: ``spec.alpha`` is neither 1 nor the paper's (no stored terms for it).
        """
        if spec.alpha == 1.0:
            e, d = "c.entropy", "c.diversity"
        elif spec.alpha == PAPER_ALPHA:
            e, d = "c.entropy_alpha", "c.diversity_alpha"
        else:
            raise ValueError(f"no stored ranking terms for alpha {spec.alpha}")
        named = {(1.0, 0.0): e, (0.0, 1.0): d, (1.0, 1.0): f"{e} + {d}"}
        expression = named.get((spec.lambda1, spec.lambda2))
        params: tuple[Any, ...] = ()
        hint = ""
        if expression is None:
            expression, params = f"? * {e} + ? * {d}", (spec.lambda1, spec.lambda2)
        elif self.dialect is SQLITE:
            # without ANALYZE statistics SQLite prefers the (label, origin) index and sorts
            # every unlabeled row; the variant's own index answers with the LIMIT alone
            index = {"c.entropy": "entropy", "c.diversity": "diversity"}.get(expression)
            index = (
                index
                or {
                    "c.entropy_alpha": "entropy_alpha",
                    "c.diversity_alpha": "diversity_alpha",
                    "c.entropy + c.diversity": "entropy_diversity",
                    "c.entropy_alpha + c.diversity_alpha": "entropy_diversity_alpha",
                }[expression]
            )
            hint = f" INDEXED BY queue_{index}"

        def body(cur: Any) -> list[tuple[Any, ...]]:
            claims, claim_params = "", tuple[Any, ...]()
            if unclaimed_for is not None:  # others' live claims are not offered
                claims = "AND (c.claimed_until IS NULL OR c.claimed_until < ? OR c.claimed_by = ?) "
                claim_params = (self._now(cur), unclaimed_for)
            cur.execute(
                self._sql(
                    "SELECT c.candidate_id, c.request_id, c.x, c.y, c.width, c.height, "
                    "c.probability, c.model_version, i.frame_index, i.source_id, c.patch_probs, "
                    f"c.patch_shape, i.sha256, c.recipe, i.study_uid, ({expression}) AS ranking "
                    f"FROM candidates c{hint} JOIN images i ON i.request_id = c.request_id "
                    "WHERE c.label IS NULL AND c.origin = 'model' AND c.patch_probs IS NOT NULL "
                    f"{claims}ORDER BY ({expression}) DESC, c.candidate_id LIMIT ?"
                ),
                (*params, *claim_params, *params, limit),
            )
            return list(cur.fetchall())

        rows = self._run(body)
        return [(_queue_entry(r), float(r[15])) for r in rows]

    def update_predictions(
        self, version: str, rows: Sequence[tuple[str, np.ndarray, float, float, float, float]]
    ) -> None:
        """Store a re-scoring of unlabeled candidates by model ``version``.

        ``rows``: (candidate_id, patch_probs, probability, entropy, diversity, score). The
        candidate's ``model_version`` (the model that served it) is kept for live precision.
        """

        all_terms = _ranking_terms([r[1] for r in rows], [r[3] for r in rows], [r[4] for r in rows])

        def body(cur: Any) -> None:
            for (cid, probs, probability, _, _, score), terms in zip(rows, all_terms, strict=True):
                blob, shape = _probs_blob(probs)
                entropy, diversity, entropy_alpha, diversity_alpha = terms
                cur.execute(
                    self._sql(
                        "UPDATE candidates SET patch_probs = ?, patch_shape = ?, probability = ?, "
                        "entropy = ?, diversity = ?, score = ?, scored_version = ?, "
                        "entropy_alpha = ?, diversity_alpha = ? "
                        "WHERE candidate_id = ? AND label IS NULL"
                    ),
                    (
                        blob,
                        shape,
                        probability,
                        entropy,
                        diversity,
                        score,
                        version,
                        entropy_alpha,
                        diversity_alpha,
                        cid,
                    ),
                )

        self._run(body)

    def scored_versions(self) -> dict[str, int]:
        """How many unlabeled candidates each model version last scored."""
        rows = self._query(
            "SELECT scored_version, COUNT(*) FROM candidates WHERE label IS NULL AND origin = 'model' "
            "GROUP BY scored_version"
        )
        return {str(v): int(n) for v, n in rows}

    def count_unlabeled(self) -> int:
        rows = self._query(
            "SELECT COUNT(*) FROM candidates WHERE label IS NULL AND origin = 'model'"
        )
        return int(rows[0][0])

    def labeled(self, since: str = "") -> Iterator[LabeledCandidate]:
        """Labeled candidates with their image references, in label order."""
        rows = self._query(
            f"SELECT {', '.join('c.' + n.strip() for n in _CANDIDATE_COLUMNS.split(','))}, "
            f"{', '.join('i.' + n.strip() for n in _IMAGE_COLUMNS.split(','))}, "
            "c.label, c.conflict, c.label_event_id, c.labeled_at, c.events, c.adjudicated "
            "FROM candidates c JOIN images i ON i.request_id = c.request_id "
            "WHERE c.label IS NOT NULL AND c.labeled_at > ? ORDER BY c.labeled_at, c.candidate_id",
            (since,),
        )
        for r in rows:
            yield LabeledCandidate(
                self._candidate(r[:17]),
                ImageRecord(*r[17:32]),
                int(r[32]),
                bool(r[33]),
                r[34],
                r[35],
                int(r[36]),
                bool(r[37]),
            )

    def precision_by_version(self) -> dict[str, tuple[int, int]]:
        """Per served model version: (confirmed, dismissed) among its reviewed candidates."""
        rows = self._query(
            "SELECT model_version, SUM(CASE WHEN label = 1 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN label = 0 THEN 1 ELSE 0 END) FROM candidates "
            "WHERE origin = 'model' AND label IS NOT NULL GROUP BY model_version"
        )
        return {str(v): (int(tp), int(fp)) for v, tp, fp in rows}

    # ------------------------------------------------------------------ retention

    def unlabeled_images(self) -> list[tuple[str, str, int, str]]:
        """(request_id, sha256, size_bytes, created) of images without any label, oldest first."""
        rows = self._query(
            "SELECT request_id, sha256, size_bytes, created FROM images WHERE labeled = 0 ORDER BY created"
        )
        return [(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def delete_unlabeled_image(self, request_id: str) -> bool:
        """Forget an image that has no labels and its candidates. False if it got a label meanwhile."""

        def body(cur: Any) -> bool:
            cur.execute(
                self._sql(
                    "SELECT labeled FROM images WHERE request_id = ?" + self.dialect.for_update
                ),
                (request_id,),
            )
            row = cur.fetchone()
            if row is None or row[0]:
                return False
            cur.execute(self._sql("DELETE FROM candidates WHERE request_id = ?"), (request_id,))
            cur.execute(self._sql("DELETE FROM images WHERE request_id = ?"), (request_id,))
            return True

        return self._run(body)

    def sha_in_use(self, sha256: str) -> bool:
        return bool(self._query("SELECT 1 FROM images WHERE sha256 = ? LIMIT 1", (sha256,)))


class StorePins:
    """A model's pin kept in the label store, where every replica and the CLI read it: servers
    mount the registry read-only. A registry pinned by a file (``pinned.json``, before pins moved
    to the store) is honoured until the store holds a pin state of its own.

    While the store is unreachable the last pin read is used, kept in ``cache`` (a local file, so
    a server started during an outage follows the pin it last knew; with no cache it follows the
    newest version and says so). Pinning then fails as UNAVAILABLE.
    """

    def __init__(
        self,
        store: SqlLabelStore,
        model: str,
        legacy: Callable[[], int | None],
        cache: Path | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.legacy = legacy
        self.cache = cache
        self._cached: tuple[int | None] | tuple[()] = ()
        """The version last written to ``cache`` by this process (empty: none yet)."""

    def _remember(self, version: int | None) -> None:
        """Keep the pin in the cache file when it changed (servers read it every poll)."""
        if self.cache is not None and (not self._cached or self._cached[0] != version):
            write_atomic(self.cache, json.dumps({"version": version}).encode())
            self._cached = (version,)

    def pinned(self) -> int | None:
        try:
            found, version = self.store.get_pin(self.model)
        except StoreUnavailable:
            if self.cache is not None and self.cache.exists():
                try:
                    return json.loads(self.cache.read_text())["version"]
                except (ValueError, KeyError):
                    pass
            log.warning("label store unreachable and no pin known here: following the newest")
            return None
        version = version if found else self.legacy()
        self._remember(version)
        return version

    def pin(self, version: int, actor: str, reason: str) -> None:
        self.store.set_pin(self.model, version, actor, reason)
        self._remember(version)

    def unpin(self, actor: str = "") -> bool:
        was = self.store.set_pin(self.model, None, actor, "unpin")
        self._remember(None)
        return was is not None


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

    def __init__(self, store: SqlLabelStore, name: str, holder: str) -> None:
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
                f"the label store is unreachable ({_first(exc)}); the {self.name} lease "
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
            except Exception:
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


def _first(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg's run over several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_store(
    url: str, pool_size: int = 8, timeout_s: float = 3.0, require: bool = True
) -> SqlLabelStore:
    """Open (and migrate) the store at ``sqlite:///path`` or ``postgresql://...``.

    ``pool_size``: most PostgreSQL connections of this process; ``timeout_s``: longest wait for
    one before the store counts as unreachable. ``require=False`` (the server): open even while
    the database is down, and migrate on first contact.

    Raises:
        StoreUnavailable: ``require`` and PostgreSQL cannot be reached.
    """
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        store = SqlLabelStore(SqliteConnection(conn), SQLITE, (sqlite3.IntegrityError,))
        store.path = path
        return store
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        store = SqlLabelStore(
            PostgresPool(url, pool_size, timeout_s),
            POSTGRES,
            (psycopg.errors.IntegrityError,),
            outage=_postgres_outage,
            migrate=False,
        )
        store.url = url
        store.timeout_s = timeout_s
        try:
            store.migrate()
        except StoreUnavailable:
            if require:
                store.close()
                raise
            log.error("label store unreachable at start; classifications are spooled until it is")
        return store
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path or postgresql://...")
