"""Durable label store: candidates, archived-image references and append-only label events.

One interface (:class:`~cad.labels.store.sql.SqlLabelStore`), two backends chosen
by URL: ``sqlite:///path/labels.sqlite3`` (embedded default, WAL) and
``postgresql://...`` (several server replicas sharing labels).
"""

from cad.labels.store.records import (
    AuditEvent,
    CandidateRecord,
    ImageRecord,
    LabeledCandidate,
    LabelEvent,
    QueueEntry,
    Receipt,
)
from cad.labels.store.sql import SqlLabelStore, open_store

__all__ = [
    "AuditEvent",
    "CandidateRecord",
    "ImageRecord",
    "LabelEvent",
    "LabeledCandidate",
    "QueueEntry",
    "Receipt",
    "SqlLabelStore",
    "open_store",
]
