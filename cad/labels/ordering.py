"""The annotation queue's request checks and orderings: what a queue request may ask, every
candidate's score for an order scored exactly, and the audit slice's items among a ranking's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cad.aift import BASELINES, QUEUE_ORDERS, RANDOM, VARIANTS, Variant, aift_scores
from cad.aift.scoring import DEFAULT_VARIANT
from cad.errors import InvalidInput
from cad.labels.store.records import QueueEntry
from cad.validation import MAX_QUEUE_WEIGHT, finite, quote

DEFAULT_QUEUE_LIMIT = 20
MAX_QUEUE_LIMIT = 1000


def interleave(
    ranked: list[tuple[QueueEntry, float]],
    audit: list[tuple[QueueEntry, float]],
    slots: list[int],
) -> list[tuple[QueueEntry, float]]:
    """The ranking's items with the audit items at their places (those past the end of a short
    list follow it), each audit item carrying its predecessor's score (its successor's first)."""
    out: list[tuple[QueueEntry, float]] = []
    rest, extra = iter(ranked), iter(audit)
    wanted = set(slots)
    for i in range(len(ranked) + len(audit)):
        item = next(extra, None) if i in wanted else next(rest, None)
        if item is None:
            item = next(rest, None) or next(extra, None)
        if item is not None:
            out.append(item)
    scores = [s for _, s in ranked]
    audit_ids = {e.candidate_id for e, _ in audit}
    fixed: list[tuple[QueueEntry, float]] = []
    for e, score in out:
        if e.candidate_id in audit_ids and scores:
            before = [s for x, s in fixed if x.candidate_id not in audit_ids]
            score = before[-1] if before else scores[0]
        fixed.append((e, score))
    return fixed


def queue_request(
    variant: str, limit: int, omega: float, overrides: dict[str, float] | None
) -> tuple[str, Variant | str, int]:
    """A queue request checked: (variant name, what ranks it: a Variant with any overridden
    weights, or RANDOM; the item count)."""
    variant = variant or DEFAULT_VARIANT
    if variant not in QUEUE_ORDERS:
        raise InvalidInput(f"unknown variant {quote(variant)}; known: {', '.join(QUEUE_ORDERS)}")
    if variant in BASELINES and (omega or overrides):
        raise InvalidInput(f"omega, alpha and lambdas apply to the AIFT variants, not {variant}")
    finite(omega, "omega", 0.0, MAX_QUEUE_WEIGHT)
    if omega and omega < 1:
        raise InvalidInput(f"omega must be 0 (off) or >= 1, got {omega}")
    for k in ("lambda1", "lambda2"):
        if overrides and k in overrides:
            finite(overrides[k], k, 0.0, MAX_QUEUE_WEIGHT)
    limit = limit or DEFAULT_QUEUE_LIMIT
    if limit > MAX_QUEUE_LIMIT:
        raise InvalidInput(f"limit {limit} is over the maximum of {MAX_QUEUE_LIMIT}")
    if variant == RANDOM or variant in BASELINES:
        return variant, variant, limit
    stock = VARIANTS[variant]
    if not overrides:
        return variant, stock, limit
    alpha = overrides.get("alpha", stock.alpha)
    if not 0 < alpha <= 1:
        raise InvalidInput(f"alpha must be in (0, 1], got {alpha}")
    spec = replace(
        stock,
        alpha=alpha,
        lambda1=overrides.get("lambda1", stock.lambda1),
        lambda2=overrides.get("lambda2", stock.lambda2),
    )
    return variant, spec, limit


def scores_of(entries: list[QueueEntry], spec: Variant | str, seed: int) -> np.ndarray:
    """Each entry's score: its AIFT score by ``spec`` (patches of one shape scored together),
    or a seeded random number for RANDOM."""
    if spec == RANDOM:
        return np.random.default_rng(seed).random(len(entries))
    assert isinstance(spec, Variant)  # noqa: S101  an invariant, not input checking
    scores = np.zeros(len(entries))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(entries):
        by_shape.setdefault(e.patch_probs.shape, []).append(i)
    for indices in by_shape.values():
        scores[indices] = aift_scores(np.stack([entries[i].patch_probs for i in indices]), spec)
    return scores


def source_key(study_uid: str, source_id: str, request_id: str) -> str:
    """What a candidate's source is: its study, else its video or image source, else its request
    (the trainer splits train/validation by it; the queue caps candidates per source by it)."""
    return (
        f"study:{study_uid}"
        if study_uid
        else (f"source:{source_id}" if source_id else f"request:{request_id}")
    )


def cap_per_source(
    items: list[tuple[QueueEntry, float]], cap: int
) -> list[tuple[QueueEntry, float]]:
    """``items`` in their order, but at most ``cap`` of one source (the first ones)."""
    seen: dict[str, int] = {}
    out = []
    for e, score in items:
        key = source_key(e.study_uid, e.source_id, e.request_id)
        if seen.get(key, 0) < cap:
            seen[key] = seen.get(key, 0) + 1
            out.append((e, score))
    return out
