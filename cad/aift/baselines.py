"""The active-learning literature's baselines, as the annotation queue's other orders.

Each is defined once here (numpy only) and read by the trainer, which computes their keys when it
re-scores the pool, and by the store, which serves the queue in key order. Definitions follow the
papers and ``baal``'s heuristics:

- **margin** (least confidence's two-class twin): ``1 - |p_finding - p_background|`` of the
  candidate's prediction (its mean over patches); the smaller the margin, the higher it ranks.
  Needs nothing but the probability every classification stores, so it is always current.
- **bald** (Houlsby et al. 2011; Gal, Islam and Ghahramani, ICML 2017): the mutual information
  between the prediction and the network's weights, estimated with ``T`` dropout masks:
  ``H[mean_t p_t] - mean_t H[p_t]``. High where the passes disagree, not where each pass is
  unsure, which is what separates it from entropy.
- **coreset** (Sener and Savarese, ICLR 2018): k-centre greedy on the network's penultimate
  features: each pick is the candidate farthest from every labelled candidate and every earlier
  pick. Its key is the pick order (a set method served as a ranking: the first ``b`` are its
  batch of ``b``), then, beyond the budget, the distance to the nearest centre.
- **typiclust** (Hacohen, Dekel and Weinshall, ICML 2022), the cold start: cluster the features
  into ``labelled + b`` clusters, and from each cluster without a label, largest first, take its
  most typical candidate (the inverse mean distance to its ``k`` nearest neighbours).

Keys are "higher is asked first" everywhere, like the AIFT scores.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cad.aift.scoring import EPS, RANDOM, VARIANTS, as_class_probs

FloatArray = npt.NDArray[np.float64]

MARGIN, BALD, CORESET, TYPICLUST = "margin", "bald", "coreset", "typiclust"
KEYED = (BALD, CORESET, TYPICLUST)
"""Orders whose keys the trainer computes at re-scoring and the store keeps (``queue_keys``)."""
BASELINES = (MARGIN, *KEYED)
"""Every literature baseline the queue serves."""
QUEUE_ORDERS = (*VARIANTS, RANDOM, *BASELINES)
"""Every order the annotation queue can be asked for."""
TYPICALITY_NEIGHBOURS = 20
"""TypiClust's ``k`` (the paper's 20)."""
MC_PASSES = 20
"""Dropout masks per candidate for BALD (baal's default iterations is 20)."""


def margin_scores(probs: npt.ArrayLike) -> FloatArray:
    """``1 - (p_top - p_second)`` of each candidate's mean prediction over its patches;
    ``probs`` as :func:`~cad.aift.scoring.aift_scores` takes them. Shape ``(n,)``."""
    mean = np.sort(as_class_probs(probs).mean(axis=1), axis=1)
    return 1.0 - (mean[:, -1] - mean[:, -2])


def bald_scores(samples: npt.ArrayLike) -> FloatArray:
    """BALD of each candidate from ``samples`` of shape ``(n, T, K)``: its class probabilities
    under ``T`` dropout masks. ``H[mean] - mean H``, at least 0. Shape ``(n,)``."""
    p = np.asarray(samples, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] < 2:
        raise ValueError(f"expected (n, T >= 2, K) dropout samples, got {p.shape}")
    mean = p.mean(axis=1)
    entropy_of_mean = -(mean * np.log(mean + EPS)).sum(axis=1)
    mean_entropy = -(p * np.log(p + EPS)).sum(axis=2).mean(axis=1)
    return np.maximum(entropy_of_mean - mean_entropy, 0.0)


def _sq_distances(a: FloatArray, b: FloatArray) -> FloatArray:
    """Squared Euclidean distances ``(len(a), len(b))``, clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _start(
    features: npt.ArrayLike, labeled: npt.ArrayLike
) -> tuple[FloatArray, npt.NDArray[np.bool_], FloatArray]:
    """The features as float64, the labelled rows as a mask, and every key at -inf."""
    x = np.asarray(features, dtype=np.float64)
    mask = np.zeros(len(x), dtype=bool)
    mask[np.asarray(labeled)] = True
    return x, mask, np.full(len(x), -np.inf)


def kcenter_greedy(features: npt.ArrayLike, labeled: npt.ArrayLike, budget: int) -> FloatArray:
    """Core-Set keys of the unlabelled rows of ``features`` (``(n, d)``; ``labeled``: a boolean
    mask or indices). The first ``budget`` picks of k-centre greedy get keys ``n + budget - i``
    (pick ``i``, 0 first), every other unlabelled row its distance to the nearest centre (below
    any pick's key after scaling into ``[0, 1)``), labelled rows -inf. Ties go to the lower index.
    With no labelled row the first centre is the row nearest the mean (deterministic)."""
    x, mask, keys = _start(features, labeled)
    n = len(x)
    if n == 0 or mask.all():
        return keys
    first = 0
    if mask.any():
        nearest = np.full(n, np.inf)
        for chunk in np.array_split(np.flatnonzero(mask), max(1, mask.sum() // 512)):
            nearest = np.minimum(nearest, _sq_distances(x, x[chunk]).min(axis=1))
    else:  # the most central row is the first centre
        pick = int(np.argmin(_sq_distances(x, x.mean(axis=0, keepdims=True))[:, 0]))
        nearest = _sq_distances(x, x[pick : pick + 1])[:, 0]
        if budget > 0:
            keys[pick] = float(n + budget)
            first = 1
        nearest[pick] = -np.inf
    nearest[mask] = -np.inf
    free = int((~mask).sum())
    for i in range(first, min(budget, free)):
        pick = int(np.argmax(nearest))
        keys[pick] = float(n + budget - i)
        nearest = np.minimum(nearest, _sq_distances(x, x[pick : pick + 1])[:, 0])
        nearest[mask] = -np.inf
        nearest[keys > -np.inf] = -np.inf
    rest = (~mask) & (keys == -np.inf)
    if rest.any():
        d = np.sqrt(np.maximum(nearest[rest], 0.0))
        keys[rest] = d / (d.max() + 1.0)
    return keys


def kmeans(
    features: npt.ArrayLike, k: int, seed: int = 0, iterations: int = 30
) -> npt.NDArray[np.intp]:
    """Cluster assignment of each row by Lloyd's k-means from a k-means++ start, seeded.

    Written here rather than taken from scikit-learn: TypiClust needs one clustering of a few
    thousand feature vectors per round, and scikit-learn (with SciPy, ~50 MB) would be the
    trainer's heaviest dependency for these 20 lines; the test checks it recovers separated
    clusters exactly and is deterministic for a seed.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(n))]]
    d2 = _sq_distances(x, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        pick = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[pick])
        d2 = np.minimum(d2, _sq_distances(x, x[pick : pick + 1])[:, 0])
    c = np.stack(centres)
    assign = np.zeros(n, dtype=np.intp)
    for it in range(iterations):
        new = _sq_distances(x, c).argmin(axis=1)
        if it and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return assign


def typicality(features: npt.ArrayLike, neighbours: int = TYPICALITY_NEIGHBOURS) -> FloatArray:
    """TypiClust's typicality of each row among ``features``: the inverse of its mean distance
    to its ``neighbours`` nearest other rows (fewer when there are fewer)."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n <= 1:
        return np.ones(n)
    d = np.sqrt(_sq_distances(x, x))
    np.fill_diagonal(d, np.inf)
    k = min(neighbours, n - 1)
    near = np.partition(d, k - 1, axis=1)[:, :k]
    return 1.0 / (near.mean(axis=1) + EPS)


def typiclust_keys(
    features: npt.ArrayLike,
    labeled: npt.ArrayLike,
    budget: int,
    seed: int = 0,
    neighbours: int = TYPICALITY_NEIGHBOURS,
    max_clusters: int = 500,
) -> FloatArray:
    """TypiClust keys of the unlabelled rows: ``min(labelled + budget, max_clusters)`` k-means
    clusters; each cluster with no labelled row, largest first (ties: lower cluster index), gives
    its most typical row a key ``n + budget - i``; every other unlabelled row its typicality
    within its cluster scaled into ``[0, 1)``; labelled rows -inf."""
    x, mask, keys = _start(features, labeled)
    n = len(x)
    if n == 0 or mask.all():
        return keys
    k = min(int(mask.sum()) + budget, max_clusters, n)
    assign = kmeans(x, k, seed)
    typical = np.zeros(n)
    for j in np.unique(assign):
        members = np.flatnonzero(assign == j)
        typical[members] = typicality(x[members], neighbours)
    covered = set(assign[mask].tolist())
    sizes = np.bincount(assign, minlength=k)
    uncovered = sorted(
        (j for j in range(k) if j not in covered and sizes[j]), key=lambda j: (-sizes[j], j)
    )
    for i, j in enumerate(uncovered[:budget]):
        members = np.flatnonzero((assign == j) & ~mask)
        pick = int(members[np.argmax(typical[members])])
        keys[pick] = float(n + budget - i)
    rest = (~mask) & (keys == -np.inf)
    if rest.any():
        keys[rest] = typical[rest] / (typical[rest].max() + 1.0)
    return keys
