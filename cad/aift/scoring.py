"""AIFT selection scores (Zhou et al., CVPR 2017, Algorithm 1, Eq. 1-4), vectorised.

Input everywhere is an array of patch predictions ``probs`` of shape
``(n_candidates, m_patches, n_classes)`` (softmax rows). Definitions, from
``docs/method.md``:

- patch entropy ``e = -sum_k p_k log(p_k + eps)``
- pair diversity ``d(j, l) = sum_k (p_j,k - p_l,k) (log(p_j,k + eps) - log(p_l,k + eps))``
- ``score = lambda1 * sum_j e_j + lambda2 * sum_{j, l} d(j, l)``, every ordered
  pair counted (so each unordered pair twice), on the majority-selected
  patches when ``alpha < 1``.

The pair sum is computed in closed form instead of building the ``a x a``
matrix: with ``L = log(p + eps)`` and means over the ``a`` kept patches
``p_bar_k``, ``L_bar_k``::

    sum_{j,l} d(j,l) = 2 a sum_j sum_k (p_j,k - p_bar_k) (L_j,k - L_bar_k)

(expand the product and sum over both indices), which is O(n a K) time and
memory; the test suite checks it against the explicit matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

EPS = float(np.finfo(np.float64).eps)
"""Guard added to probabilities inside logs (float64 machine epsilon)."""

PAPER_ALPHA = 0.25

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Variant:
    """One AIFT selection criterion: ``lambda1 * E + lambda2 * D`` on the alpha-majority patches."""

    name: str
    lambda1: float
    lambda2: float
    alpha: float = 1.0


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("entropy", 1.0, 0.0),
        Variant("entropy_alpha", 1.0, 0.0, PAPER_ALPHA),
        Variant("diversity", 0.0, 1.0),
        Variant("diversity_alpha", 0.0, 1.0, PAPER_ALPHA),
        Variant("entropy_diversity", 1.0, 1.0),
        Variant("entropy_diversity_alpha", 1.0, 1.0, PAPER_ALPHA),
    )
}
DEFAULT_VARIANT = "entropy_alpha"
"""The annotation queue's order when a reviewer asks for none, and the ``score`` every
classification returns: chosen on the validation sequences of the CVC-ClinicDB peak run (labels
doubling to 1,280, 5 paired seeds): the largest paired log-axis ALC gain over Random (+0.024 +-
0.022, 5 of 5 seeds, outside seed noise); see docs/results.md. It was entropy_diversity_alpha."""
RANDOM = "random"
"""The annotation queue's other order: IFT Random, the paper's baseline (no AIFT score)."""


def as_class_probs(probs: npt.ArrayLike) -> FloatArray:
    """Return ``probs`` as a float64 ``(n, m, K)`` array.

    A 2-D array ``(n, m)`` is read as the positive-class probability of a binary
    problem and expanded to ``(n, m, 2)`` with columns ``(1 - p, p)``.

    Raises:
        ValueError: if the shape is not 2-D or 3-D, or there are no patches.
    """
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim == 2:
        arr = np.stack([1.0 - arr, arr], axis=-1)
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] < 2:
        raise ValueError(f"expected probabilities of shape (n, m, K>=2), got {arr.shape}")
    return arr


def majority_count(m: int, alpha: float) -> int:
    """Patches kept by majority selection: ``round(alpha * m)`` rounded half up, at least 1."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return max(1, min(m, math.floor(alpha * m + 0.5)))


def degenerate_variants(
    patches_per_candidate: int, names: Iterable[str] = VARIANTS
) -> dict[str, str]:
    """The named variants that majority selection reduces to something else at this patch count.

    With ``round(alpha * m) == 1`` patch kept the diversity among the kept patches is 0: an
    entropy+diversity variant ranks by entropy alone, and diversity alone scores every candidate
    0, so a queue built on it is in its tie-break order, not a diversity ranking.
    """
    notes = {}
    for name in names:
        v = VARIANTS.get(name)
        if v is None or not v.lambda2 or majority_count(patches_per_candidate, v.alpha) > 1:
            continue
        notes[name] = (
            f"keeps 1 of {patches_per_candidate} patches (alpha {v.alpha:g}), whose diversity is 0: "
            + (
                "it ranks by entropy alone"
                if v.lambda1
                else "every score is 0 and the queue is in tie-break order"
            )
        )
    return notes


def majority_patches(probs: FloatArray, alpha: float) -> FloatArray:
    """Keep, per candidate, the ``round(alpha*m)`` patches most confident in its dominant class.

    The dominant class is the argmax of the candidate's mean prediction. For two
    classes this is the paper's rule: if the mean positive probability is above
    0.5 keep the top patches by positive probability, otherwise the bottom ones.
    """
    n, m, _ = probs.shape
    keep = majority_count(m, alpha)
    if keep == m:
        return probs
    dominant = probs.mean(axis=1).argmax(axis=1)  # (n,)
    confidence = np.take_along_axis(probs, dominant[:, None, None], axis=2)[..., 0]  # (n, m)
    order = np.argsort(-confidence, axis=1, kind="stable")[:, :keep]
    return np.take_along_axis(probs, order[:, :, None], axis=1)


def total_entropy(probs: FloatArray) -> FloatArray:
    """Sum over each candidate's patches of the patch entropy; shape ``(n,)``."""
    return (probs * -np.log(probs + EPS)).sum(axis=(1, 2))


def total_diversity(probs: FloatArray) -> FloatArray:
    """Sum over all ordered patch pairs of the symmetric KL divergence; shape ``(n,)``."""
    a = probs.shape[1]
    logs = np.log(probs + EPS)
    # Centred form of the closed form: no cancellation, exactly 0 for identical patches.
    dp = probs - probs.mean(axis=1, keepdims=True)
    dl = logs - logs.mean(axis=1, keepdims=True)
    return np.maximum(2.0 * a * (dp * dl).sum(axis=(1, 2)), 0.0)


def aift_scores(probs: npt.ArrayLike, variant: Variant | str = DEFAULT_VARIANT) -> FloatArray:
    """AIFT score of every candidate for one variant; shape ``(n,)``.

    Args:
        probs: patch predictions ``(n, m, K)`` or positive probabilities ``(n, m)``.
        variant: a :class:`Variant` or the name of one in :data:`VARIANTS`.
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    p = majority_patches(as_class_probs(probs), v.alpha)
    score = np.zeros(p.shape[0], dtype=np.float64)
    if v.lambda1:
        score += v.lambda1 * total_entropy(p)
    if v.lambda2:
        score += v.lambda2 * total_diversity(p)
    return score


def majority_terms(
    probs: npt.ArrayLike, alpha: float = PAPER_ALPHA
) -> tuple[FloatArray, FloatArray]:
    """Total entropy and total diversity of each candidate's ``alpha``-majority patches: with
    the all-patch totals of :func:`candidate_stats` they give every variant's score as
    ``lambda1 * E + lambda2 * D``, so the store can rank by them (``aift_scores`` computes the
    same sums in the same order)."""
    p = majority_patches(as_class_probs(probs), alpha)
    return total_entropy(p), total_diversity(p)


@dataclass(frozen=True)
class CandidateStats:
    """What the server reports per candidate; arrays of shape ``(n,)``."""

    probability: FloatArray
    """Mean over patches of the positive-class (last class) probability."""
    entropy: FloatArray
    """Total patch entropy over all patches (lambda1 = 1, alpha = 1)."""
    diversity: FloatArray
    """Total pairwise diversity over all patches (lambda2 = 1, alpha = 1)."""
    score: FloatArray
    """AIFT score of the default variant, (Entropy + Diversity)^alpha."""


def candidate_probability(patch_probs: npt.ArrayLike) -> FloatArray:
    """A candidate's probability of being a finding: the mean over its patches of the last
    (finding) class. ``(m, k)`` patch probabilities give a scalar array, ``(n, m, k)`` one per
    candidate. The one definition: the server's answer, the trainer's evaluation, the gate and
    the experiment all use it."""
    return np.asarray(patch_probs)[..., -1].mean(axis=-1)


def candidate_stats(probs: npt.ArrayLike) -> CandidateStats:
    """Candidate-level probability, entropy, diversity and default AIFT score."""
    p = as_class_probs(probs)
    return CandidateStats(
        probability=candidate_probability(p),
        entropy=total_entropy(p),
        diversity=total_diversity(p),
        score=aift_scores(p, DEFAULT_VARIANT),
    )


def select_for_labeling(
    scores: npt.ArrayLike, b: int, omega: float = 0.0, rng: np.random.Generator | None = None
) -> npt.NDArray[np.intp]:
    """Indices of the ``b`` candidates to query, best first.

    ``omega = 0``: the top ``b`` by score (AIFT). ``omega >= 1``: ACFT's
    randomisation: take the top ``omega * b``, normalise their scores to a
    distribution and sample ``b`` of them without replacement in proportion
    to score. Candidates of score 0 have probability 0 while any positive one is left: when
    fewer than ``b`` are positive, all positive ones are taken and the rest drawn uniformly
    from the zeros (all of them uniformly if every score is 0).
    """
    s = np.asarray(scores, dtype=np.float64)
    b = min(b, len(s))
    order = np.argsort(-s, kind="stable")
    if omega <= 0 or b == 0:
        return order[:b]
    if omega < 1:
        raise ValueError(f"omega must be 0 (off) or >= 1, got {omega}")
    rng = rng or np.random.default_rng(0)
    pool = order[: min(len(s), int(math.ceil(omega * b)))]
    weights = np.clip(np.nan_to_num(s[pool], nan=0.0, posinf=0.0), 0.0, None)
    positive = pool[weights > 0]
    if len(positive) >= b:
        return rng.choice(pool, size=b, replace=False, p=weights / weights.sum())
    zeros = pool[weights <= 0]
    rest = rng.choice(zeros, size=b - len(positive), replace=False)
    return np.concatenate([rng.permutation(positive), rest]).astype(np.intp)
