"""AIFT scoring against the paper's own numbers (Table 1) and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from cad.aift import EPS, VARIANTS, aift_scores, candidate_stats, total_diversity
from cad.aift.scoring import majority_count, majority_patches

# Table 1 of Zhou et al. CVPR 2017 (docs/method.md): patch probabilities and the six scores.
TABLE1 = {
    "A": (".4 .4 .4 .5 .5 .5 .5 .5 .5 .6 .6", (7.52, 2.02, 4.38, 0.00, 11.90, 2.02)),
    "B": ("0 .1 .2 .3 .4 .4 .6 .7 .8 1 1", (4.57, 0.83, 1237.21, 20.79, 1241.77, 21.62)),
    "C": ("0 0 0 .1 .1 .9 .9 1 1 1 1", (1.30, 0.00, 2816.66, 0.00, 2817.96, 0.00)),
    "D": ("0 0 0 0 0 0 0 .1 .1 .1 .1", (1.30, 0.00, 189.54, 0.00, 190.84, 0.00)),
    "E": (".9 .9 .9 .9 1 1 1 1 1 1 1", (1.30, 0.00, 189.54, 0.00, 190.84, 0.00)),
    "F": ("0 0 .1 .1 .1 .1 .2 .2 .3 .9 1", (3.24, 0.33, 1076.87, 13.54, 1080.11, 13.86)),
    "G": ("0 .1 .7 .8 .8 .9 .9 .9 .9 1 1", (3.24, 0.33, 1076.87, 13.54, 1080.11, 13.86)),
}
COLUMNS = (
    "entropy",
    "entropy_alpha",
    "diversity",
    "diversity_alpha",
    "entropy_diversity",
    "entropy_diversity_alpha",
)


def table1_probs() -> np.ndarray:
    return np.array([[float(x) for x in row.split()] for row, _ in TABLE1.values()])


@pytest.mark.parametrize("column", range(6), ids=COLUMNS)
def test_table1_reproduced_to_two_decimals(column: int) -> None:
    expected = np.array([values[column] for _, values in TABLE1.values()])
    scores = aift_scores(table1_probs(), COLUMNS[column])
    np.testing.assert_array_equal(np.round(scores, 2), expected)


def brute_force(probs: np.ndarray, lambda1: float, lambda2: float) -> np.ndarray:
    """The paper's R matrix built entry by entry and summed (reference implementation)."""
    out = []
    for cand in probs:
        m = len(cand)
        r = np.zeros((m, m))
        for j in range(m):
            for k in range(m):
                pj, pk = cand[j], cand[k]
                if j == k:
                    r[j, k] = lambda1 * -np.sum(pj * np.log(pj + EPS))
                else:
                    r[j, k] = lambda2 * np.sum((pj - pk) * np.log((pj + EPS) / (pk + EPS)))
        out.append(r.sum())
    return np.array(out)


def test_closed_form_matches_the_r_matrix_for_multiclass() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(20, 9, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    for lambda1, lambda2 in ((1, 0), (0, 1), (1, 1), (0.3, 2.0)):
        from cad.aift import Variant

        ours = aift_scores(probs, Variant("x", lambda1, lambda2))
        np.testing.assert_allclose(ours, brute_force(probs, lambda1, lambda2), rtol=1e-9, atol=1e-9)


def test_majority_uses_the_dominant_class_in_multiclass() -> None:
    # Class 2 dominates on average; keep the patches most confident in class 2.
    probs = np.array(
        [[[0.1, 0.1, 0.8], [0.5, 0.1, 0.4], [0.0, 0.1, 0.9], [0.2, 0.2, 0.6]]], dtype=np.float64
    )
    kept = majority_patches(probs, 0.5)
    np.testing.assert_array_equal(kept[0, :, 2], [0.9, 0.8])


def test_binary_majority_keeps_bottom_patches_when_mean_is_not_above_half() -> None:
    probs = np.array([[0.1, 0.2, 0.9, 0.8]])  # mean 0.5 -> bottom
    from cad.aift.scoring import as_class_probs

    kept = majority_patches(as_class_probs(probs), 0.5)
    np.testing.assert_allclose(sorted(kept[0, :, 1]), [0.1, 0.2])


@pytest.mark.parametrize(
    ("m", "alpha", "expected"),
    [(11, 0.25, 3), (10, 0.25, 3), (2, 0.25, 1), (24, 0.25, 6), (1, 0.1, 1)],
)
def test_majority_count_rounds_half_up_with_at_least_one(
    m: int, alpha: float, expected: int
) -> None:
    assert majority_count(m, alpha) == expected


def test_candidate_stats_report_mean_probability_and_default_score() -> None:
    probs = table1_probs()
    stats = candidate_stats(probs)
    np.testing.assert_allclose(stats.probability, probs.mean(axis=1))
    np.testing.assert_allclose(stats.score, aift_scores(probs, "entropy_alpha"))
    np.testing.assert_allclose(stats.diversity, aift_scores(probs, "diversity"))
    assert np.all(stats.entropy >= 0) and np.all(stats.diversity >= 0)


def test_identical_patches_have_zero_diversity() -> None:
    probs = np.full((3, 24, 2), 0.5)
    assert np.all(total_diversity(probs) == 0.0)


def test_all_variants_named_in_method_md_exist() -> None:
    assert set(VARIANTS) == set(COLUMNS)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        aift_scores(np.zeros((3,)))
    with pytest.raises(ValueError):
        aift_scores(np.zeros((3, 0)))


def test_selection_top_b_and_acft_randomised() -> None:
    from cad.aift.scoring import select_for_labeling

    scores = np.array([0.1, 5.0, 3.0, 0.0, 4.0, 2.0, 1.0])
    np.testing.assert_array_equal(select_for_labeling(scores, 3), [1, 4, 2])
    picks = [
        tuple(select_for_labeling(scores, 2, omega=2, rng=np.random.default_rng(s)))
        for s in range(200)
    ]
    assert all(
        set(p) <= {1, 4, 2, 5} and len(set(p)) == 2 for p in picks
    )  # from the top omega*b = 4
    counts = np.bincount(np.concatenate(picks), minlength=7)
    assert counts[1] > counts[5]  # sampled in proportion to score
    with pytest.raises(ValueError):
        select_for_labeling(scores, 2, omega=0.5)


def test_acft_selection_with_fewer_positive_scores_than_b() -> None:
    # Found by the fuzz suite: numpy refuses to draw b items without replacement when fewer
    # than b have non-zero probability (GetAnnotationQueue answered INTERNAL).
    from cad.aift.scoring import select_for_labeling

    scores = np.array([0.0, 2.0, 0.0, 0.0, 1.0, 0.0])
    for seed in range(20):
        picks = select_for_labeling(scores, 4, omega=1.5, rng=np.random.default_rng(seed))
        assert len(set(picks.tolist())) == 4
        assert {1, 4} <= set(picks.tolist())  # every positive one is taken first
        assert set(picks[:2].tolist()) == {1, 4}
    zeros = select_for_labeling(np.zeros(5), 3, omega=1.0, rng=np.random.default_rng(0))
    assert len(set(zeros.tolist())) == 3


def test_candidate_probability_is_the_mean_finding_class_over_patches() -> None:
    from cad.aift import candidate_probability, candidate_stats

    one = np.array([[0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])  # one candidate, 3 patches
    assert candidate_probability(one) == pytest.approx(1.6 / 3)
    many = np.stack([one, one[::-1] * 0 + [1.0, 0.0]])  # (2, 3, 2)
    assert candidate_probability(many).tolist() == pytest.approx([1.6 / 3, 0.0])
    assert candidate_stats(many).probability.tolist() == candidate_probability(many).tolist()
