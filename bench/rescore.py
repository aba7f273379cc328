"""A round's re-scoring of the unlabeled pool against its size, this checkout against a baseline
revision in the same run (issue 39).

    .venv/bin/python -m bench.rescore --sizes 100000 --out docs/bench/rescore-cpu.json

For each backend (SQLite; a throwaway PostgreSQL where its binaries are installed) and pool size,
the store is filled with ``size`` unlabeled candidates of 8 patches (100 per image, 1 image in 100
distinct 64x64 synthetic images in the archive), a SqueezeNet version 2 is published, and each
revision's re-scoring (``--baseline-ref``, checked out as a git worktree, then this checkout) runs
in a child process of its own: the version scores the whole pool, and the store is reset to
version 1's scores between the two. The network's arithmetic is taken out (the batcher's predict
answers a constant), so what is measured is what the pool's size costs: reading the pool,
cutting every patch, writing every score; the network's own rate is measured apart, on real
patches, per core. Printed per revision: wall time, peak RSS (VmHWM), store round trips,
candidates and patches per second; the ratio of this checkout's to the baseline's; and the
extrapolation to 30 million candidates (assumptions in the report).

``--modes prescreen --network real``: a budget chosen by a whole-pool pre-screen on
``--prescreen`` patches a candidate, the network run for real (what a round costs end to end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.launch import ROOT, emit, revision_tree
from cad.labels.archive import ImageArchive
from cad.labels.store import CandidateRecord, ImageRecord, open_store

MODES = ("exact", "workers", "budget", "prescreen")
PER_IMAGE = 100
PATCHES = 8
IMAGES = 100

DRIVER = r"""
import json, sys, time
import numpy as np
try:  # a revision from before the domain package (issue 40) first: this checkout's cad is
    # installed, and would otherwise shadow the revision's own service.labels
    from service.labels.archive import ImageArchive
    from service.labels.store import open_store
    from service.labels.store.core import StoreCore
    from service.models.batcher import SerialBatcher
    from service.models.registry import ModelRegistry
except ImportError:
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from cad.labels.store.core import StoreCore
    from cad.models.batcher import SerialBatcher
    from cad.models.registry import ModelRegistry

url, archive, registry, shard, budget, prescreen, network, precision, threads = sys.argv[1:10]
window, window_top = (int(sys.argv[10]), float(sys.argv[11])) if len(sys.argv) > 11 else (0, 0.5)
shard = tuple(int(v) for v in shard.split("/")) if shard else None
if network != "real":
    SerialBatcher.predict = lambda self, model, x: np.tile(
        np.array([[0.7, 0.3]], dtype=np.float32), (len(x), 1)
    )
trips = [0]
real_run = StoreCore._run
def counted(self, body, *args, **kw):
    trips[0] += 1
    return real_run(self, body, *args, **kw)
StoreCore._run = counted
try:
    from trainer.rescore import rescore_pool
except ImportError:
    from trainer.round import rescore_pool
store = open_store(url)
kw = {"shard": shard} if shard else {}
selection_s = None
if int(prescreen):  # the choice is the pre-screen, inside the re-scoring's wall time
    kw |= {"budget": int(budget), "prescreen": int(prescreen), "prescreen_precision": precision,
           "threads": int(threads)}
    if window:  # a pre-screen of a window chosen off the indexes, not the whole pool
        kw |= {"prescreen_window": window, "window_top": window_top}
elif int(budget):
    kw["budget"] = int(budget)
    from trainer.rescore import budgeted_selection
    t = time.perf_counter()
    budgeted_selection(store, 2, int(budget))  # what the budget reads off the indexes, alone
    selection_s = time.perf_counter() - t
    trips[0] = 0
t0 = time.perf_counter()
done = rescore_pool(
    store, ImageArchive(archive), ModelRegistry(registry, "cad"), progress=False, **kw
)
wall = time.perf_counter() - t0
fresh_queue_s = None
if int(budget):  # the queue a fresh-first server serves now: version 2's own top, off its index
    try:
        from service.aift import VARIANTS
    except ImportError:
        from cad.aift import VARIANTS
    t = time.perf_counter()
    top = getattr(store, "queue", store).ranked_unlabeled(VARIANTS["entropy_alpha"], 20, fresh="2")
    fresh_queue_s = time.perf_counter() - t
    assert len(top) == 20
store.close()
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"scored": done, "wall_s": wall, "round_trips": trips[0], "selection_s": selection_s,
                  "fresh_queue_s": fresh_queue_s,
                  "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def fill(url: str, archive_root: Path, n: int, start: int = 0) -> None:
    """``n`` more unlabeled candidates (after the first ``start``) scored by version 1, over
    ``IMAGES`` archived images."""
    archive = ImageArchive(archive_root)
    rng = np.random.default_rng(0)
    shas = [
        archive.put(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[0] for _ in range(IMAGES)
    ]
    store = open_store(url)
    try:
        for b in range(start // PER_IMAGE, (start + n) // PER_IMAGE):
            rid = f"r{b:08d}"
            p = rng.random((PER_IMAGE, PATCHES)).astype(np.float32)
            probs = np.stack([1 - p, p], -1)
            store.record_classification(
                ImageRecord(rid, shas[b % IMAGES], 1, 64, 64, 0, "raw", f"exam-{b}"),
                [
                    CandidateRecord(
                        f"{rid}-{i:03d}",
                        rid,
                        "",
                        4,
                        4,
                        24,
                        24,
                        "polyp:8",
                        "1",
                        0.5,
                        0,
                        0,
                        0,
                        probs[i],
                    )  # fmt: skip
                    for i in range(PER_IMAGE)
                ],
                durable=False,
            )
    finally:
        store.close()


def reset(url: str) -> None:
    store = open_store(url)
    try:
        store._run(lambda cur: cur.execute("UPDATE candidates SET scored_version = '1'"))
    finally:
        store.close()


def run_revision(
    tree: Path,
    url: str,
    archive: Path,
    registry: Path,
    workers: int = 1,
    budget: int = 0,
    prescreen: int = 0,
    network: str = "constant",
    precision: str = "fp32",
    window: int = 0,
    window_top: float = 0.5,
) -> dict[str, Any]:
    """One re-scoring of the whole pool by ``workers`` processes at once (shard i/workers each,
    this checkout only when more than one), or of at most ``budget`` candidates (this checkout
    only; chosen by a pre-screen on ``prescreen`` patches a candidate if > 0); wall time is the
    last one's end. ``network``: "constant" takes the network's arithmetic out (a fixed answer),
    "real" runs it. ``precision``: the pre-screen's (fp32, int8). Several pre-screening workers
    run one ONNX Runtime thread each (the cores are theirs to share). ``window`` > 0: the
    pre-screen screens only that many (``CAD_RESCORE_PRESCREEN_WINDOW``), ``window_top`` of them
    the top as served."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CAD_TRUNK_CACHE_MB": "64"}
    shards = [[f"{i}/{workers}"] for i in range(workers)] if workers > 1 else [[""]]
    threads = "1" if workers > 1 else "0"
    shards = [
        [
            *shard,
            str(budget),
            str(prescreen),
            network,
            precision,
            threads,
            str(window),
            str(window_top),
        ]
        for shard in shards
    ]
    t0 = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, url, str(archive), str(registry), *shard],
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in shards
    ]
    results = []
    for child in children:
        out, err = child.communicate()
        if child.returncode:
            raise RuntimeError(f"re-scoring in {tree} failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    return {
        "scored": sum(r["scored"] for r in results),
        "wall_s": wall if workers > 1 else results[0]["wall_s"],
        "round_trips": sum(r["round_trips"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        **{k: results[0][k] for k in ("selection_s", "fresh_queue_s") if results[0].get(k)},
    }


def network_rate(registry: Path) -> dict[str, float]:
    """The published network's own rate on real 64-px patches, one intra-op thread (a core), in
    the batches the re-scoring runs (:data:`trainer.pool.ONNX_BATCH`): fp32, and int8
    quantised as a pre-screen quantises it."""
    from cad.models.model import load_model
    from cad.models.providers import SessionOptions
    from cad.models.registry import ModelRegistry
    from trainer.pool import ONNX_BATCH
    from trainer.quantize import reduced_model

    info = ModelRegistry(registry, "cad").get(2)
    x = np.random.default_rng(1).integers(0, 255, (512, 3, 64, 64)).astype(np.float32)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name, version in (
            ("patches_per_s_per_core", info),
            ("int8_patches_per_s_per_core", reduced_model(info, "int8", x[:256], Path(tmp))),
        ):
            model = load_model(version, SessionOptions(intra_op_threads=1))
            model.run(x[:ONNX_BATCH])
            best = 0.0
            for _ in range(3):  # the best of three passes: the least disturbed
                t0 = time.perf_counter()
                for i in range(0, len(x), ONNX_BATCH):
                    model.run(x[i : i + ONNX_BATCH])
                best = max(best, len(x) / (time.perf_counter() - t0))
            out[name] = round(best, 1)
    return out


def publish(registry: Path) -> None:
    """Version 1 (what scored the pool) and version 2 (what re-scores it): SqueezeNet, 64 px."""
    from trainer.bootstrap import init_model
    from trainer.settings import TrainerSettings

    for _ in range(2):
        init_model(
            TrainerSettings(
                registry_root=registry,
                input_size=64,
                recipe="polyp:8",
                architecture="squeezenet1_0",
                weights="random",
            ),
            force=True,
        )


def bench(
    sizes: list[int],
    backends: list[str],
    baseline_ref: str,
    modes: tuple[str, ...] = MODES,
    budget: int = 10_000,
    prescreens: tuple[int, ...] = (1,),
    network: str = "constant",
    precisions: tuple[str, ...] = ("fp32",),
    workers: tuple[int, ...] = (1,),
    windows: tuple[int, ...] = (0,),
    window_top: float = 0.5,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "baseline_ref": baseline_ref,
        "cores": os.cpu_count(),
        "modes": list(modes),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-rescore-") as tmp_name:
        tmp = Path(tmp_name)
        registry = tmp / "registry"
        publish(registry)
        report["network"] = network_rate(registry)
        with revision_tree(baseline_ref, tmp / "baseline") as baseline:
            for backend in backends:
                pg = None
                if backend == "sqlite":
                    url = f"sqlite:///{tmp / 'labels.sqlite3'}"
                else:
                    from support.pg import TempPostgres

                    pg = TempPostgres().start()
                    url = pg.new_database()
                try:
                    filled = 0
                    for size in sorted(sizes):
                        t0 = time.perf_counter()
                        fill(url, tmp / "archive", size - filled, filled)
                        filled = size
                        row: dict[str, Any] = {
                            "backend": backend,
                            "unlabeled": size,
                            "fill_s": round(time.perf_counter() - t0, 1),
                        }
                        if "exact" in modes:
                            for name, tree in (("baseline", baseline), ("this", ROOT)):
                                reset(url)
                                r = run_revision(tree, url, tmp / "archive", registry)
                                assert r["scored"] == size, r  # the whole pool, once
                                r["candidates_per_s"] = round(r["scored"] / r["wall_s"], 1)
                                r["patches_per_s"] = round(PATCHES * r["scored"] / r["wall_s"], 1)
                                row[name] = r
                            row["ratio_this_to_baseline"] = {
                                k: round(row["this"][k] / row["baseline"][k], 3)
                                for k in ("wall_s", "peak_rss_mb", "round_trips")
                            }
                        if "workers" in modes:
                            reset(url)
                            two = run_revision(ROOT, url, tmp / "archive", registry, workers=2)
                            assert two["scored"] == size  # the shards covered the pool once
                            row["this_2_workers"] = two
                            if "this" in row:
                                ratio = two["wall_s"] / row["this"]["wall_s"]
                                row["wall_2_workers_to_1"] = round(ratio, 3)
                        if "budget" in modes:
                            reset(url)
                            r = run_revision(ROOT, url, tmp / "archive", registry, budget=budget)
                            assert r["scored"] == min(budget, size), r
                            row["this_budgeted"] = {"budget": budget, **r}
                        for prescreen, precision, n, window in (
                            [
                                (p, q, w, m)
                                for p in prescreens
                                for q in precisions
                                for w in workers
                                for m in windows
                            ]
                            if "prescreen" in modes
                            else []
                        ):
                            reset(url)
                            r = run_revision(
                                ROOT,
                                url,
                                tmp / "archive",
                                registry,
                                workers=n,
                                budget=budget,
                                prescreen=prescreen,
                                network=network,
                                precision=precision,
                                window=window,
                                window_top=window_top,
                            )
                            assert abs(r["scored"] - min(budget, size)) < n, r  # budget/n each
                            screened = min(window, size) if window else size
                            patches = screened * prescreen + r["scored"] * PATCHES
                            name = f"this_prescreened_{prescreen}" + (
                                "" if (precision, n) == ("fp32", 1) else f"_{precision}_{n}w"
                            )
                            if window:
                                name += f"_window_{window}_top_{window_top:g}"
                            row[name] = {
                                "budget": budget,
                                "prescreen_patches": prescreen,
                                "precision": precision,
                                "workers": n,
                                "window": window,
                                "window_top": window_top if window else None,
                                "network": network,
                                "patches": patches,
                                "patches_per_s": round(patches / r["wall_s"], 1),
                                **r,
                            }
                            print(json.dumps({name: row[name]}), flush=True)
                        print(json.dumps(row), flush=True)
                        report["runs"].append(row)
                finally:
                    if pg is not None:
                        pg.stop()
    if "exact" in modes:
        report["extrapolation"] = extrapolate(report)
    return report


def extrapolate(report: dict[str, Any]) -> dict[str, Any]:
    """Hours for a re-scoring of 30 million candidates on one core: the network's measured rate
    at 8 patches per candidate plus the measured per-candidate cost of this checkout's pool
    handling at the largest size, both assumed linear (the pages make memory flat)."""
    rate = report["network"]["patches_per_s_per_core"]
    largest = max(report["runs"], key=lambda r: r["unlabeled"])
    per_candidate = largest["this"]["wall_s"] / largest["this"]["scored"]
    n = 30_000_000
    hours = n * (PATCHES / rate + per_candidate) / 3600
    return {
        "candidates": n,
        "assumptions": "8 patches per candidate at the measured network rate on one core, "
        "SqueezeNet at 64 px; pool handling at the largest measured size's rate per candidate; "
        "both linear in the pool",
        "hours_one_core": round(hours, 1),
        "hours_16_cores": round(hours / 16, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--baseline-ref", default="5338d89")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="exact: the whole pool, baseline and this checkout; workers: 2 shards at once; "
        "budget: a budgeted re-scoring (--budget candidates); prescreen: a budget chosen by a "
        "whole-pool pre-screen (--prescreen patches a candidate)",
    )
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--prescreen", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--network",
        choices=("constant", "real"),
        default="constant",
        help="prescreen mode: take the network's arithmetic out (constant) or run it (real)",
    )
    parser.add_argument(
        "--prescreen-precision",
        nargs="+",
        choices=("fp32", "int8"),
        default=["fp32"],
        help="prescreen mode: the pre-screen's arithmetic",
    )
    parser.add_argument(
        "--prescreen-workers",
        type=int,
        nargs="+",
        default=[1],
        help="prescreen mode: workers sharing it (shard I/N each, one ONNX Runtime thread each)",
    )
    parser.add_argument(
        "--prescreen-window",
        type=int,
        nargs="+",
        default=[0],
        help="prescreen mode: screen only this many, chosen off the indexes (0: the whole pool)",
    )
    parser.add_argument(
        "--prescreen-window-top",
        type=float,
        default=0.5,
        help="prescreen mode: the window's share taken from the top as served",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = bench(
        args.sizes,
        args.backends,
        args.baseline_ref,
        tuple(args.modes),
        args.budget,
        tuple(args.prescreen),
        args.network,
        tuple(args.prescreen_precision),
        tuple(args.prescreen_workers),
        tuple(args.prescreen_window),
        args.prescreen_window_top,
    )
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
