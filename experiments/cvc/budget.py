"""Budgeted re-scoring against exact re-scoring (issue 39): a method ending ``_budget`` re-scores
at most ``BUDGET_SHARE`` of the pool after each round (``CAD_RESCORE_BUDGET``:
:func:`trainer.rescore.budgeted_selection`), the rest keeping the scores they had, and its queue
ranks what the serving version scored first (``CAD_QUEUE_FRESH_FIRST``). After each
such round a copy of the run's store is re-scored exactly, and the queue's top 20 and 100 under
the two are compared; the report sets the budgeted method's learning curve beside its exact
twin's, paired by seed (``budget.csv``, ``budget.md``, ``budget.json``).
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cvc.peak import alc, paired

BUDGET = "_budget"
BUDGET_SHARE = 0.2
"""The budget of a ``_budget`` method: this share of the pool's candidates per round."""
PRESCREEN = 0
"""Patches a candidate of a ``_budget`` method's whole-pool pre-screen (0: none)."""
WINDOW_SHARE = 0.0
"""With a pre-screen: it screens only a window of this share of the pool, chosen off the indexes
(``CAD_RESCORE_PRESCREEN_WINDOW``; ``CAD_RESCORE_PRESCREEN_WINDOW_TOP`` of it the top as served;
0: the whole pool)."""
TOPS = (20, 100)
FIELDS: tuple[str, ...] = (
    "method",
    "seed",
    "round",
    "pool",
    "rescored",
    "exact_rescored",
    "exact_seconds",
)
FIELDS += tuple(f"top{k}" for k in TOPS)


def budget_of(pool_size: int) -> int:
    return max(1, math.ceil(BUDGET_SHARE * pool_size))


def window_of(pool_size: int) -> int:
    return math.ceil(WINDOW_SHARE * pool_size) if PRESCREEN else 0


def measure_overlap(ws: Path, variant: str, depth: str | None) -> dict[str, Any]:
    """The queue's top 20 and 100 by ``variant`` as the budgeted re-scoring left them, and their
    share found again once a copy of the run's store is re-scored exactly."""
    from cad.aift import VARIANTS
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from cad.models.registry import ModelRegistry
    from trainer.rescore import rescore_pool

    with tempfile.TemporaryDirectory(dir=ws) as tmp:
        copy = Path(tmp) / "labels.sqlite3"
        src, dst = sqlite3.connect(ws / "labels.sqlite3"), sqlite3.connect(copy)
        try:
            src.backup(dst)  # the WAL's pages too, which a file copy could miss
        finally:
            src.close()
            dst.close()
        store = open_store(f"sqlite:///{copy}")
        try:
            spec = VARIANTS[variant]
            top = max(TOPS)
            pool = store.pool.pool_count()
            registry = ModelRegistry(ws / "registry", "cad").with_pins_in(store)
            fresh = str(registry.target())  # the budgeted queue as served: fresh scores first
            budgeted = [
                e.candidate_id for e, _ in store.queue.ranked_unlabeled(spec, top, fresh=fresh)
            ]
            t = time.perf_counter()
            exact_rescored = rescore_pool(
                store, ImageArchive(ws / "archive"), registry, progress=False, depth=depth
            )
            seconds = time.perf_counter() - t
            exact = [e.candidate_id for e, _ in store.queue.ranked_unlabeled(spec, top)]
        finally:
            store.close()
    out: dict[str, Any] = {
        "pool": pool,
        "exact_rescored": exact_rescored,
        "exact_seconds": f"{seconds:.1f}",
    }
    for k in TOPS:
        found = len(set(budgeted[:k]) & set(exact[:k]))
        out[f"top{k}"] = f"{found / max(1, min(k, len(exact))):.3f}"
    return out


def append(out: Path, row: dict[str, Any]) -> None:
    path = out / "budget.csv"
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def summarise(out: Path) -> dict[str, Any] | None:
    """Per budgeted method: the top-k overlap over rounds, the share of the pool re-scored, and
    the paired difference to its exact twin in log-axis ALC and final AUC (validation and test
    columns), or None when nothing was budgeted."""
    path = out / "budget.csv"
    if not path.exists():
        return None
    with path.open() as fh:
        overlap = list(csv.DictReader(fh))
    with (out / "curves.csv").open() as fh:
        curves = list(csv.DictReader(fh))
    by: dict[str, dict[int, dict[int, dict[str, str]]]] = defaultdict(lambda: defaultdict(dict))
    for r in curves:
        by[r["method"]][int(r["seed"])][int(r["round"])] = r
    result: dict[str, Any] = {
        "budget_share": BUDGET_SHARE,
        "prescreen": PRESCREEN,
        "window_share": WINDOW_SHARE if PRESCREEN else 0.0,
        "methods": {},
    }
    for method in sorted({r["method"] for r in overlap}):
        twin = method[: -len(BUDGET)]
        rows = [r for r in overlap if r["method"] == method]
        m: dict[str, Any] = {
            "twin": twin,
            "rounds_measured": len(rows),
            "rescored_share": float(
                np.mean([_num(r["rescored"]) / max(1, _num(r["pool"])) for r in rows])
            ),
        }
        for k in TOPS:
            v = np.array([_num(r[f"top{k}"]) for r in rows])
            m[f"top{k}"] = {"mean": float(v.mean()), "min": float(v.min())}
        for col in ("val_auc", "test_auc"):
            diffs, finals = [], []
            for seed, own in by[method].items():
                exact = by[twin].get(seed)
                if not exact:
                    continue
                rounds = sorted(set(own) & set(exact) - {0})
                if not rounds:
                    continue
                labels = np.array([_num(exact[r]["labels"]) for r in rounds])
                a = np.array([_num(own[r][col]) for r in rounds])
                b = np.array([_num(exact[r][col]) for r in rounds])
                if np.isnan(a).any() or np.isnan(b).any():
                    continue
                diffs.append(alc(labels, a, log=True) - alc(labels, b, log=True))
                finals.append(a[-1] - b[-1])
            if diffs:
                m[f"paired_alc_log_{col}"] = paired(np.array(diffs))
                m[f"paired_final_{col}"] = paired(np.array(finals))
        result["methods"][method] = m
    return result


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "## Budgeted re-scoring against exact re-scoring",
        "",
        f"Each round re-scores at most {summary['budget_share']:.0%} of the pool: "
        + (
            (
                f"the top of a pre-screen on {summary['prescreen']} patches a candidate of "
                + (
                    f"a window of {summary['window_share']:.0%} of the pool chosen off the indexes"
                    if summary.get("window_share")
                    else "the whole pool"
                )
            )
            if summary.get("prescreen")
            else "half the top of the ranking, a quarter the newest arrivals, the rest a uniform "
            "sample"
        )
        + "; the others keep their scores. Overlap: the share of the queue's top k after exact re-scoring (of a copy) "
        "that the budgeted queue held. Paired by seed against the same ranking re-scored "
        "exactly (a tie when mean ± 2 standard errors holds 0).",
        "",
        "| method | rounds | re-scored share | top 20 mean (min) | top 100 mean (min) | "
        "log-ALC vs exact, validation | test | final AUC vs exact, validation | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pair(p: dict[str, Any] | None) -> str:
        if not p:
            return "-"
        return (
            f"{p['mean']:+.4f} ± {p['std']:.4f}, {p['wins']}/{p['seeds']} ({p['verdict']})"
            if p["seeds"] > 1
            else f"{p['mean']:+.4f} (one seed)"
        )

    for name, m in summary["methods"].items():
        lines.append(
            f"| {name} | {m['rounds_measured']} | {m['rescored_share']:.0%} | "
            f"{m['top20']['mean']:.2f} ({m['top20']['min']:.2f}) | "
            f"{m['top100']['mean']:.2f} ({m['top100']['min']:.2f}) | "
            f"{pair(m.get('paired_alc_log_val_auc'))} | {pair(m.get('paired_alc_log_test_auc'))} | "
            f"{pair(m.get('paired_final_val_auc'))} | {pair(m.get('paired_final_test_auc'))} |"
        )
    return "\n".join(lines) + "\n"


def write(out: Path) -> str | None:
    summary = summarise(out)
    if summary is None:
        return None
    text = markdown(summary)
    (out / "budget.md").write_text(text)
    (out / "budget.json").write_text(json.dumps(summary, indent=2))
    return text
