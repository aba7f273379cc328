"""Candidate-level measures, one implementation for the trainer, the server and experiments:
ROC AUC with a bootstrap 95% CI, average precision, sensitivity at a fixed FPR."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN without both classes."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise as scikit-learn's):
    the mean of the precision at each positive's rank, ties broken against the positives. NaN
    without positives."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan")
    order = np.lexsort((y, -s))  # by score descending; within a tie, negatives first
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def auc_ci(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Stratified bootstrap percentile interval of the AUC (NaN, NaN without both classes)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    p = pos[rng.integers(0, len(pos), (n_boot, len(pos)))]
    n = neg[rng.integers(0, len(neg), (n_boot, len(neg)))]
    # AUC of each resample: P(score_pos > score_neg) + 0.5 P(equal), via sorted negatives.
    n.sort(axis=1)
    below = np.stack([np.searchsorted(n[i], p[i], side="left") for i in range(n_boot)])
    equal = np.stack([np.searchsorted(n[i], p[i], side="right") for i in range(n_boot)]) - below
    aucs = (below + 0.5 * equal).sum(axis=1) / (len(pos) * len(neg))
    alpha = (1 - level) / 2
    return float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))


def sensitivity_at_fpr(labels: npt.ArrayLike, scores: npt.ArrayLike, fpr: float = 0.1) -> float:
    """Highest sensitivity with a false-positive rate of at most ``fpr``."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    best = 0.0
    for threshold in np.unique(np.concatenate([s, [np.inf]])):
        if (neg >= threshold).mean() <= fpr:
            best = max(best, float((pos >= threshold).mean()))
    return best


@dataclass(frozen=True)
class Evaluation:
    auc: float
    auc_low: float
    auc_high: float
    sensitivity: float
    at_fpr: float
    positives: int
    negatives: int

    def as_dict(self) -> dict[str, float | None]:
        """The figures, NaN (undefined: one class only) as None, for JSON."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def evaluate(
    labels: npt.ArrayLike, scores: npt.ArrayLike, fpr: float = 0.1, seed: int = 0
) -> Evaluation:
    y = np.asarray(labels, dtype=bool)
    low, high = auc_ci(y, scores, seed=seed)
    return Evaluation(
        roc_auc(y, scores),
        low,
        high,
        sensitivity_at_fpr(y, scores, fpr),
        fpr,
        int(y.sum()),
        int((~y).sum()),
    )
