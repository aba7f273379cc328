"""Experiment report: learning curves (PNG), annotation savings the way the AIFT paper counts them,
summary (Markdown + JSON).

Per method, from ``curves.csv`` (one row per method, seed and round):

- the mean (and std over seeds) test AUC and average precision per round;
- labels needed to reach IFT Random's final mean AUC, and 95% of the whole-pool AUC: the fewest
  from which the mean curve stays at or above the target to the end of the run, with the % of labels saved against IFT Random (for the second target: against the
  labels Random needed for it, when it reached it);
- the area under the learning curve (ALC: mean AUC integrated over labels from the first trained
  round on, divided by the span)
  and, per seed, its difference to IFT Random's on the same seed (paired: every method of a seed
  starts from the same labels); mean, std and wins. A difference whose 95% interval (mean ± 2
  standard errors) contains 0 is reported as a tie;
- polyps labelled by 50 and 100 labels; the training loss of the first and last epoch of each
  round, and in how many rounds it fell.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cad.aift import RANDOM
from cad.models.registry import ModelRegistry
from experiments.cvc.budget import write as write_budget
from experiments.cvc.peak import (
    SECONDS_PER_LABEL,
    choose_across_sites,
    choose_default,
    paired,
    summarise_set,
    write_peak,
)

TARGET_SHARE = 0.95
FULL = "full"
CONTROLS = ("random_alexnet",)


def initial_model(out: Path) -> dict[str, str]:
    """Architecture and ``pretrained`` of the initial model every method started from (template v1)."""
    registry = ModelRegistry(out / "template" / "registry", "cad")
    if 1 not in registry.versions():
        return {"source": "unknown"}
    manifest = registry.get(1).manifest
    return {**manifest.pretrained.as_dict(), "architecture": manifest.architecture}


def describe_initial(initial: dict[str, str]) -> str:
    source = initial.get("source", "unknown")
    arch = initial.get("architecture", "")
    if source == "imagenet":
        where = initial.get("found", "")
        return f"{arch} with ImageNet weights" + (
            f" ({where}: {Path(initial.get('path', '')).name}, "
            f"sha256 {initial.get('sha256', '')[:12]}...)"
            if where
            else ""
        )
    if source == "random-init":
        return f"{arch} from random initialisation"
    return "not recorded"


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "curves.csv").open() as fh:
        return list(csv.DictReader(fh))


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _labels_to(labels: list[float], means: list[float], target: float | None) -> float | None:
    """The fewest labels from which the mean curve stays at or above ``target`` to the end of the
    run (a curve that touches the target once and falls back has not reached it)."""
    if target is None:
        return None
    reached = None
    for lab, auc in zip(labels, means, strict=True):
        if auc < target - 1e-12:
            reached = None  # fell back below the target: not reached yet
        elif reached is None:
            reached = lab
    return reached


def _alc(labels: np.ndarray, aucs: np.ndarray) -> float:
    """Mean AUC over the trained rounds (labels > 0; round 0 is the untrained head, the same for
    every method), integrated over labels and divided by the span."""
    keep = labels > 0
    labels, aucs = labels[keep], aucs[keep]
    if not len(labels):
        return math.nan
    span = labels.max() - labels.min()
    return float(np.trapezoid(aucs, labels) / span) if span > 0 else float(aucs.mean())


def summarise(out: Path) -> dict[str, Any]:
    rows = _rows(out)
    full = [_num(r["test_auc"]) for r in rows if r["method"] == FULL]
    full_ap = [_num(r.get("test_ap")) for r in rows if r["method"] == FULL]
    by: dict[str, dict[int, dict[int, dict[str, str]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["method"] != FULL:
            by[r["method"]][int(r["seed"])][int(r["round"])] = r
    methods: dict[str, dict[str, Any]] = {}
    for method, seeds in by.items():
        rounds = sorted(set.intersection(*(set(s) for s in seeds.values())))
        seed_ids = sorted(seeds)

        def stat(
            col: str, rounds: list[int] = rounds, seeds: dict = seeds, seed_ids: list = seed_ids
        ) -> np.ndarray:
            return np.array([[_num(seeds[s][r].get(col)) for r in rounds] for s in seed_ids])

        auc, ap, pos = stat("test_auc"), stat("test_ap"), stat("positives")
        labels = stat("labels").mean(axis=0)
        first, last = stat("train_loss_first"), stat("train_loss")
        trained = ~np.isnan(first) & ~np.isnan(last)
        methods[method] = {
            "seeds": len(seed_ids),
            "seed_ids": seed_ids,
            "labels": labels.tolist(),
            "mean": auc.mean(axis=0).tolist(),
            "std": auc.std(axis=0).tolist(),
            "ap_mean": ap.mean(axis=0).tolist(),
            "positives_mean": pos.mean(axis=0).tolist(),
            "per_seed_alc": {s: _alc(labels, auc[i]) for i, s in enumerate(seed_ids)},
            "alc": _alc(labels, auc.mean(axis=0)),
            "loss_first_mean": float(np.nanmean(first)) if trained.any() else None,
            "loss_last_mean": float(np.nanmean(last)) if trained.any() else None,
            "rounds_trained": int(trained.sum()),
            "rounds_loss_fell": int((last[trained] < first[trained]).sum()),
        }
        for n in (50, 100):
            at = [i for i, lab in enumerate(labels) if abs(lab - n) < 0.5]
            methods[method][f"positives_at_{n}"] = float(pos[:, at[0]].mean()) if at else None
    reference = (
        float(np.mean(full))
        if full
        else max((max(m["mean"]) for m in methods.values()), default=math.nan)
    )
    target = TARGET_SHARE * reference
    rnd = methods.get(RANDOM)
    random_final = rnd["mean"][-1] if rnd else None
    random_to_target = _labels_to(rnd["labels"], rnd["mean"], target) if rnd else None
    random_labels = rnd["labels"][-1] if rnd else None
    random_to_final = _labels_to(rnd["labels"], rnd["mean"], random_final) if rnd else None
    for name, m in methods.items():
        m["labels_to_random_final"] = (
            _labels_to(m["labels"], m["mean"], random_final) if rnd else None
        )
        own = m["labels_to_random_final"]
        m["saving_vs_random_final"] = (
            (1 - own / random_to_final) if (own and random_to_final) else None
        )
        m["labels_to_target"] = _labels_to(m["labels"], m["mean"], target)
        t = m["labels_to_target"]
        # Random never reached the target in the run: it needs more than its last label count, so
        # the saving is at least 1 - t / that count.
        m["saving_vs_random"] = (
            (
                (1 - t / random_to_target)
                if random_to_target
                else (1 - t / random_labels)
                if (t and random_labels)
                else None
            )
            if t
            else None
        )
        m["saving_vs_random_is_bound"] = bool(t and not random_to_target)
        if rnd and name != RANDOM:
            common = [s for s in m["seed_ids"] if s in rnd["per_seed_alc"]]
            diffs = np.array([m["per_seed_alc"][s] - rnd["per_seed_alc"][s] for s in common])
            if len(diffs):
                m["paired_alc_vs_random"] = paired(diffs)
    return {
        "initial_model": initial_model(out),
        "reference_auc": reference,
        "random_labels_to_own_final": random_to_final,
        "reference_ap": float(np.mean(full_ap)) if full_ap else None,
        "reference": "whole pool" if full else "best method",
        "target_auc": target,
        "random_final_auc": random_final,
        "methods": methods,
    }


def site_of(out: Path) -> str:
    """The data set a run's images came from (``site.json`` beside its curves; CVC-ClinicDB's
    runs have none), for titles."""
    path = out / "site.json"
    return str(json.loads(path.read_text())["site"]) if path.is_file() else "CVC-ClinicDB"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), dpi=110)
    for name, m in sorted(summary["methods"].items()):
        labels = np.array(m["labels"])
        style = "--" if name in (RANDOM, "scratch") else (":" if name in CONTROLS else "-")
        mean, std = np.array(m["mean"]), np.array(m["std"])
        (line,) = axes[0].plot(
            labels, mean, style, marker="o", ms=3, label=f"{name} (n={m['seeds']})"
        )
        axes[0].fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.10)
        axes[1].plot(labels, m["ap_mean"], style, marker="o", ms=3, color=line.get_color())
        axes[2].plot(labels, m["positives_mean"], style, marker="o", ms=3, color=line.get_color())
    axes[0].axhline(
        summary["target_auc"],
        color="grey",
        lw=0.8,
        ls=":",
        label=f"{TARGET_SHARE:.0%} of {summary['reference']} AUC",
    )
    if summary.get("reference_ap") is not None:
        axes[1].axhline(summary["reference_ap"], color="grey", lw=0.8, ls=":", label="whole pool")
        axes[1].legend(fontsize=7, loc="lower right")
    for ax, ylabel, title in (
        (axes[0], "test AUC (candidate level)", "AUC, mean ± std over seeds"),
        (axes[1], "test average precision", "average precision (mean)"),
        (axes[2], "polyps among the labels", "polyps labelled (mean)"),
    ):
        ax.set_xlabel("labels queried")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    trained = [
        a
        for m in summary["methods"].values()
        for lab, a in zip(m["labels"], m["mean"], strict=True)
        if lab > 0
    ]
    low = max(0.0, min(trained, default=0.5) - 0.03)
    axes[0].set_ylim(
        low, 1.0
    )  # round 0 (the untrained head, the same for every method) may fall below
    axes[0].set_title(f"AUC, mean ± std over seeds (axis from {low:.2f})", fontsize=10)
    axes[0].legend(fontsize=7, loc="lower right")
    site = site_of(path.parent)
    held_out = "held-out sequences" if site == "CVC-ClinicDB" else "held-out images"
    fig.suptitle(f"AIFT vs IFT Random on {site} ({held_out})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _f(v: float | None, p: int = 3, suffix: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}{suffix}"


def markdown(summary: dict[str, Any]) -> str:
    ref_ap = summary.get("reference_ap")
    lines = [
        f"Initial model: {describe_initial(summary['initial_model'])}.",
        "",
        f"Whole-pool fine-tuning (reference): AUC {_f(summary['reference_auc'])}"
        + (f", AP {_f(ref_ap)}" if ref_ap is not None else "")
        + f". Target {TARGET_SHARE:.0%} of it: AUC {_f(summary['target_auc'])}. "
        f"IFT Random's final AUC: {_f(summary.get('random_final_auc'))} (its mean curve stays at or above "
        f"it from {_f(summary.get('random_labels_to_own_final'), 0)} labels on). Labels to a target: the "
        "fewest from which the mean curve stays at or above it to the end of the run; '> x%' saved: "
        "Random never reached it, so it needs more than its last count.",
        "",
        "| method | seeds | labels | final AUC (mean ± std) | final AP | labels to Random's final AUC "
        "| saved | labels to 95% whole-pool | saved | ALC | paired ALC diff vs Random (mean ± std, wins) "
        "| polyps at 50 / 100 | loss first → last epoch (rounds fell) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods = summary["methods"]
    for name in sorted(methods, key=lambda n: -methods[n]["alc"]):
        m = methods[name]
        pair = m.get("paired_alc_vs_random")
        pair_text = (
            f"{pair['mean']:+.4f} ± {_f(pair['std'], 4)}, {pair['wins']}/{pair['seeds']} ({pair['verdict']})"
            if pair
            else "-"
        )
        reached = lambda v: "not reached" if v is None else f"{v:.0f}"  # noqa: E731

        def saved(v: float | None, bound: bool = False) -> str:
            return ("> " if bound and v is not None else "") + _f(
                v * 100 if v is not None else None, 0, "%"
            )

        loss = (
            f"{_f(m['loss_first_mean'])} → {_f(m['loss_last_mean'])} ({m['rounds_loss_fell']}/{m['rounds_trained']})"
            if m["rounds_trained"]
            else "-"
        )
        lines.append(
            f"| {name} | {m['seeds']} | {m['labels'][-1]:.0f} | {m['mean'][-1]:.3f} ± {m['std'][-1]:.3f} | "
            f"{_f(m['ap_mean'][-1] if m['ap_mean'] else None)} | {reached(m['labels_to_random_final'])} | "
            f"{saved(m['saving_vs_random_final'])} | {reached(m['labels_to_target'])} | "
            f"{saved(m['saving_vs_random'], m['saving_vs_random_is_bound'])} | "
            f"{m['alc']:.3f} | {pair_text} | {_f(m['positives_at_50'], 1)} / {_f(m['positives_at_100'], 1)} | {loss} |"
        )
    return "\n".join(lines) + "\n"


def _queue_orders(methods: list[str]) -> list[str]:
    """The methods of a run that are annotation-queue orders a server could default to: the AIFT
    variants (with their ACFT, spread and budget forms) and the literature's baselines, never
    Random or the references."""
    from experiments.cvc.run import known_method, variant_of

    return [m for m in methods if known_method(m) and variant_of(m)[0] != RANDOM]


def choose_for_sites(runs: list[Path]) -> str:
    """The product's one default over several runs' validation splits
    (:func:`experiments.cvc.peak.choose_across_sites`), as a few lines of text: each site's own
    choice, then the rule's."""
    vals: dict[str, dict[str, Any] | None] = {}
    lines = []
    for run in runs:
        with (run / "curves.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        val = summarise_set(rows, "val")
        vals[run.name] = val
        own = choose_default(val, _queue_orders(sorted({r["method"] for r in rows})))
        lines.append(f"{run.name}: {own['method'] or '-'}: {own['reason']}")
    candidates = sorted({m for v in vals.values() if v for m in _queue_orders(list(v["methods"]))})
    choice = choose_across_sites(vals, candidates)
    lines.append(f"across the sites: {choice['method']}: {choice['reason']}")
    return "\n".join(lines)


def _doubles(out: Path) -> bool:
    """Whether the run's preset doubles its labels (the template's record says)."""
    ready = out / "template" / "ready.json"
    if not ready.is_file():
        ready = out / "pool.json"
    if not ready.is_file():
        return False
    return bool(json.loads(ready.read_text()).get("preset", {}).get("doubling_cap"))


def write_report(out: Path, seconds_per_label: float | None = None) -> str:
    """Write curves.png, summary.md and summary.json next to curves.csv (and peak.png when the
    run has a whole-pool reference); return the Markdown. A run whose labels double leads with
    the labels to the whole-pool performance; the fixed-horizon table follows."""
    summary = summarise(out)
    plot(summary, out / "curves.png")
    text = markdown(summary)
    doubling = _doubles(out)
    if doubling:
        peak = write_peak(
            out,
            _queue_orders(list(summary["methods"])),
            seconds_per_label if seconds_per_label is not None else SECONDS_PER_LABEL,
        )
        if peak:
            text = peak[0] + "\n## Every round: test AUC, fixed targets\n\n" + text
            summary["peak"] = peak[1]
    budgeted = write_budget(out)
    if budgeted:
        text += "\n" + budgeted
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return text
