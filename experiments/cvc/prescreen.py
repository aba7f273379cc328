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

from cad.aift import DEFAULT_VARIANT
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with labels.sqlite3)")
    parser.add_argument("--patches", type=int, nargs="+", default=list(PATCHES))
    parser.add_argument("--out", type=Path, help="write the rows to this CSV as well")
    args = parser.parse_args(argv)
    rows = [r for run in args.runs for r in recall_rows(run, tuple(args.patches))]
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
