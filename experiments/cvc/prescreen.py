"""How well a pre-screen on a candidate's first patches finds the exact ranking's top (issue 39),
read off runs whose pool a version scored exactly on every patch: no network is run.

    .venv/bin/python -m experiments.cvc.prescreen results/cvc-budget/runs/entropy_alpha-s* \\
        --out docs/results/cvc-budget/prescreen-offline.csv

For each run's store, the unlabeled candidates' stored patch predictions (the last version's
exact re-scoring) give the exact ranking (``CAD_RESCORE_ORDER``'s default, entropy_alpha); the
same variant computed from the first ``k`` patches only is the pre-screen's ranking. Printed per
run, ``k`` and budget share: the share of the exact top 20 and top 100 that the pre-screen's top
``share`` of the pool holds, which is what a queue served after a pre-screened budget holds (the
budget is then scored exactly, so its top is the exact top of what it holds).
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

from cad.aift import DEFAULT_VARIANT, parse_recipe
from cad.aift.scoring import aift_scores

PATCHES = (1, 2, 4)
SHARES = (0.05, 0.1, 0.2)
TOPS = (20, 100)


def recall_rows(run: Path, patches: tuple[int, ...] = PATCHES) -> list[dict[str, object]]:
    con = sqlite3.connect(f"file:{run / 'labels.sqlite3'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT patch_probs, patch_shape, scored_version FROM candidates WHERE label IS NULL "
            "AND origin = 'model' AND patch_probs IS NOT NULL ORDER BY candidate_id"
        ).fetchall()
    finally:
        con.close()
    if not rows:
        print(f"{run}: no scored unlabeled candidates (a run to the whole pool)", file=sys.stderr)
        return []
    probs = np.stack([np.frombuffer(b, dtype="<f4").reshape(json.loads(s)) for b, s, _ in rows])
    versions = sorted({v for _, _, v in rows})
    exact = np.argsort(-aift_scores(probs, DEFAULT_VARIANT), kind="stable")
    out: list[dict[str, object]] = []
    for k in patches:
        proxy = np.argsort(-aift_scores(probs[:, :k], DEFAULT_VARIANT), kind="stable")
        for share in SHARES:
            chosen = set(proxy[: int(share * len(rows))].tolist())
            row: dict[str, object] = {
                "run": run.name,
                "pool": len(rows),
                "versions": "+".join(versions),
                "patches": k,
                "of_patches": probs.shape[1],
                "share": share,
            }
            for top in TOPS:
                found = len(chosen & set(exact[:top].tolist()))
                row[f"top{top}"] = f"{found / min(top, len(rows)):.2f}"
            out.append(row)
    return out


PRECISIONS = ("fp32", "int8")


def live_rows(
    run: Path,
    patches: tuple[int, ...] = (2,),
    precisions: tuple[str, ...] = PRECISIONS,
    windows: tuple[float, ...] = (1.0,),
    window_tops: tuple[float, ...] = (0.5,),
    shares: tuple[float, ...] = SHARES,
) -> list[dict[str, object]]:
    """The same measure with the network run (``--live``): the run's latest version scores its
    unlabeled pool exactly (every patch, fp32, its ONNX model as servers run it), and the
    product's own pre-screen (:func:`trainer.prescreen.prescreened_selection`, an int8 one
    quantised as a round quantises it) chooses each share of the pool. ``windows`` below 1: the
    pre-screen screens only that share of the pool, chosen off the indexes as a round with
    ``CAD_RESCORE_PRESCREEN_WINDOW`` chooses it (the version that scored the stored pool as
    the previous one), ``window_tops`` its share taken from the top as served
    (``CAD_RESCORE_PRESCREEN_WINDOW_TOP``)."""
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from cad.models.registry import ModelRegistry
    from trainer.data import pool_example
    from trainer.pool import RESCORE_PAGE, archived, onnx_scorer, pool_pages
    from trainer.prescreen import prescreened_selection, screening
    from trainer.rescore import budgeted_selection

    archive = ImageArchive(run / "archive")
    registry = ModelRegistry(run / "registry", "cad")
    version = registry.latest()
    if version is None:
        print(f"{run}: no published version", file=sys.stderr)
        return []
    info = registry.get(version)
    store = open_store(f"sqlite:///{run / 'labels.sqlite3'}")
    try:
        pool = [
            e
            for page in pool_pages(store, RESCORE_PAGE, None, None)
            for e in archived([pool_example(r) for r in page], archive)[0]
        ]
        exact_scores = aift_scores(np.stack(onnx_scorer(info, archive)(pool)), DEFAULT_VARIANT)
        order = np.lexsort(
            (np.array([e.candidate_id for e in pool]), -exact_scores)
        )  # the queue's order
        exact = [pool[i].candidate_id for i in order]
        scored = store.pool.scored_versions()
        previous = max(scored, key=lambda v: scored[v]) if scored else None
        out: list[dict[str, object]] = []
        grid = [
            (p, k, w, t)
            for p in precisions
            for k in patches
            for w in windows
            for t in (window_tops if w < 1 else (0.0,))
        ]
        for precision, k, w, top_share in grid:
            window = (
                budgeted_selection(store, version, int(w * len(pool)), DEFAULT_VARIANT, False,
                                   previous, top_share)
                if w < 1 else None
            )  # fmt: skip
            with screening(registry, info, store, archive, k, precision, 0, None) as screen:
                score = screen or onnx_scorer(info, archive)
                for share in (s for s in shares if s < w):
                    chosen = set(
                        prescreened_selection(
                            store, archive, score, version, int(share * len(pool)), k,
                            progress=False, window=window,
                        )
                    )  # fmt: skip
                    row: dict[str, object] = {
                        "run": run.name,
                        "pool": len(pool),
                        "versions": str(version),
                        "patches": k,
                        "of_patches": parse_recipe(info.manifest.recipe).count,
                        "precision": precision,
                        "window": w,
                        "window_top": top_share if w < 1 else "",
                        "share": share,
                    }
                    for top in TOPS:
                        found = len(chosen & set(exact[:top]))
                        row[f"top{top}"] = f"{found / min(top, len(pool)):.2f}"
                    out.append(row)
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with labels.sqlite3)")
    parser.add_argument("--patches", type=int, nargs="+", default=list(PATCHES))
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the network: the latest version's exact ranking against the product's "
        "pre-screen in each --precision (instead of reading stored predictions)",
    )
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument(
        "--window",
        type=float,
        nargs="+",
        default=[1.0],
        help="--live: screen only this share of the pool, chosen off the indexes (1: all of it)",
    )
    parser.add_argument(
        "--window-top",
        type=float,
        nargs="+",
        default=[0.5],
        help="--live: each window's share taken from the top as served",
    )
    parser.add_argument(
        "--shares",
        type=float,
        nargs="+",
        help="--live: budgets as shares of the pool (default: 0.05 0.1 0.2)",
    )
    parser.add_argument("--out", type=Path, help="write the rows to this CSV as well")
    args = parser.parse_args(argv)
    rows = [
        r
        for run in args.runs
        for r in (
            live_rows(
                run,
                tuple(args.patches),
                tuple(args.precision),
                tuple(args.window),
                tuple(args.window_top),
                tuple(args.shares or SHARES),
            )
            if args.live
            else recall_rows(run, tuple(args.patches))
        )
    ]
    if not rows:
        print("no runs", file=sys.stderr)
        return 2
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        with args.out.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
