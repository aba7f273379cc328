"""Kvasir-SEG as the new site (issue 38): the images, their fixed split, and CAD-like candidates
from the same generator as CVC-ClinicDB's, scaled to each image's resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cvc.pool import iou, polyp_mask
from experiments.kvasir.data import (
    DEFAULT_ROOT,
    FRACTIONS,
    candidates,
    load_images,
    load_split,
    make_split,
)

needs_data = pytest.mark.skipif(
    not (DEFAULT_ROOT / "polyp_boxes.csv").is_file(),
    reason="../shared/data/kvasir-seg is not beside this checkout",
)


def test_the_split_is_a_seeded_partition_by_image_id() -> None:
    ids = [f"img{i:04d}" for i in range(1000)]
    split = make_split(ids)
    assert split == make_split(list(reversed(ids)))  # by id, whatever the listing order
    assert {k: len(v) for k, v in split.items()} == {
        k: round(f * 1000) for k, f in FRACTIONS.items()
    }
    parts = [set(v) for v in split.values()]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == 1000  # disjoint, whole
    assert make_split(ids, seed=1) != split


@needs_data
def test_the_kept_split_is_the_seeded_split_of_the_images() -> None:
    frames, ids = load_images()
    assert len(frames) == 1000 and all(f.polyps for f in frames)  # every image shows a polyp
    assert load_split() == make_split(ids)


@needs_data
def test_candidates_are_polyps_and_negatives_off_them_at_the_images_own_scale() -> None:
    frames, _ = load_images()
    from PIL import Image

    chosen = frames[:4]
    found = candidates(chosen, seed=3)
    for fr in chosen:
        mine = [c for c in found if c.frame == fr]
        positives = [c for c in mine if c.label == 1]
        negatives = [c for c in mine if c.label == 0]
        assert len(positives) == len(fr.polyps)
        assert len(negatives) == round(10 * len(fr.polyps))  # about 10 per polyp
        width, height = Image.open(fr.path).size
        mask = polyp_mask(DEFAULT_ROOT, fr)
        assert mask.shape == (height, width)  # the image's own (JPEG) mask
        for c in negatives:
            b = c.box
            assert b.x >= 0 and b.x + b.width <= width and b.y >= 0 and b.y + b.height <= height
            assert all(iou(b, p) < 0.1 for p in fr.polyps)
    assert {c.kind for c in found} >= {"polyp", "near", "random"}


@needs_data
@pytest.mark.slow
def test_the_experiment_runs_its_rounds_on_the_new_sites_images(tmp_path: Path) -> None:
    """The CVC-ClinicDB experiment's tiny preset on 6 pool and 3 test images of Kvasir-SEG:
    every method's rounds, from one initial model, on this site's candidates."""
    import csv

    from experiments.cvc.run import ExperimentPreset, Split, run_all
    from experiments.kvasir.run import KvasirExperiment, kvasir_split

    full = kvasir_split()
    assert (len(full.pool), len(full.validation), len(full.test)) == (600, 150, 250)
    preset = ExperimentPreset("tiny", 64, "polyp:2", 1, 4, 2, (0,), batch_size=16, ratio=3.0)
    split = Split(pool=full.pool[:6], test=full.test[:3])
    exp = KvasirExperiment(tmp_path, preset, split, progress=False)
    run_all(exp, ["entropy_alpha", "random"], [0])
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert [r["labels"] for r in rows if r["method"] == "random"] == ["0", "4", "8"]
    assert len({r["test_auc"] for r in rows if r["round"] == "0"}) == 1


def test_the_explanation_counts_sources_kinds_and_near_duplicates_per_round(
    tmp_path: Path,
) -> None:
    import numpy as np

    from cad.labels.store import CandidateRecord, ImageRecord, open_store
    from experiments.cvc.explain import _key, explain_run

    store = open_store(f"sqlite:///{tmp_path / 'labels.sqlite3'}")
    boxes = {
        "a": [(0, 0, 10, 10), (1, 1, 10, 10), (50, 50, 10, 10)],  # two near-duplicates
        "b": [(0, 0, 20, 20)],
    }
    kinds = {}
    order = []
    for n, (image, bs) in enumerate(boxes.items()):
        store.record_classification(
            ImageRecord(image, f"sha-{image}", 1, 100, 100, n, "image", f"cvc-seq-{n}"),
            [
                CandidateRecord(
                    f"{image}{i}",
                    image,
                    "0",
                    *b,
                    "polyp",
                    "1",
                    0.5,
                    1.0,
                    0.0,
                    1.0,
                    np.full((4, 2), 0.5, dtype=np.float32),
                )
                for i, b in enumerate(bs)
            ],
        )
        for i, b in enumerate(bs):
            kinds[_key(f"cvc-seq-{n}", n, b)] = ("polyp", "near", "random", "edge")[len(kinds)]
            order.append(f"{image}{i}")
    from prometheus_client import CollectorRegistry

    from cad.labels.review import ReviewService
    from cad.metrics import ServiceMetrics

    review = ReviewService(store, ServiceMetrics(CollectorRegistry()))
    for c in order:  # round 1: a0, a1, a2; round 2: b0
        review.submit_correction(c, "FALSE_POSITIVE", "oracle", c)
    store.close()
    rows = explain_run(tmp_path, [3, 4], kinds)
    assert [(r["new"], r["sources"], r["max_per_source"]) for r in rows] == [(3, 1, 3), (1, 1, 1)]
    assert (rows[0]["polyp"], rows[0]["near"], rows[0]["random"]) == (1, 1, 1)
    assert rows[0]["near_duplicates"] == 2 and rows[1]["near_duplicates"] == 0
    assert rows[1]["edge"] == 1
