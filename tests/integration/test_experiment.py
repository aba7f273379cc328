"""The CVC-ClinicDB experiment on a tiny slice of the real data (skipped when the data is absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cad.labels.store import open_store
from cad.models.registry import ModelRegistry
from experiments.cvc.pool import DEFAULT_ROOT, field_of_view, generate, iou, load_frames

pytestmark = pytest.mark.slow

needs_data = pytest.mark.skipif(
    not (DEFAULT_ROOT / "sequences.csv").is_file(),
    reason="../shared/data/cvc-clinicdb is not beside this checkout",
)


@needs_data
def test_candidate_generator_imitates_a_cad() -> None:
    from PIL import Image

    frames = [f for f in load_frames() if f.sequence in (10, 23)]
    cands = generate(frames, k_negatives=3, seed=1)
    pos = [c for c in cands if c.label == 1]
    neg = [c for c in cands if c.label == 0]
    assert len(pos) == sum(len(f.polyps) for f in frames) and len(neg) == 3 * len(frames)
    for c in neg:
        assert all(iou(c.box, p) < 0.1 for p in c.frame.polyps)
        mask = field_of_view(np.asarray(Image.open(c.frame.path).convert("RGB")))
        x, y = int(c.box.x), int(c.box.y)
        assert mask[y : y + int(c.box.height), x : x + int(c.box.width)].mean() >= 0.95
    sizes = {(p.width, p.height) for f in frames for p in f.polyps}
    assert all((c.box.width, c.box.height) in sizes for c in neg)
    for c in pos:  # jittered, but on the polyp
        assert max(iou(c.box, p) for p in c.frame.polyps) > 0.8
    assert generate(frames, 3, seed=1) == cands  # seeded


@needs_data
def test_tiny_experiment_runs_resumes_and_reports(tmp_path: Path) -> None:
    from experiments.cvc.report import write_report
    from experiments.cvc.run import Experiment, ExperimentPreset, Split, run_all

    preset = ExperimentPreset("tiny", 64, "polyp:2", 1, 4, 2, (0,), batch_size=16)
    exp = Experiment(tmp_path, preset, Split(pool=[10, 23], test=[4]), progress=False)
    methods = ["entropy_diversity_alpha", "random", "scratch"]
    run_all(exp, methods, [0])
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert {(r["method"], r["round"]) for r in rows} >= {
        (m, str(i)) for m in methods for i in range(3)
    }
    initial = {r["test_auc"] for r in rows if r["round"] == "0"}
    assert len(initial) == 1  # every method starts from the same initial model
    assert [r["labels"] for r in rows if r["method"] == "random"] == ["0", "4", "8"]
    full = [r for r in rows if r["method"] == "full"]
    assert len(full) == 1 and int(full[0]["labels"]) > 8

    def labeled(method: str) -> set[str]:
        store = open_store(f"sqlite:///{tmp_path / 'runs' / f'{method}-s0' / 'labels.sqlite3'}")
        try:
            events = store.labels.events()
            assert {e.reviewer for e in events} == {"oracle"}
            return {e.candidate_id for e in events}
        finally:
            store.close()

    assert labeled("random") == labeled("scratch")  # scratch trains on IFT Random's labeled sets
    scratch = ModelRegistry(tmp_path / "runs" / "scratch-s0" / "registry", "cad")
    training = scratch.get(scratch.latest()).manifest.training  # type: ignore[arg-type]
    assert training is not None and training["round"] == "scratch"

    run_all(exp, methods, [0])  # resume: nothing is redone
    assert len(list(csv.DictReader((tmp_path / "curves.csv").open()))) == len(rows)
    text = write_report(tmp_path)
    assert "| random |" in text and (tmp_path / "curves.png").stat().st_size > 10_000
    assert (
        "Initial model: alexnet from random initialisation" in text
    )  # no ImageNet AlexNet in tests


@needs_data
def test_a_budgeted_run_measures_its_queue_top_against_exact_rescoring(tmp_path: Path) -> None:
    from experiments.cvc.budget import BUDGET_SHARE
    from experiments.cvc.report import write_report
    from experiments.cvc.run import Experiment, ExperimentPreset, Split, run_all

    preset = ExperimentPreset("tiny", 64, "polyp:2", 1, 4, 3, (0,), batch_size=16)
    exp = Experiment(tmp_path, preset, Split(pool=[10, 23], test=[4]), progress=False)
    run_all(exp, ["entropy_alpha", "entropy_alpha_budget"], [0], reference=False)
    rows = list(csv.DictReader((tmp_path / "budget.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]  # every round that re-scores; the last does not
    for r in rows:
        pool = int(r["pool"])
        # a fifth of the run's candidates, not the whole pool
        assert 0 < int(r["rescored"]) <= BUDGET_SHARE * 2 * pool < pool
        assert int(r["rescored"]) + int(r["exact_rescored"]) == pool  # the copy scored the rest
        assert 0.0 <= float(r["top20"]) <= 1.0 and 0.0 <= float(r["top100"]) <= 1.0
    text = write_report(tmp_path)
    assert "Budgeted re-scoring against exact re-scoring" in text
    assert "| entropy_alpha_budget | 2 |" in text


def test_variants_that_majority_selection_degenerates_are_named() -> None:
    from cad.aift import aift_scores, degenerate_variants, parse_recipe
    from experiments.cvc.run import PRESETS

    for name in ("quick", "standard", "paper"):  # 8+ patches per candidate: alpha keeps 2 or more
        assert degenerate_variants(parse_recipe(PRESETS[name].recipe).count) == {}
    four = degenerate_variants(4)
    assert set(four) == {"diversity_alpha", "entropy_diversity_alpha"}
    assert "entropy alone" in four["entropy_diversity_alpha"]
    # What the note claims, on real scoring: 4 patches, alpha 1/4.
    probs = np.random.default_rng(0).uniform(0.05, 0.95, size=(50, 4))
    assert not aift_scores(probs, "diversity_alpha").any()
    assert np.array_equal(
        aift_scores(probs, "entropy_diversity_alpha"), aift_scores(probs, "entropy_alpha")
    )
    assert aift_scores(probs, "diversity").any()


def test_the_report_states_the_initial_model(tmp_path: Path) -> None:

    from experiments.cvc.report import markdown, summarise

    rows = ["method,seed,round,labels,test_auc,version,seconds"]
    rows += [
        f"{m},0,{r},{10 * r},{0.6 + 0.05 * r},{r + 1},1"
        for m in ("random", "entropy")
        for r in range(3)
    ]
    (tmp_path / "curves.csv").write_text("\n".join(rows) + "\n")
    assert markdown(summarise(tmp_path)).startswith("Initial model: not recorded.")
    onnx_model = tmp_path / "model.onnx"
    onnx_model.write_bytes(b"not loaded")
    ModelRegistry(tmp_path / "template" / "registry", "cad").publish(
        {"model.onnx": onnx_model},
        {"input_size": 32, "pretrained": {"source": "imagenet", "path": "w.pth"}},
    )
    summary = summarise(tmp_path)
    assert summary["initial_model"]["source"] == "imagenet"
    assert markdown(summary).startswith("Initial model: alexnet with ImageNet weights.")


@needs_data
def test_cad_like_pool_has_hard_negatives_and_clean_boxes() -> None:
    from collections import Counter

    from experiments.cvc.pool import HARD_KINDS, generate_pool, polyp_mask

    frames = [f for f in load_frames() if f.sequence in (10, 23)]
    cands = generate_pool(frames, seed=3, ratio=10.0, hard_fraction=0.5)
    assert generate_pool(frames, seed=3, ratio=10.0, hard_fraction=0.5) == cands  # seeded
    kinds = Counter(c.kind for c in cands)
    polyps = sum(len(f.polyps) for f in frames)
    negatives = len(cands) - kinds["polyp"]
    assert kinds["polyp"] == polyps  # every polyp kept, small ones included
    assert 8 * polyps <= negatives <= 10 * polyps
    # hard negatives: 48% on these two sequences (a few frames cannot offer five), exactly half over
    # the whole development pool and test set (docs/results/cvc-quick/pool.json); every kind present
    assert sum(kinds[k] for k in HARD_KINDS) >= 0.4 * negatives and all(
        kinds[k] > 0 for k in HARD_KINDS
    )
    from PIL import Image

    for c in cands:
        if c.label:
            continue
        assert all(iou(c.box, p) < 0.1 for p in c.frame.polyps)
        x0, y0 = round(c.box.x), round(c.box.y)
        x1, y1 = round(c.box.x + c.box.width), round(c.box.y + c.box.height)
        mask = polyp_mask(DEFAULT_ROOT, c.frame)[y0:y1, x0:x1]
        fov = field_of_view(np.asarray(Image.open(c.frame.path).convert("RGB")))[y0:y1, x0:x1]
        assert mask.mean() <= 0.03 and fov.mean() >= 0.9


@needs_data
def test_a_round_from_the_shipped_imagenet_squeezenet_learns(tmp_path: Path) -> None:
    """CI scale: ~90 candidates of 2 pool sequences, one round of 24 labels, tested on 2 other
    sequences, seed 0. Measured with seeds 0, 1, 2: test AUC 0.245 -> 0.688 / 0.784 / 0.752, training
    loss first -> last epoch 1.19 -> 0.10 / 3.11 -> 0.73 / 1.44 -> 0.01: wide margins on every seed."""
    from experiments.cvc.run import Experiment, ExperimentPreset, Split, run_all

    preset = ExperimentPreset(
        "tiny-imagenet",
        64,
        "polyp-inside:8",
        0,
        24,
        1,
        (0,),
        "polyp-squeezenet",
        "fire9",
        64,
        architecture="squeezenet1_0",
        weights="imagenet",
        ratio=3.0,
    )
    exp = Experiment(tmp_path, preset, Split(pool=[10, 23], test=[4, 12]), progress=False)
    run_all(exp, ["random"], [0], reference=False)
    rows = {r["round"]: r for r in csv.DictReader((tmp_path / "curves.csv").open())}
    first, last = float(rows["1"]["train_loss_first"]), float(rows["1"]["train_loss"])
    assert last < 0.7 * first
    assert float(rows["1"]["test_auc"]) > float(rows["0"]["test_auc"]) + 0.1
    assert int(rows["1"]["positives"]) >= 1 and int(rows["1"]["labels"]) == 24


def test_the_experiment_lives_apart_from_the_product() -> None:
    """Research is kept out of the product: no module of service, trainer, reviewui or cadcli
    imports the experiments, which run from a checkout with their own entry point."""
    import ast
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for package in ("cad", "service", "trainer", "reviewui", "cadcli"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not any(n.split(".")[0] == "experiments" for n in names), path
    run = subprocess.run(
        [sys.executable, "-m", "experiments.cvc", "run", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "--preset" in run.stdout
    from cadcli.main import main

    assert main(["experiment", "run"]) == 2  # says where it went
