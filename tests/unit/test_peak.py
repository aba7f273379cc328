"""The peak preset's schedule and the paper's measure (labels to a share of the whole-pool
value), on hand-made curves: no data, no torch."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments.cvc.peak import alc, choose_default, labels_to_reach, summarise_set


def schedule(*args: int) -> list[int]:
    from experiments.cvc.run import label_schedule

    return label_schedule(*args)


def test_fixed_schedule_is_rounds_of_b_within_the_pool() -> None:
    assert schedule(10, 4, 1000) == [10, 20, 30, 40]
    assert schedule(10, 4, 25) == [10, 20, 25, 25]


def test_doubling_schedule_reaches_the_whole_pool() -> None:
    # 10 new, then 10, 20, 40, ... new: the labels in hand double until the pool runs out.
    assert schedule(10, 0, 2300, 2560) == [10, 20, 40, 80, 160, 320, 640, 1280, 2300]
    # The cap bounds what one round adds, so a large pool takes several capped rounds.
    assert schedule(10, 0, 6000, 1000) == [
        10,
        20,
        40,
        80,
        160,
        320,
        640,
        1280,
        2280,
        3280,
        4280,
        5280,
        6000,
    ]
    # Exactly a power of two: the last doubling exhausts the pool, no empty round follows.
    assert schedule(10, 0, 640, 2560) == [10, 20, 40, 80, 160, 320, 640]
    assert schedule(10, 0, 7, 2560) == [7]  # a pool smaller than b
    assert schedule(10, 3, 5000, 2560) == [10, 20, 40]  # rounds limits a doubling schedule


@pytest.mark.parametrize("bad", [(0, 3, 100, 0), (10, 0, 100, 0), (10, 3, 0, 0), (10, 0, 9, -1)])
def test_a_schedule_that_cannot_be_run_is_refused(bad: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        schedule(*bad)


def test_a_rerun_resumes_at_a_doubling_round(tmp_path: Path) -> None:
    """Resuming mid-schedule needs only the labels in hand: each round tops up to its target."""
    from experiments.cvc.run import PRESETS, Experiment, Split

    exp = Experiment(tmp_path, PRESETS["peak"], Split([1], [3], [4]), progress=False)
    assert exp.schedule("random", 2300) == [10, 20, 40, 80, 160, 320, 640]  # the preset's 7
    exp = Experiment(
        tmp_path, replace(PRESETS["peak"], rounds=0), Split([1], [3], [4]), progress=False
    )
    plan = exp.schedule("random", 2300)
    assert plan == [10, 20, 40, 80, 160, 320, 640, 1280, 2300]
    have = 640  # killed after round 7 had labelled, before it trained
    assert [t - have for t in plan[7:]] == [640, 1660]  # what rounds 8 and 9 still ask for
    assert exp.schedule("full", 2300) == [2300]
    assert PRESETS["peak"].split == "split-peak.json"
    split = Split.from_file(Path(__file__).parents[2] / "experiments" / "cvc" / "split-peak.json")
    split.check()
    assert split.validation and not set(split.validation) & set(split.pool)
    with pytest.raises(ValueError, match="pool and validation"):
        Split([1, 4], [3], [4]).check()


def test_labels_to_reach_needs_the_curve_to_stay_above() -> None:
    labels = [10, 20, 40, 80, 160]
    assert labels_to_reach(labels, [0.5, 0.9, 0.95, 0.96, 0.97], 0.95) == 40
    # touches the level, dips back below, returns: counted from the return
    assert labels_to_reach(labels, [0.5, 0.96, 0.90, 0.95, 0.97], 0.95) == 80
    # equal to the level counts as reached (a tie with the reference)
    assert labels_to_reach(labels, [0.5, 0.6, 0.7, 0.95, 0.95], 0.95) == 80
    # ends below: never reached, even after being above
    assert labels_to_reach(labels, [0.96, 0.97, 0.98, 0.99, 0.94], 0.95) is None
    assert labels_to_reach(labels, [0.5, 0.6, 0.7, 0.8, 0.9], 0.95) is None
    # a missing value is not above anything
    assert labels_to_reach(labels, [0.96, math.nan, 0.97, 0.97, 0.97], 0.95) == 40


def test_alc_on_a_log_axis_weighs_each_doubling_alike() -> None:
    labels = np.array([0, 10, 20, 40, 80])
    values = np.array([0.2, 0.6, 0.8, 0.8, 0.8])
    assert alc(labels, values) == pytest.approx((0.7 * 10 + 0.8 * 20 + 0.8 * 40) / 70)
    assert alc(labels, values, log=True) == pytest.approx((0.7 + 0.8 + 0.8) / 3)


def _write(tmp: Path, curves: dict[tuple[str, int], list[float]], full: float) -> None:
    labels = [0, 10, 20, 40, 80]
    with (tmp / "curves.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "method",
                "seed",
                "round",
                "labels",
                "test_auc",
                "test_ap",
                "positives",
                "val_auc",
                "val_ap",
            ]
        )
        w.writerow(["full", 0, 1, 80, full, full - 0.1, 8, full, full - 0.1])
        for (method, seed), aucs in curves.items():
            for r, (lab, auc) in enumerate(zip(labels, aucs, strict=True)):
                pos = lab // 10 * (3 if method != "random" else 1)
                w.writerow([method, seed, r, lab, auc, auc - 0.1, min(pos, 8), auc, auc - 0.1])


def test_summary_counts_labels_savings_and_paired_wins(tmp_path: Path) -> None:
    curves = {}
    for seed in range(3):
        curves[("random", seed)] = [0.2, 0.80, 0.90, 0.97, 1.00]
        curves[("entropy_alpha", seed)] = [0.2, 0.85, 0.99, 1.00, 1.00]
        curves[("scratch", seed)] = [0.2, 0.70, 0.80, 0.90, 0.98 if seed else 0.99]
    _write(tmp_path, curves, full=1.0)
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    s = summarise_set(rows, "test")
    assert s is not None and s["reference"]["auc"] == 1.0
    ea, rnd, sc = (s["methods"][m]["auc"] for m in ("entropy_alpha", "random", "scratch"))
    assert ea["to_level"]["0.99"] == 20 and rnd["to_level"]["0.99"] == 80
    assert ea["saving"]["0.99"] == pytest.approx(0.75)
    assert sc["to_level"]["1.0"] is None and sc["saving"]["1.0"] is None  # never reached
    # scratch reaches 99% on seed 0 only (80 labels, as Random): 1 tie, 2 losses
    assert sc["paired_to_level"]["0.99"] == {
        "wins": 0,
        "ties": 1,
        "losses": 2,
        "median_saving": 0.0,
    }
    assert ea["paired_to_level"]["0.99"]["wins"] == 3
    # identical gains on every seed: no spread, and the verdict is not a tie
    assert ea["paired_alc_log"]["wins"] == 3 and ea["paired_alc_log"]["verdict"] == "better"
    assert s["methods"]["entropy_alpha"]["polyps_per_100"][1] == pytest.approx(30.0)
    choice = choose_default(summarise_set(rows, "val"), ["entropy_alpha"])
    assert choice["method"] == "entropy_alpha" and "better" in choice["reason"]


def test_no_gain_over_random_keeps_random(tmp_path: Path) -> None:
    curves = {}
    for seed in range(3):
        curves[("random", seed)] = [0.2, 0.80, 0.90, 0.97, 1.00]
        curves[("entropy_alpha", seed)] = [0.2, 0.80, 0.88 + 0.01 * seed, 0.97, 1.00]
    _write(tmp_path, curves, full=1.0)
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert choose_default(summarise_set(rows, "val"), ["entropy_alpha"])["method"] == "random"


def test_the_default_is_any_servable_order_with_three_seeds(tmp_path: Path) -> None:
    """A baseline the queue serves (margin) can be the default; a method with fewer than three
    paired seeds is named and left out, however large its gain."""
    from experiments.cvc.report import _queue_orders

    curves = {}
    for seed in range(3):
        curves[("random", seed)] = [0.2, 0.80, 0.90, 0.97, 1.00]
        curves[("entropy_alpha", seed)] = [0.2, 0.85, 0.93, 0.98, 1.00]
        curves[("margin", seed)] = [0.2, 0.88, 0.97, 1.00, 1.00]
    for seed in range(2):
        curves[("entropy_alpha_spread", seed)] = [0.2, 0.99, 1.00, 1.00, 1.00]
    _write(tmp_path, curves, full=1.0)
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    names = ["full", "random", "scratch", "entropy_alpha", "margin", "entropy_alpha_spread"]
    candidates = _queue_orders(names)
    assert candidates == ["entropy_alpha", "margin", "entropy_alpha_spread"]
    choice = choose_default(summarise_set(rows, "val"), candidates)
    assert choice["method"] == "margin"
    assert choice["ranking"] == ["margin", "entropy_alpha"]
    assert "under 3 paired seeds: entropy_alpha_spread" in choice["reason"]


def test_one_default_over_sites_is_better_on_one_and_worse_on_none(tmp_path: Path) -> None:
    """Two sites disagree: the order better on one and tied on the other is the default; one
    worse on a site, or not run on every site, is left out with its reason; none left: Random."""
    from experiments.cvc.peak import choose_across_sites
    from experiments.cvc.report import choose_for_sites

    a, b = tmp_path / "site-a", tmp_path / "site-b"
    a.mkdir()
    b.mkdir()
    curves_a, curves_b = {}, {}
    for seed in range(3):
        curves_a[("random", seed)] = [0.2, 0.80, 0.90, 0.97, 1.00]
        curves_a[("entropy_alpha", seed)] = [0.2, 0.85, 0.95, 0.99, 1.00]  # better on a
        curves_a[("margin", seed)] = [0.2, 0.90, 0.99, 1.00, 1.00]  # better on a
        curves_a[("bald", seed)] = [0.2, 0.99, 1.00, 1.00, 1.00]  # a only
        curves_b[("random", seed)] = [0.2, 0.80, 0.90, 0.97, 1.00]
        tie = [0.03, -0.02, -0.01][seed]
        curves_b[("entropy_alpha", seed)] = [0.2, 0.80 + tie, 0.90, 0.97, 1.00]  # a tie on b
        curves_b[("margin", seed)] = [0.2, 0.70, 0.80, 0.90, 1.00]  # worse on b
    _write(a, curves_a, full=1.0)
    _write(b, curves_b, full=1.0)
    vals = {}
    for d in (a, b):
        vals[d.name] = summarise_set(list(csv.DictReader((d / "curves.csv").open())), "val")
    choice = choose_across_sites(vals, ["bald", "entropy_alpha", "margin"])
    assert choice["method"] == "entropy_alpha" and choice["ranking"] == ["entropy_alpha"]
    assert "margin (worse than Random on site-b)" in choice["reason"]
    assert "bald (fewer than 3 paired seeds on site-b)" in choice["reason"]
    assert choose_across_sites(vals, ["margin"])["method"] == "random"
    text = choose_for_sites([a, b])
    assert text.splitlines()[-1].startswith("across the sites: entropy_alpha: better than Random")


def test_a_peak_run_report_leads_with_labels_to_the_whole_pool(tmp_path: Path) -> None:
    from experiments.cvc.report import write_report

    curves = {}
    for seed in range(3):
        curves[("random", seed)] = [0.2, 0.80, 0.90, 0.97, 1.00]
        curves[("entropy_alpha", seed)] = [0.2, 0.85 + 0.01 * seed, 0.99, 1.00, 1.00]
    _write(tmp_path, curves, full=1.0)
    (tmp_path / "pool.json").write_text(json.dumps({"preset": {"doubling_cap": 2560}}))
    text = write_report(tmp_path, seconds_per_label=36)
    assert text.startswith("## Labels to the whole-pool performance")
    assert "Default ranking chosen on the validation sequences: **entropy_alpha**" in text
    assert "| entropy_alpha | 3 | 20 | 20 | 20 | 40 | 75% | 75% | 3/0/0 |" in text
    assert "36 s per label" in text and "| 20 | 0.2 | +0.6 h |" in text
    assert (tmp_path / "peak.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["peak"]["default"]["method"] == "entropy_alpha"


def test_a_new_site_report_shows_its_own_labels_against_day_one_and_the_whole_pool(
    tmp_path: Path,
) -> None:
    from experiments.cvc.report import write_report

    curves = {}
    for seed in range(2):
        curves[("random", seed)] = [0.91, 0.80, 0.90, 0.97, 1.00]
        curves[("margin", seed)] = [0.91, 0.85, 0.99, 1.00, 1.00]
    _write(tmp_path, curves, full=1.0)
    (tmp_path / "pool.json").write_text(json.dumps({"preset": {"doubling_cap": 2560}}))
    (tmp_path / "site.json").write_text(json.dumps({"site": "Kvasir-SEG", "start": "vendor"}))
    text = write_report(tmp_path)
    assert "![Kvasir-SEG: AUC against its own labels](site.png)" in text
    assert (tmp_path / "site.png").stat().st_size > 10_000
