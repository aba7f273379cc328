"""The review page's sign-ins in the label store (tables ``review_sessions`` and
``review_session_frames``, migration 9): the one place their SQL is written. The page keeps what
a row means (the session id's hash, the sealed token; ``reviewui.sessions``); this repository
keeps the rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cad.labels.store.core import StoreCore


class ReviewSessionRows:
    """Sign-in rows by the hash of their session id. Times are seconds since the epoch."""

    def __init__(self, store: StoreCore) -> None:
        self._store = store

    def _query(self, text: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def body(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(self._store.sql(text), params)
            return list(cur.fetchall()) if cur.description else []

        return self._store.run(body)

    def create(
        self, session_hash: str, reviewer: str, sealed: str, now: float, idle_s: float, max_s: float
    ) -> None:
        """A new sign-in; those that have ended (idle or too old) go in the same transaction,
        their frames with them."""

        def body(cur: Any) -> None:
            cur.execute(
                self._store.sql("DELETE FROM review_sessions WHERE seen < ? OR started < ?"),
                (now - idle_s, now - max_s),
            )
            cur.execute(
                self._store.sql(
                    "INSERT INTO review_sessions (session_hash, reviewer, sealed_token, started, "
                    "seen, reviewed) VALUES (?, ?, ?, ?, ?, 0)"
                ),
                (session_hash, reviewer, sealed, now, now),
            )

        self._store.run(body)

    def get(self, session_hash: str) -> tuple[str, str, float, float, int] | None:
        """(reviewer, sealed token, started, seen, reviewed), or None."""
        rows = self._query(
            "SELECT reviewer, sealed_token, started, seen, reviewed FROM review_sessions "
            "WHERE session_hash = ?",
            (session_hash,),
        )
        if not rows:
            return None
        reviewer, sealed, started, seen, reviewed = rows[0]
        return str(reviewer), str(sealed), float(started), float(seen), int(reviewed)

    def touch(self, session_hash: str, now: float) -> None:
        """The sign-in was seen at ``now`` (never moved back)."""
        self._query(
            "UPDATE review_sessions SET seen = ? WHERE session_hash = ? AND seen < ?",
            (now, session_hash, now),
        )

    def drop(self, session_hash: str) -> None:
        self._query("DELETE FROM review_sessions WHERE session_hash = ?", (session_hash,))

    def count(self, session_hash: str, delta: int) -> int:
        """Add ``delta`` to the labels given in this sitting (never below 0); the new count."""

        def body(cur: Any) -> int:
            cur.execute(
                self._store.sql(
                    "UPDATE review_sessions SET reviewed = CASE WHEN reviewed + ? < 0 THEN 0 "
                    "ELSE reviewed + ? END WHERE session_hash = ?"
                ),
                (delta, delta, session_hash),
            )
            cur.execute(
                self._store.sql("SELECT reviewed FROM review_sessions WHERE session_hash = ?"),
                (session_hash,),
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0

        return self._store.run(body)

    def mark_shown(self, session_hash: str, request_id: str, now: float) -> None:
        """This sign-in's page was served the frame ``request_id`` (once per pair)."""
        self._query(
            "INSERT INTO review_session_frames (session_hash, request_id, shown) "
            "SELECT session_hash, ?, ? FROM review_sessions WHERE session_hash = ? "
            "ON CONFLICT (session_hash, request_id) DO NOTHING",
            (request_id, now, session_hash),
        )

    def was_shown(self, session_hash: str, request_id: str) -> bool:
        return bool(
            self._query(
                "SELECT 1 FROM review_session_frames WHERE session_hash = ? AND request_id = ?",
                (session_hash, request_id),
            )
        )

    def sealed(self, session_hash: str) -> str | None:
        """The stored sealed token (what a reader of the database would see), or None."""
        row = self.get(session_hash)
        return row[1] if row else None
