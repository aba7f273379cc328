"""Plain records the store reads and writes (no SQL, no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ImageRecord:
    """One classified image (one per request), archived by content hash."""

    request_id: str
    sha256: str
    size_bytes: int
    height: int
    width: int
    frame_index: int
    source_kind: str
    source_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    modality: str = ""
    recipe: str = ""
    model_version: str = ""
    created: str = ""


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate: where it is, what the model said, and its patch predictions."""

    candidate_id: str
    request_id: str
    client_id: str
    x: float
    y: float
    width: float
    height: float
    recipe: str
    model_version: str
    probability: float | None
    entropy: float | None
    diversity: float | None
    score: float | None
    patch_probs: npt.NDArray[np.float32] | None
    origin: str = "model"
    created: str = ""
    geometry: str = ""
    """A candidate that is not a box on its image: where it is, as JSON (a PE candidate's point,
    vessel axis and voxel block: :class:`cad.aift.vessel.PeGeometry`); empty for boxes."""


@dataclass(frozen=True)
class ImageCandidate:
    """A candidate on an image, with its current label (for a reviewer's display)."""

    candidate: CandidateRecord
    label: int | None
    labeled_by: str
    conflict: bool


@dataclass(frozen=True)
class LabelEvent:
    """One correction, append-only: who, when, the label before and after."""

    event_id: str
    candidate_id: str
    seq: int
    kind: str
    """``correction``, ``missed``, ``adjudication`` or ``retraction``."""
    label_before: int | None
    label_after: int
    """1 finding, 0 no finding; -1 (a retraction only): back to unlabeled."""
    reviewer: str
    note: str
    idempotency_key: str
    body_sha256: str
    conflict: bool
    created: str


@dataclass(frozen=True)
class Receipt:
    event: LabelEvent
    replayed: bool


@dataclass(frozen=True)
class CandidatePlace:
    """Which candidate, on which frame, where: what every reading of the pool starts with."""

    candidate_id: str
    request_id: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class QueueEntry(CandidatePlace):
    probability: float
    model_version: str
    frame_index: int
    source_id: str
    patch_probs: npt.NDArray[np.float32]
    image_sha256: str = ""
    recipe: str = ""
    study_uid: str = ""


@dataclass(frozen=True)
class LabeledCandidate:
    candidate: CandidateRecord
    image: ImageRecord
    label: int
    conflict: bool
    last_event_id: str
    labeled_at: str
    events: int
    adjudicated: bool = False
    """The label is an adjudicator's final verdict on a disagreement."""
    audit_slice: bool = False
    """The candidate is in the audit slice: served at random, measured on, never trained on."""


@dataclass(frozen=True)
class ConflictNotice:
    """A disagreement told to one of the reviewers in it."""

    candidate_id: str
    request_id: str
    your_label: int
    other_reviewer: str
    their_label: int
    created: str


@dataclass(frozen=True)
class Conflict:
    """A candidate reviewers disagree on, waiting for adjudication, with every verdict."""

    candidate: CandidateRecord
    verdicts: list[LabelEvent]


@dataclass(frozen=True)
class AuditEvent:
    """Who did what to which model version or candidate, and when."""

    event_id: str
    created: str
    actor: str
    action: str
    """publish, publish_variant, round_rejected, swap, pin, unpin, correction, missed_finding."""
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class PoolRow(CandidatePlace):
    """An unlabeled candidate as re-scoring reads it: where it is, not what was predicted."""

    recipe: str
    geometry: str
    image_sha256: str
    source_id: str
    study_uid: str
