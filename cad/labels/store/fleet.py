"""The fleet's shared state in the store: the model pin every replica follows, the audit trail
of what was done to models and labels, and the replicas' heartbeats (``store.fleet``)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from cad.labels.store.core import Repository
from cad.labels.store.records import AuditEvent


class FleetRows(Repository):
    """Pins, the audit trail and replica heartbeats."""

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
