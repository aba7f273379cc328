"""The literature baselines' defining properties, each on a toy pool (cad.aift.baselines)."""

from __future__ import annotations

import numpy as np
import pytest

from cad.aift.baselines import (
    bald_scores,
    kcenter_greedy,
    kmeans,
    margin_scores,
    typicality,
    typiclust_keys,
)
from cad.aift.scoring import aift_scores


def test_margin_asks_first_where_the_two_classes_are_closest() -> None:
    p = np.array([[0.5, 0.5], [0.9, 0.9], [0.1, 0.1], [0.3, 0.3], [0.7, 0.7], [0.2, 0.8]])
    m = margin_scores(p)
    np.testing.assert_allclose(m, 1 - np.abs(2 * p.mean(axis=1) - 1))
    assert m[0] == m.max() and m[5] == m.max()  # the mean over patches decides, not one patch
    assert m[3] == pytest.approx(m[4])  # symmetric in the two classes
    assert m[1] < m[3] and m[2] < m[3]


def test_bald_is_disagreement_between_dropout_masks_not_uncertainty() -> None:
    unsure = np.tile([[0.5, 0.5]], (1, 20, 1))  # every mask says 50/50
    torn = np.tile([[[0.99, 0.01]], [[0.01, 0.99]]], (10, 1, 1)).reshape(1, 20, 2)  # masks disagree
    sure = np.tile([[0.99, 0.01]], (1, 20, 1))
    b = bald_scores(np.concatenate([unsure, torn, sure]))
    assert b[0] == pytest.approx(0.0, abs=1e-12)  # entropy's favourite, BALD's last
    assert b[1] > 0.6  # close to ln 2
    assert b[2] == pytest.approx(0.0, abs=1e-12)
    entropy_of_mean = aift_scores(
        np.concatenate([unsure, torn, sure]).mean(axis=1)[:, None, :], "entropy"
    )
    assert entropy_of_mean[0] == pytest.approx(entropy_of_mean[1])  # entropy cannot tell them apart
    with pytest.raises(ValueError):
        bald_scores(np.zeros((3, 1, 2)))


def _blobs(sizes: list[int], centres: list[list[float]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            np.asarray(c) + 0.1 * rng.standard_normal((s, len(c)))
            for s, c in zip(sizes, centres, strict=True)
        ]
    )


def test_kcenter_greedy_picks_the_farthest_from_every_centre_each_time() -> None:
    x = _blobs([10, 10, 10], [[0, 0], [10, 0], [0, 10]])
    labeled = np.arange(10)  # blob A is labelled
    keys = kcenter_greedy(x, labeled, budget=4)
    picks = list(np.argsort(-keys, kind="stable")[:4])
    assert {p // 10 for p in picks[:2]} == {1, 2}  # the first two picks cover the other blobs
    centres = list(labeled)
    for pick in picks:  # the defining property, recomputed by brute force
        free = [i for i in range(30) if i not in centres]
        dist = {i: min(np.linalg.norm(x[i] - x[c]) for c in centres) for i in free}
        assert dist[pick] == pytest.approx(max(dist.values()))
        centres.append(pick)
    assert np.all(np.isneginf(keys[labeled]))
    rest = [i for i in range(10, 30) if i not in picks]
    assert keys[rest].max() < keys[picks].min() and keys[rest].min() >= 0


def test_kcenter_greedy_with_no_labels_starts_at_the_centre() -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    keys = kcenter_greedy(x, np.zeros(4, dtype=bool), budget=2)
    order = list(np.argsort(-keys, kind="stable"))
    assert order[:2] == [2, 3]  # the most central, then the farthest from it


def test_kmeans_recovers_separated_clusters_and_is_seeded() -> None:
    x = _blobs([15, 10, 5], [[0, 0, 0], [20, 0, 0], [0, 20, 0]])
    a = kmeans(x, 3, seed=3)
    truth = np.repeat([0, 1, 2], [15, 10, 5])
    pairs = {(int(t), int(c)) for t, c in zip(truth, a, strict=True)}
    assert len(pairs) == 3 and len({c for _, c in pairs}) == 3  # a relabelling of the truth
    np.testing.assert_array_equal(a, kmeans(x, 3, seed=3))


def test_typicality_prefers_the_dense_middle_to_an_outlier() -> None:
    x = np.concatenate([_blobs([20], [[0, 0]]), [[3.0, 3.0]]])
    t = typicality(x, neighbours=5)
    assert t[-1] == t.min()


def test_typiclust_takes_the_most_typical_of_each_uncovered_cluster_largest_first() -> None:
    x = _blobs([30, 20, 10], [[0, 0], [10, 0], [0, 10]])
    x = np.concatenate([x, [[0.0, 2.5]]])  # an outlier near blob A: atypical, never picked
    keys = typiclust_keys(x, np.zeros(len(x), dtype=bool), budget=3, seed=1, neighbours=5)
    picks = list(np.argsort(-keys, kind="stable")[:3])
    blob = [0 if p < 30 else 1 if p < 50 else 2 if p < 60 else 3 for p in picks]
    assert blob == [0, 1, 2]  # one per cluster, the largest cluster first
    for p, lo, hi in zip(picks, (0, 30, 50), (30, 50, 60), strict=True):  # near its blob's middle
        centre = x[lo:hi].mean(axis=0)
        d = np.linalg.norm(x[lo:hi] - centre, axis=1)
        assert np.linalg.norm(x[p] - centre) <= np.quantile(d, 0.5)
    # with one candidate of blob A labelled (3 clusters), the next two picks cover B and C
    labeled = np.array([0])
    keys = typiclust_keys(x, labeled, budget=2, seed=1, neighbours=5)
    picks = list(np.argsort(-keys, kind="stable")[:2])
    assert [1 if p < 50 else 2 for p in picks] == [1, 2]
    assert np.all(np.isneginf(keys[labeled]))
