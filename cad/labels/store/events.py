"""Label events: corrections, missed findings, retractions and adjudications, append-only, each
keyed by an idempotency key; disagreements and the notices that tell reviewers of them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from cad.errors import (
    NotDisputed,
    NotFound,
    PermissionDenied,
    Settled,
)
from cad.labels.store.core import IdempotencyConflict, Repository
from cad.labels.store.records import (
    CandidateRecord,
    Conflict,
    ConflictNotice,
    LabelEvent,
    Receipt,
)
from cad.labels.store.rows import CANDIDATE_COLUMNS, EVENT_COLUMNS, candidate_record
from cad.validation import quote

log = logging.getLogger(__name__)


class LabelEvents(Repository):
    """The label events (``store.labels``): corrections, missed findings, retractions and
    adjudications, and the disagreements between them."""

    # ------------------------------------------------------------------ label events

    def _lock(self, cur: Any, candidate_id: str, columns: str) -> tuple[Any, ...]:
        """``columns`` of a candidate's row, locked for the rest of the transaction (FOR UPDATE on
        PostgreSQL; SQLite's write transaction holds the whole database).

        Raises:
            NotFound: no such candidate.
        """
        cur.execute(
            self._sql(
                f"SELECT {columns} FROM candidates WHERE candidate_id = ?" + self.dialect.for_update
            ),
            (candidate_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"unknown candidate_id {quote(candidate_id)}")
        return tuple(row)

    def _replay(self, cur: Any, key: str, body_sha256: str) -> Receipt | None:
        cur.execute(
            self._sql(f"SELECT {EVENT_COLUMNS} FROM label_events WHERE idempotency_key = ?"),
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
            before, last_reviewer, events, old_conflict, request_id, adjudicated = self._lock(
                cur,
                candidate_id,
                "label, label_reviewer, events, conflict, request_id, adjudicated",
            )
            if adjudicated:
                raise Settled(
                    f"candidate {quote(candidate_id)} was settled by adjudication; its label is "
                    "final"
                )
            conflict = before is not None and before != label and last_reviewer != reviewer
            event = self._append_event(
                cur,
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
            )
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
            NotFound: no such event. PermissionDenied: another reviewer's event. Settled:
            someone labeled the candidate since, it was adjudicated, or the event is the
            adjudication itself (final).
        """

        def write(cur: Any) -> LabelEvent:
            cur.execute(
                self._sql(
                    "SELECT candidate_id, reviewer, label_before, conflict, kind FROM label_events "
                    "WHERE event_id = ?"
                ),
                (event_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"unknown event_id {quote(event_id)}")
            candidate_id, author, label_before, made_conflict, kind = row
            _may_retract(event_id, candidate_id, author, kind, reviewer)
            latest, events, adjudicated, label = self._lock(
                cur, candidate_id, "label_event_id, events, adjudicated, label"
            )
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
            event = self._append_event(
                cur,
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
            )
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
            f"SELECT {CANDIDATE_COLUMNS} FROM candidates WHERE conflict = 1 AND adjudicated = 0 "
            "ORDER BY labeled_at, candidate_id LIMIT ?",
            (limit,),
        )
        return [Conflict(candidate_record(r), self.events(r[0])) for r in rows]

    def adjudicate(
        self, candidate_id: str, label: int, adjudicator: str, note: str, key: str, body_sha256: str
    ) -> Receipt:
        """The final verdict on a disputed candidate, by a reviewer who gave none on it.

        Raises:
            NotFound: no such candidate. InvalidInput: nothing to settle, or the adjudicator
            took part. Settled: it was settled already.
        """

        def write(cur: Any) -> LabelEvent:
            before, events, conflict, adjudicated = self._lock(
                cur, candidate_id, "label, events, conflict, adjudicated"
            )
            if adjudicated:
                raise Settled(f"candidate {quote(candidate_id)} was settled already")
            if not conflict:
                raise NotDisputed(
                    f"candidate {quote(candidate_id)} has no disagreement to settle (its reviewers "
                    "agree, or one has reviewed it)"
                )
            cur.execute(
                self._sql("SELECT DISTINCT reviewer FROM label_events WHERE candidate_id = ?"),
                (candidate_id,),
            )
            if adjudicator in {r[0] for r in cur.fetchall()}:
                raise PermissionDenied(
                    f"{adjudicator} gave a verdict on {quote(candidate_id)}: a reviewer who "
                    "gave none settles it"
                )
            event = self._append_event(
                cur,
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
            )
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
            created = self._now(cur)
            self.db._insert_candidate(cur, candidate, created)
            event = self._append_event(
                cur,
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
                created,
            )
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

    def _append_event(
        self,
        cur: Any,
        candidate_id: str,
        seq: int,
        kind: str,
        label_before: int | None,
        label_after: int,
        reviewer: str,
        note: str,
        key: str,
        body_sha256: str,
        conflict: bool,
        created: str | None = None,
    ) -> LabelEvent:
        """A new event (its id made here, its time the database's now unless given) appended to
        the log; the caller updates the candidate's row in the same transaction."""
        e = LabelEvent(
            f"ev-{uuid.uuid4().hex}",
            candidate_id,
            seq,
            kind,
            label_before,
            label_after,
            reviewer,
            note,
            key,
            body_sha256,
            conflict,
            created or self._now(cur),
        )
        cur.execute(
            self._sql(f"INSERT INTO label_events ({EVENT_COLUMNS}) VALUES ({', '.join('?' * 12)})"),
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
        return e

    def events(self, candidate_id: str | None = None) -> list[LabelEvent]:
        """Label events, oldest first (all, or one candidate's)."""
        where, params = ("WHERE candidate_id = ?", (candidate_id,)) if candidate_id else ("", ())
        rows = self._query(
            f"SELECT {EVENT_COLUMNS} FROM label_events {where} ORDER BY created, seq", params
        )
        return [self._event(r) for r in rows]


def _may_retract(event_id: str, candidate_id: str, author: str, kind: str, reviewer: str) -> None:
    """Only one's own event, and never an adjudication (it is final)."""
    if author != reviewer:
        raise PermissionDenied(
            f"event {quote(event_id)} is {author}'s, not {reviewer}'s: a reviewer undoes only "
            "their own"
        )
    if kind == "adjudication":
        raise Settled(
            f"event {quote(event_id)} is an adjudication: it settled candidate "
            f"{quote(candidate_id)} for good and cannot be undone"
        )
