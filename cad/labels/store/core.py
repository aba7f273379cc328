"""The label store's plumbing, shared by all its operations: one transaction per operation, run once
more on a fresh connection when the first was lost, the store's outage state, migrations."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from cad.errors import (
    AlreadyExists,
    StoreUnavailable,
)
from cad.labels.store.connections import (
    PG_NOW,
    POSTGRES,
    SQLITE,
    Connections,
    Dialect,
    first_message_line,
    now,
)
from cad.labels.store.migrations import MIGRATIONS
from cad.labels.store.records import CandidateRecord
from cad.labels.store.rows import (
    CANDIDATE_INSERT,
    Terms,
    in_audit_slice,
    probs_array,
    probs_blob,
    random_key,
    ranking_terms,
)

log = logging.getLogger(__name__)


T = TypeVar("T")


class IdempotencyConflict(AlreadyExists):
    """An idempotency key was reused with a different request body (ALREADY_EXISTS)."""


class StoreCore:
    """The store's plumbing: transactions, the retry on a lost connection, outage state, the
    database clock, migrations. The store's operations are built on it (:class:`SqlLabelStore`)."""

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
        self.audit_fraction = 0.0
        """The share of the model's candidates that join the audit slice when recorded (the
        server's ``CAD_AUDIT_FRACTION``; 0: none)."""
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
    def _tx(self, relaxed: bool = False, read: bool = False) -> Iterator[Any]:
        """One transaction on one connection, one attempt; ``relaxed``: its commit does not wait
        for the disk (see Dialect); ``read``: it only reads (no write lock; see Dialect)."""
        d = self.dialect
        with self._connections.connection() as conn:
            cur = conn.cursor()
            if relaxed and d.relaxed_before:
                cur.execute(d.relaxed_before)
            try:
                cur.execute(d.read_begin if read else d.begin)
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

    def _run(self, body: Callable[[Any], T], relaxed: bool = False, read: bool = False) -> T:
        """Run ``body(cursor)`` in one transaction (``read``: one that only reads); on a lost
        connection once more on a fresh one (every operation of this store is safe to repeat),
        then StoreUnavailable."""
        if not self._migrated:
            self.migrate()
        return self._attempt(body, relaxed, read)

    def run(self, body: Callable[[Any], T]) -> T:
        """Run ``body(cursor)`` in one transaction as this store's own operations are run (once
        more on a lost connection, else StoreUnavailable); for tables other modules keep in the
        store (the review UI's sign-ins). ``body`` must be safe to repeat; write its SQL with
        ``?`` placeholders through :meth:`sql`."""
        return self._run(body)

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in this store's dialect."""
        return self._sql(text)

    def _attempt(self, body: Callable[[Any], T], relaxed: bool = False, read: bool = False) -> T:
        for attempt in (1, 2):
            try:
                with self._tx(relaxed, read) as cur:
                    result = body(cur)
            except Exception as exc:
                kind = self._outage(exc)
                if not kind:
                    raise
                if attempt == 1 and kind == "lost":
                    log.warning(
                        "label store: %s; retrying on a fresh connection", first_message_line(exc)
                    )
                    continue
                self._mark_down(exc)
                raise StoreUnavailable(
                    f"the label store is unreachable ({first_message_line(exc)}); nothing was stored, "
                    "retry later"
                ) from None
            self._mark_up()
            return result
        raise AssertionError("unreachable")

    def _mark_down(self, exc: BaseException) -> None:
        if self.available:
            log.error("label store unreachable: %s", first_message_line(exc))
            self.unavailable_since = time.monotonic()
        self.available = False
        self.last_error = first_message_line(exc)

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
        cur.execute(PG_NOW)
        return str(cur.fetchone()[0])

    def db_now(self) -> str:
        """The store's clock now (ISO 8601, UTC, microseconds)."""
        return self._run(self._now)

    def _query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def body(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(self._sql(text), tuple(params))
            return list(cur.fetchall())

        return self._run(body, read=True)

    def ping(self) -> bool:
        """Reach the store now (migrating it if it was unreachable at start). False: down."""
        try:
            self._query("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        self._connections.close()

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
            terms = ranking_terms(
                [probs_array(r[1], r[2]) for r in rows], [r[3] for r in rows], [r[4] for r in rows]
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

    def _insert_candidate(
        self, cur: Any, c: CandidateRecord, created: str, terms: Terms | None = None
    ) -> None:
        """``terms``: the candidate's ranking terms (:func:`ranking_terms`); computed here when
        not given."""
        blob, shape = probs_blob(c.patch_probs)
        entropy, diversity, entropy_alpha, diversity_alpha = (
            terms or ranking_terms([c.patch_probs], [c.entropy], [c.diversity])[0]
        )
        cur.execute(
            self._sql(
                f"INSERT INTO candidates ({CANDIDATE_INSERT}) VALUES ({', '.join('?' * 23)})"
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
                c.geometry,
                c.model_version,
                entropy_alpha,
                diversity_alpha,
                random_key(c.candidate_id),
                int(c.origin == "model" and in_audit_slice(c.candidate_id, self.audit_fraction)),
            ),
        )


class Repository:
    """One area's operations (label events, the queue, the fleet's pins and audit, ...) over the
    store's one database object: the transactions, the retry on a lost connection, the outage
    state and the clock are the database's (:class:`StoreCore`); a repository holds no state of
    its own, so any number of them share one pool."""

    def __init__(self, db: StoreCore) -> None:
        self.db = db
        self.dialect = db.dialect
        self._integrity_errors = db._integrity_errors

    def _sql(self, text: str) -> str:
        return self.db._sql(text)

    def _run(self, body: Callable[[Any], T], relaxed: bool = False, read: bool = False) -> T:
        return self.db._run(body, relaxed, read)

    def _query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db._query(text, params)

    def _now(self, cur: Any) -> str:
        return self.db._now(cur)

    def _hint(self, index: str) -> str:
        """SQLite: read this index (without ANALYZE statistics it prefers the (label, origin)
        index and sorts every unlabeled row, a cost that grows with the pool); PostgreSQL plans
        from its statistics."""
        return f" INDEXED BY {index}" if self.dialect is SQLITE else ""
