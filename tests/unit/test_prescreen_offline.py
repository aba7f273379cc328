"""The offline pre-screen measure (experiments.cvc.prescreen) on a store it can read."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np


def write_run(run: Path, probs: np.ndarray) -> None:
    run.mkdir()
    con = sqlite3.connect(run / "labels.sqlite3")
    con.execute(
        "CREATE TABLE candidates (candidate_id TEXT, label INTEGER, origin TEXT, "
        "patch_probs BLOB, patch_shape TEXT, scored_version TEXT)"
    )
    for i, p in enumerate(probs):
        arr = np.ascontiguousarray(np.stack([1 - p, p], axis=-1), dtype="<f4")
        con.execute(
            "INSERT INTO candidates VALUES (?, NULL, 'model', ?, ?, '3')",
            (f"c{i:04d}", arr.tobytes(), json.dumps(list(arr.shape))),
        )
    con.execute("INSERT INTO candidates VALUES ('labeled', 1, 'model', NULL, NULL, '3')")
    con.commit()
    con.close()


def test_every_patch_finds_the_whole_top_and_a_misleading_first_patch_finds_none(
    tmp_path: Path,
) -> None:
    from experiments.cvc.prescreen import recall_rows

    rng = np.random.default_rng(0)
    n = 1000
    # the exact top: the 100 whose patches 2..8 sit near 0.5; their first patch is sure (0.01),
    # and the rest have a first patch near 0.5 and sure others
    uncertain = rng.uniform(0.45, 0.55, (n, 8))
    sure = rng.uniform(0.0, 0.05, (n, 8))
    probs = np.where(np.arange(n)[:, None] < 100, uncertain, sure)
    probs[:100, 0] = 0.01
    probs[100:, 0] = 0.5
    write_run(tmp_path / "run", probs)
    rows = {(r["patches"], r["share"]): r for r in recall_rows(tmp_path / "run", (1, 8))}
    assert rows[(8, 0.1)]["top100"] == "1.00" and rows[(8, 0.1)]["top20"] == "1.00"
    assert rows[(1, 0.1)]["top100"] == "0.00"  # the first patch alone points elsewhere
    assert rows[(8, 0.05)]["top100"] == "0.50"  # a budget of 50 holds half the top 100
    assert rows[(8, 0.1)]["pool"] == n and rows[(8, 0.1)]["versions"] == "3"
