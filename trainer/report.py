"""Experiment report: learning curves (PNG), annotation savings table, summary (Markdown + JSON)."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from service.registry import ModelRegistry

TARGET_SHARE = 0.95
INITIAL_MODEL = {
    "imagenet": "ImageNet AlexNet weights",
    "random-init": "random initialisation (no ImageNet AlexNet weights were found locally)",
}


def initial_model(out: Path) -> str:
    """``pretrained.source`` of the initial model every method started from (version 1 of the template)."""
    registry = ModelRegistry(out / "template" / "registry", "cad")
    if 1 not in registry.versions():
        return "unknown"
    return str(registry.get(1).manifest.get("pretrained", {}).get("source", "unknown"))


def _curves(out: Path) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """method -> round -> [(labels, auc) per seed]."""
    curves: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    with (out / "curves.csv").open() as fh:
        for row in csv.DictReader(fh):
            auc = float(row["test_auc"])
            if not math.isnan(auc):
                curves[row["method"]][int(row["round"])].append((int(row["labels"]), auc))
    return curves


def summarise(out: Path) -> dict[str, object]:
    curves = _curves(out)
    full = [auc for pts in curves.pop("full", {}).values() for _, auc in pts]
    methods: dict[str, dict[str, object]] = {}
    for method, rounds in curves.items():
        order = sorted(rounds)
        labels = [float(np.mean([lab for lab, _ in rounds[r]])) for r in order]
        aucs = [[auc for _, auc in rounds[r]] for r in order]
        methods[method] = {
            "labels": labels,
            "mean": [float(np.mean(a)) for a in aucs],
            "std": [float(np.std(a)) for a in aucs],
            "seeds": min(len(a) for a in aucs),
        }
    best = max((max(m["mean"]) for m in methods.values()), default=math.nan)  # type: ignore[type-var, arg-type]
    reference = float(np.mean(full)) if full else best
    target = TARGET_SHARE * reference
    for m in methods.values():
        reached = [lab for lab, auc in zip(m["labels"], m["mean"], strict=True) if auc >= target]  # type: ignore[call-overload]
        m["labels_to_target"] = reached[0] if reached else None
        labs, means = np.array(m["labels"]), np.array(m["mean"])
        span = labs.max() - labs.min()
        m["alc"] = float(np.trapezoid(means, labs) / span) if span > 0 else float(means.mean())
    random = methods.get("random", {}).get("labels_to_target")
    for m in methods.values():
        own = m["labels_to_target"]
        m["saving_vs_random"] = (1 - own / random) if (own and random) else None  # type: ignore[operator]
    return {"initial_model": initial_model(out),
            "reference_auc": reference, "reference": "full pool" if full else "best method",
            "target_auc": target, "methods": methods}


def plot(summary: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for name, m in sorted(summary["methods"].items()):  # type: ignore[attr-defined]
        labels, mean, std = np.array(m["labels"]), np.array(m["mean"]), np.array(m["std"])
        style = "--" if name in ("random", "scratch") else "-"
        line, = ax.plot(labels, mean, style, marker="o", ms=3, label=f"{name} (n={m['seeds']})")
        ax.fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.12)
    ax.axhline(summary["target_auc"], color="grey", lw=0.8, ls=":",  # type: ignore[arg-type]
               label=f"target {TARGET_SHARE:.0%} of {summary['reference']} AUC")
    ax.set_xlabel("labels queried")
    ax.set_ylabel("test AUC (candidate level)")
    ax.set_title("AIFT vs random selection on CVC-ClinicDB (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(summary: dict[str, object]) -> str:
    fmt = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    source = str(summary.get("initial_model", "unknown"))
    lines = [
        f"Initial model: {source} = {INITIAL_MODEL.get(source, 'not recorded')}.",
        "",
        f"Target AUC: {summary['target_auc']:.3f} ({TARGET_SHARE:.0%} of the {summary['reference']} "
        f"AUC {summary['reference_auc']:.3f}).",
        "",
        "| method | seeds | final labels | final AUC (mean ± std) | labels to target | saving vs random | ALC |",
        "|---|---|---|---|---|---|---|",
    ]
    methods = summary["methods"]
    for name in sorted(methods, key=lambda n: -methods[n]["alc"]):  # type: ignore[index]
        m = methods[name]  # type: ignore[index]
        lines.append(
            f"| {name} | {m['seeds']} | {m['labels'][-1]:.0f} | {m['mean'][-1]:.3f} ± {m['std'][-1]:.3f} | "
            f"{fmt(m['labels_to_target'], 0) if m['labels_to_target'] is not None else 'not reached'} | "
            f"{fmt(m['saving_vs_random'] * 100 if m['saving_vs_random'] is not None else None, 0)}"
            f"{'%' if m['saving_vs_random'] is not None else ''} | {m['alc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(out: Path) -> str:
    """Write curves.png, summary.md and summary.json next to curves.csv; return the Markdown."""
    summary = summarise(out)
    plot(summary, out / "curves.png")
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return text
