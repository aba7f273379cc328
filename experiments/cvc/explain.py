"""What a ranking chose, round by round: from each run's own label store (the labels in the order
reviewers gave them) and the generator's record of what every candidate is.

Per method, seed and round, of the round's new labels: how many distinct sources (a video
sequence; on a site without sequences, an image) they came from and the most from one source;
how many of each kind (``polyp``; the hard negatives ``near`` (a box beside a polyp), ``specular``,
``bump``, ``edge``; ``random`` background); and near-duplicates: labels of the round whose box
overlaps another of the same round on the same image (IoU >= 0.5), the redundancy a batch of the
top-``b`` can carry. Written as ``explain.csv`` and a Markdown table of means over seeds.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cad.aift import Box
from cad.labels.store import open_store
from experiments.cvc.pool import iou
from experiments.cvc.run import CANDIDATE_SEED, Experiment

KINDS = ("polyp", "near", "specular", "bump", "edge", "random")
FIELDS = (
    "method",
    "seed",
    "round",
    "labels",
    "new",
    "sources",
    "max_per_source",
    *KINDS,
    "near_duplicates",
)


def _key(source: str, frame: int, box: Sequence[float]) -> tuple[Any, ...]:
    return (source, frame, *(round(float(v), 2) for v in box))


def kinds_of(exp: Experiment) -> dict[tuple[Any, ...], str]:
    """Every pool candidate's kind by (source id, frame, box), from the generator (seeded: the
    same candidates the template classified)."""
    out = {}
    for c in exp._generate(exp.split.pool, CANDIDATE_SEED):
        b = c.box
        kind = c.kind or ("polyp" if c.label else "random")
        out[_key(f"cvc-seq-{c.frame.sequence}", c.frame.frame, (b.x, b.y, b.width, b.height))] = (
            kind
        )
    return out


def explain_run(
    ws: Path, schedule: Sequence[int], kinds: dict[tuple[Any, ...], str]
) -> list[dict[str, Any]]:
    """One run's rounds (``schedule``: labels in hand after each round)."""
    store = open_store(f"sqlite:///{ws / 'labels.sqlite3'}")
    try:
        labeled = list(store.queue.labeled())
    finally:
        store.close()
    rows = []
    start = 0
    for r, end in enumerate(schedule, start=1):
        batch = labeled[start:end]
        if not batch:
            break
        sources = Counter(x.image.source_id for x in batch)
        kind = Counter(
            kinds.get(
                _key(
                    x.image.source_id,
                    x.image.frame_index,
                    (x.candidate.x, x.candidate.y, x.candidate.width, x.candidate.height),
                ),
                "random",
            )
            for x in batch
        )
        by_image: dict[str, list[Box]] = defaultdict(list)
        for x in batch:
            c = x.candidate
            by_image[x.image.request_id].append(Box(c.x, c.y, c.width, c.height))
        duplicates = sum(
            1
            for boxes in by_image.values()
            for i, a in enumerate(boxes)
            if any(iou(a, b) >= 0.5 for j, b in enumerate(boxes) if j != i)
        )
        rows.append(
            {
                "round": r,
                "labels": end,
                "new": len(batch),
                "sources": len(sources),
                "max_per_source": max(sources.values()),
                **{k: kind.get(k, 0) for k in KINDS},
                "near_duplicates": duplicates,
            }
        )
        start = end
    return rows


def explain(exp: Experiment, methods: Sequence[str] | None = None) -> Path:
    """explain.csv and explain.md for every finished run of ``exp``; returns the CSV's path."""
    kinds = kinds_of(exp)
    with (exp.out / "curves.csv").open() as fh:
        curves = list(csv.DictReader(fh))
    done: dict[tuple[str, int], list[int]] = defaultdict(list)
    for row in curves:
        if int(row["round"]) > 0:
            done[(row["method"], int(row["seed"]))].append(int(row["labels"]))
    rows = []
    for (method, seed), labels in sorted(done.items()):
        if method == "full" or (methods and method not in methods):
            continue
        ws = exp.out / "runs" / f"{method}-s{seed}"
        if not (ws / "labels.sqlite3").is_file():
            continue
        for row in explain_run(ws, sorted(labels), kinds):
            rows.append({"method": method, "seed": seed, **row})
    path = exp.out / "explain.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (exp.out / "explain.md").write_text(markdown(rows))
    return path


def markdown(rows: list[dict[str, Any]]) -> str:
    """Means over seeds per method and round: share of new labels by kind, sources, duplicates."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["round"])].append(row)
    head = (
        "| method | round | labels | new | sources | most from one source | "
        + " | ".join(f"{k} %" for k in KINDS)
        + " | near-duplicates % | seeds |"
    )
    lines = [
        "# What each ranking chose, round by round (means over seeds)",
        "",
        "Kinds: polyp; hard negatives near (beside a polyp), specular, bump, edge; random "
        "background. Near-duplicates: new labels whose box overlaps another new label of the same "
        "round on the same image (IoU >= 0.5).",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for (method, r), group in sorted(groups.items()):
        new = np.mean([g["new"] for g in group])

        def pct(key: str, group: list[dict[str, Any]] = group) -> str:
            return f"{100 * np.mean([g[key] / g['new'] for g in group]):.0f}"

        lines.append(
            f"| {method} | {r} | {group[0]['labels']} | {new:.0f} | "
            f"{np.mean([g['sources'] for g in group]):.0f} | "
            f"{np.mean([g['max_per_source'] for g in group]):.1f} | "
            + " | ".join(pct(k) for k in KINDS)
            + f" | {pct('near_duplicates')} | {len(group)} |"
        )
    return "\n".join(lines) + "\n"
