"""How records become rows and rows records: the column lists every query reads, patch predictions
as blobs, and the ranking terms stored beside them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cad.aift.scoring import (
    as_class_probs,
    majority_terms,
    total_diversity,
    total_entropy,
)
from cad.labels.store.records import (
    CandidateRecord,
    QueueEntry,
)

log = logging.getLogger(__name__)


IMAGE_COLUMNS = (
    "request_id, sha256, size_bytes, height, width, frame_index, source_kind, source_id, "
    "study_uid, series_uid, sop_instance_uid, modality, recipe, model_version, created"
)
IMAGE_WIDTH = len(IMAGE_COLUMNS.split(","))
CANDIDATE_COLUMNS = (
    "candidate_id, request_id, client_id, x, y, width, height, recipe, model_version, "
    "probability, entropy, diversity, score, patch_probs, patch_shape, origin, created, geometry"
)
_CANDIDATE_FIELDS = tuple(name.strip() for name in CANDIDATE_COLUMNS.split(","))
CANDIDATE_WIDTH = len(_CANDIDATE_FIELDS)
"""How many columns :func:`candidate_record` reads: a query's further columns start here."""
CANDIDATE_INSERT = (
    CANDIDATE_COLUMNS + ", scored_version, entropy_alpha, diversity_alpha, random_key, audit_slice"
)
EVENT_COLUMNS = (
    "event_id, candidate_id, seq, kind, label_before, label_after, reviewer, note, "
    "idempotency_key, body_sha256, conflict, created"
)


def probs_blob(probs: np.ndarray | None) -> tuple[bytes | None, str | None]:
    if probs is None:
        return None, None
    arr = np.ascontiguousarray(probs, dtype="<f4")
    return arr.tobytes(), json.dumps(list(arr.shape))


def random_key(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a candidate id (random queue order)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big") / float(1 << 56)


def in_audit_slice(candidate_id: str, fraction: float) -> bool:
    """Whether a model candidate joins the audit slice: a pseudo-random number of its id of its
    own (independent of the queue's random key and of every score) below ``fraction``."""
    return fraction > 0 and random_key(f"audit-slice:{candidate_id}") < fraction


Terms = tuple[float | None, float | None, float | None, float | None]


def ranking_terms(
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


QUEUE_ENTRY_COLUMNS = (
    "c.candidate_id, c.request_id, c.x, c.y, c.width, c.height, c.probability, c.model_version, "
    "i.frame_index, i.source_id, c.patch_probs, c.patch_shape, i.sha256, c.recipe, i.study_uid"
)
"""What every queue query reads (``candidates c`` joined to ``images i``), in the order
:func:`queue_entry` takes them; a query may add columns after them."""


def queue_entry(r: Sequence[Any]) -> QueueEntry:
    """A queue entry from a row of :data:`QUEUE_ENTRY_COLUMNS`."""
    probs = probs_array(r[10], r[11])
    assert probs is not None  # noqa: S101  queue queries read candidates with predictions only
    return QueueEntry(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], probs, r[12], r[13], r[14]
    )


def probs_array(blob: Any, shape: str | None) -> np.ndarray | None:
    if blob is None or shape is None:
        return None
    return np.frombuffer(bytes(blob), dtype="<f4").reshape(json.loads(shape))


def candidate_record(row: Sequence[Any]) -> CandidateRecord:
    values = list(row)
    probs = probs_array(values[13], values[14])
    fields = dict(zip(_CANDIDATE_FIELDS[:13], values[:13], strict=True))
    return CandidateRecord(
        **fields,
        patch_probs=probs,
        origin=values[15],
        created=values[16],
        geometry=values[17] or "",
    )
