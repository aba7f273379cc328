"""The SQL label store: one implementation, SQLite and PostgreSQL dialects.

Every write is one transaction committed before the call returns (SQLite:
WAL with ``synchronous=FULL``; PostgreSQL: its default durable commit), so an
acknowledged correction survives a crash of the server at any moment.

PostgreSQL is reached through a bounded pool that checks a connection before lending it and
connects afresh after an outage (:class:`PostgresPool`). Every operation is safe to run twice
(reads; writes keyed by an idempotency key, a request id or an event id), so one that meets a
dead connection is run once more on a fresh one; if that fails too the store is unreachable and
the caller gets :class:`~cad.errors.StoreUnavailable` (UNAVAILABLE), never an internal error.

The store by job: ``connections`` (dialects, the pool), ``core`` (the database object:
transactions, retries, migrations; the base of every repository), ``rows`` (records to rows),
and one repository per area, each reached from the store: ``events`` (``store.labels``: label
events, disagreements), ``queue`` (``store.queue``: the annotation queue, claims, export),
``pool`` (``store.pool``: the unlabeled pool as re-scoring reads and writes it), ``fleet``
(``store.fleet``: pins, the audit trail, replicas), ``sessions`` (``store.review_sessions``),
``leases`` (``store.lease(name, holder)``) and ``pins`` (a registry's pin store,
``store.pins_for``). This module keeps the classification records and retention, and opens a
store.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cad.errors import (
    NotFound,
    StoreUnavailable,
)
from cad.labels.store.connections import (
    POSTGRES,
    SQLITE,
    PostgresPool,
    SqliteConnection,
    postgres_outage,
)
from cad.labels.store.core import StoreCore
from cad.labels.store.events import LabelEvents
from cad.labels.store.fleet import FleetRows
from cad.labels.store.leases import Lease
from cad.labels.store.pins import StorePins
from cad.labels.store.pool import PoolRows
from cad.labels.store.queue import QueueQueries
from cad.labels.store.records import (
    CandidateRecord,
    ImageCandidate,
    ImageRecord,
)
from cad.labels.store.rows import (
    CANDIDATE_COLUMNS,
    CANDIDATE_WIDTH,
    IMAGE_COLUMNS,
    candidate_record,
    ranking_terms,
)
from cad.labels.store.sessions import ReviewSessionRows
from cad.validation import quote

log = logging.getLogger(__name__)


class SqlLabelStore(StoreCore):
    """Candidates, archived images and label events in SQLite or PostgreSQL.

    Thread-safe: SQLite through one connection under a lock; PostgreSQL through a pool
    (PostgreSQL row locks serialise writers across threads and replicas).

    The one database object; its areas are repositories over it: ``labels`` (label events),
    ``queue`` (the queue, claims, export), ``pool`` (re-scoring's reads and writes), ``fleet``
    (pins, audit, replicas), ``review_sessions``, and a ``lease`` by name. It keeps the
    classification records (images and their candidates) and retention itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = LabelEvents(self)
        self.queue = QueueQueries(self)
        self.fleet = FleetRows(self)
        self.pool = PoolRows(self)

    @property
    def review_sessions(self) -> ReviewSessionRows:
        """The review page's sign-in rows (:mod:`cad.labels.store.sessions`)."""
        return ReviewSessionRows(self)

    def lease(self, name: str, holder: str) -> Lease:
        """An exclusive lease on ``name`` (``with store.lease(...)``, or acquire/release)."""
        return Lease(self, name, holder)

    def pins_for(
        self, model: str, legacy: Callable[[], int | None], cache: Path | None = None
    ) -> StorePins:
        """The pin store of ``model`` in this store (:meth:`ModelRegistry.with_pins_in`)."""
        return StorePins(self, model, legacy, cache)

    # ------------------------------------------------------------------ classification records

    def record_classification(
        self, image: ImageRecord, candidates: Sequence[CandidateRecord], durable: bool = True
    ) -> None:
        """Store one classified image and its candidates in one transaction.

        ``durable=False``: a relaxed commit (survives a crash of the process; a power cut can lose
        it unless a later durable commit, such as any label, came first)."""
        given = image.created
        terms = ranking_terms(
            [c.patch_probs for c in candidates],
            [c.entropy for c in candidates],
            [c.diversity for c in candidates],
        )

        def body(cur: Any) -> None:
            created = given or self._now(cur)
            cur.execute(
                self._sql(
                    f"INSERT INTO images ({IMAGE_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
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

    def get_image(self, request_id: str) -> ImageRecord:
        rows = self._query(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE request_id = ?", (request_id,)
        )
        if not rows:
            raise NotFound(f"no archived image for request_id {quote(request_id)}")
        return ImageRecord(*rows[0])

    def get_candidate(self, candidate_id: str) -> CandidateRecord:
        rows = self._query(
            f"SELECT {CANDIDATE_COLUMNS} FROM candidates WHERE candidate_id = ?", (candidate_id,)
        )
        if not rows:
            raise NotFound(f"unknown candidate_id {quote(candidate_id)}")
        return candidate_record(rows[0])

    def candidates_of(self, request_id: str) -> list[ImageCandidate]:
        """Every candidate recorded on a request's image, model-proposed and missed, with its
        current label, in the order they were recorded."""
        rows = self._query(
            f"SELECT {CANDIDATE_COLUMNS}, label, label_reviewer, conflict FROM candidates "
            "WHERE request_id = ? ORDER BY created, candidate_id",
            (request_id,),
        )
        n = CANDIDATE_WIDTH
        return [
            ImageCandidate(candidate_record(r[:n]), r[n], r[n + 1] or "", bool(r[n + 2]))
            for r in rows
        ]

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
            cur.execute(
                self._sql(
                    "DELETE FROM queue_keys WHERE candidate_id IN "
                    "(SELECT candidate_id FROM candidates WHERE request_id = ?)"
                ),
                (request_id,),
            )
            cur.execute(self._sql("DELETE FROM candidates WHERE request_id = ?"), (request_id,))
            cur.execute(self._sql("DELETE FROM images WHERE request_id = ?"), (request_id,))
            return True

        return self._run(body)

    def sha_in_use(self, sha256: str) -> bool:
        return bool(self._query("SELECT 1 FROM images WHERE sha256 = ? LIMIT 1", (sha256,)))


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
            outage=postgres_outage,
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
