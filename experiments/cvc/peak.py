"""The paper's measure: how many labels each method needs to reach the performance of fine-tuning
on the whole pool, from a run whose labels double each round (the ``peak`` preset).

Per held-out set (test; validation when the run has one) and metric (AUC, AP), from
``curves.csv``:

- labels to reach 95%, 97.5%, 99% and 100% of the whole-pool value: the fewest labels from which
  the curve stays at or above the level to the end of the run (:func:`labels_to_reach`), on the
  mean curve over seeds and on every seed's own curve;
- % saved against IFT Random at each level (mean curves), and paired: per seed, the method's
  labels against Random's on the same seed (wins, ties, losses);
- the area under the learning curve over the whole schedule, on a linear and on a log-label axis
  (the log axis gives the early, cheap rounds the weight the doubling schedule gives them), with
  paired differences to Random: mean, std, wins and a verdict (``tie`` when mean ± 2 standard
  errors contains 0);
- polyps labelled per 100 labels at each point of the schedule;
- reviewer time: labels saved against Random times an assumed seconds per label.

The method recommended as the product's default is chosen on the validation sequences only.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cad.aift import RANDOM

LEVELS = (0.95, 0.975, 0.99, 1.0)
FULL = "full"
SECONDS_PER_LABEL = 10.0
"""Assumed, not measured: one look at a boxed candidate and one click (a verdict, not a drawn box).
The review store's event times give the real figure once reviewers use the page."""
SETS = {"test": "test", "val": "validation"}


def labels_to_reach(labels: list[float], values: list[float], target: float) -> float | None:
    """The fewest labels from which ``values`` stays at or above ``target`` to the end of the
    curve; None when the last point is below it. A value equal to the target has reached it; a
    curve that touches the target and falls back has not (the count restarts after the dip)."""
    reached = None
    for lab, value in zip(labels, values, strict=True):
        if not math.isnan(value) and value >= target - 1e-12:
            reached = lab if reached is None else reached
        else:
            reached = None
    return reached


def alc(labels: np.ndarray, values: np.ndarray, log: bool = False) -> float:
    """Mean of a learning curve over the trained rounds (labels > 0): the area under it divided
    by the span, over labels or over log2(labels)."""
    keep = labels > 0
    x, y = labels[keep], values[keep]
    if not len(x):
        return math.nan
    if log:
        x = np.log2(x)
    span = x.max() - x.min()
    return float(np.trapezoid(y, x) / span) if span > 0 else float(y.mean())


def paired(diffs: np.ndarray) -> dict[str, Any]:
    """Mean, std, wins and verdict of per-seed differences (a 95% interval holding 0: a tie);
    the one rule every table of the experiment uses."""
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    sd = float(diffs.std(ddof=1)) if n > 1 else math.nan
    half = 2 * sd / math.sqrt(n) if n > 1 else math.nan
    verdict = (
        "n/a (one seed)"
        if math.isnan(half)
        else "tie"
        if abs(mean) <= half
        else ("better" if mean > 0 else "worse")
    )
    return {"mean": mean, "std": sd, "wins": int((diffs > 0).sum()), "seeds": n, "verdict": verdict}


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _curves(rows: list[dict[str, str]]) -> dict[str, dict[int, list[dict[str, str]]]]:
    by: dict[str, dict[int, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["method"]][int(r["seed"])].append(r)
    for seeds in by.values():
        for s in seeds:
            seeds[s].sort(key=lambda r: int(r["round"]))
    return by


def _saving(own: float | None, rnd: float | None) -> float | None:
    return (1 - own / rnd) if (own is not None and rnd) else None


def summarise_set(rows: list[dict[str, str]], prefix: str) -> dict[str, Any] | None:
    """The peak measures on one held-out set (``test`` or ``val`` columns); None without data."""
    col_auc, col_ap = f"{prefix}_auc", f"{prefix}_ap"
    full = [r for r in rows if r["method"] == FULL and not math.isnan(_num(r.get(col_auc)))]
    if not full:
        return None
    reference = {
        "auc": float(np.mean([_num(r[col_auc]) for r in full])),
        "ap": float(np.mean([_num(r[col_ap]) for r in full])),
        "labels": float(np.mean([_num(r["labels"]) for r in full])),
    }
    by = _curves([r for r in rows if r["method"] != FULL])
    methods: dict[str, dict[str, Any]] = {}
    for method, seeds in by.items():
        # Only the seeds that have finished as many rounds as the furthest one: a report of a run
        # still going leaves out the seeds it is in the middle of.
        n_rounds = max(len(v) for v in seeds.values())
        seed_ids = sorted(s for s, v in seeds.items() if len(v) == n_rounds)
        grid = {
            col: np.array([[_num(seeds[s][i].get(col)) for i in range(n_rounds)] for s in seed_ids])
            for col in ("labels", col_auc, col_ap, "positives")
        }
        labels = grid["labels"].mean(axis=0)
        m: dict[str, Any] = {
            "seeds": len(seed_ids),
            "seed_ids": seed_ids,
            "labels": labels.tolist(),
            "positives_mean": grid["positives"].mean(axis=0).tolist(),
            "polyps_per_100": [
                100 * p / lab if lab else None
                for p, lab in zip(grid["positives"].mean(axis=0), labels, strict=True)
            ],
        }
        for metric, col in (("auc", col_auc), ("ap", col_ap)):
            values = grid[col]
            mean = values.mean(axis=0)
            m[metric] = {
                "mean": mean.tolist(),
                "std": values.std(axis=0).tolist(),
                "alc": alc(labels, mean),
                "alc_log": alc(labels, mean, log=True),
                "per_seed_alc": {s: alc(labels, values[i]) for i, s in enumerate(seed_ids)},
                "per_seed_alc_log": {
                    s: alc(labels, values[i], log=True) for i, s in enumerate(seed_ids)
                },
                "per_seed_curve": {s: values[i].tolist() for i, s in enumerate(seed_ids)},
                "to_level": {
                    str(level): labels_to_reach(list(labels), list(mean), level * reference[metric])
                    for level in LEVELS
                },
                "per_seed_to_level": {
                    str(level): {
                        s: labels_to_reach(
                            list(grid["labels"][i]), list(values[i]), level * reference[metric]
                        )
                        for i, s in enumerate(seed_ids)
                    }
                    for level in LEVELS
                },
            }
        methods[method] = m
    rnd = methods.get(RANDOM)
    for name, m in methods.items():
        for metric in ("auc", "ap"):
            mm = m[metric]
            mm["saving"] = {
                lv: _saving(mm["to_level"][lv], rnd[metric]["to_level"][lv] if rnd else None)
                for lv in mm["to_level"]
            }
            if not rnd or name == RANDOM:
                continue
            common = [s for s in m["seed_ids"] if s in rnd["seed_ids"]]
            # Over the rounds both have finished (a run still going has fewer).
            n = min(len(m["labels"]), len(rnd["labels"]))
            common_labels = np.array(m["labels"][:n])
            for key, log in (("alc", False), ("alc_log", True)):
                diffs = np.array(
                    [
                        alc(common_labels, np.array(mm["per_seed_curve"][s][:n]), log)
                        - alc(common_labels, np.array(rnd[metric]["per_seed_curve"][s][:n]), log)
                        for s in common
                    ]
                )
                mm[f"paired_{key}"] = paired(diffs)
            mm["paired_to_level"] = {
                lv: _paired_labels(
                    mm["per_seed_to_level"][lv], rnd[metric]["per_seed_to_level"][lv]
                )
                for lv in mm["to_level"]
            }
    return {"reference": reference, "methods": methods, "levels": list(LEVELS)}


def _paired_labels(own: dict[int, float | None], rnd: dict[int, float | None]) -> dict[str, Any]:
    """Per seed: fewer labels than Random to the level (a win), as many (a tie), more (a loss);
    a seed where only one of the two reached it counts for the one that did."""
    wins = ties = losses = 0
    savings = []
    for s, mine in own.items():
        theirs = rnd.get(s)
        if mine is None and theirs is None:
            continue
        if theirs is None or (mine is not None and mine < theirs):
            wins += 1
        elif mine is None or mine > theirs:
            losses += 1
        else:
            ties += 1
        if mine is not None and theirs:
            savings.append(1 - mine / theirs)
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "median_saving": float(np.median(savings)) if savings else None,
    }


MIN_DEFAULT_SEEDS = 3
"""A candidate for the default needs this many paired validation seeds (the pilot's three): a
one-seed gain is not a product's evidence."""


def choose_default(val: dict[str, Any] | None, candidates: list[str]) -> dict[str, Any]:
    """The product's default ranking, chosen on the validation sequences: among the candidates
    with at least :data:`MIN_DEFAULT_SEEDS` paired seeds, the one with the highest mean paired
    log-axis AUC ALC gain over Random (the measure that weighs every doubling of the labels
    alike); the reason says whether the choice is inside seed noise and who had too few seeds."""
    if not val:
        return {"method": None, "reason": "no validation sequences in this run"}
    ms = val["methods"]
    paired_ = {
        c: ms[c]["auc"]["paired_alc_log"]
        for c in candidates
        if c in ms
        and "paired_alc_log" in ms[c]["auc"]
        and not math.isnan(ms[c]["auc"]["paired_alc_log"]["mean"])
    }
    few = sorted(c for c, p in paired_.items() if p["seeds"] < MIN_DEFAULT_SEEDS)
    scored = [(p["mean"], c) for c, p in paired_.items() if c not in few]
    if not scored:
        why = f"no candidate has {MIN_DEFAULT_SEEDS} paired validation seeds" if few else ""
        return {"method": None, "reason": why or "no candidate has paired validation results"}
    unseeded = (
        f"; not considered, under {MIN_DEFAULT_SEEDS} paired seeds: {', '.join(few)}" if few else ""
    )
    scored.sort(reverse=True)
    if scored[0][0] <= 0:
        return {
            "method": RANDOM,
            "ranking": [c for _, c in scored],
            "reason": "no queue order gains over Random on the validation sequences" + unseeded,
        }
    best = scored[0][1]
    pair = ms[best]["auc"]["paired_alc_log"]
    others = [c for _, c in scored[1:]]
    return {
        "method": best,
        "ranking": [c for _, c in scored],
        "paired_alc_log_vs_random": pair,
        "reason": (
            f"highest mean paired validation log-ALC gain over Random ({pair['mean']:+.4f} ± "
            f"{pair['std']:.4f}, {pair['wins']}/{pair['seeds']} seeds, {pair['verdict']})"
            + (f"; then {', '.join(others)}" if others else "")
            + unseeded
        ),
    }


def choose_across_sites(
    vals: dict[str, dict[str, Any] | None], candidates: list[str]
) -> dict[str, Any]:
    """The product's one default when sites' validation splits disagree: an order run on every
    site with at least :data:`MIN_DEFAULT_SEEDS` paired seeds, better than Random (the
    2-standard-error rule on the paired log-axis gain) on at least one site and worse on none;
    among those the highest mean gain over the sites; Random when no order qualifies. The
    reason names every order left out and why."""
    left_out: list[str] = []
    eligible: list[tuple[float, str]] = []
    for c in candidates:
        pairs = {
            site: (val["methods"][c]["auc"].get("paired_alc_log") if c in val["methods"] else None)
            for site, val in vals.items()
            if val
        }
        short = [
            site for site in vals if (pairs.get(site) or {}).get("seeds", 0) < MIN_DEFAULT_SEEDS
        ]
        if short:
            left_out.append(
                f"{c} (fewer than {MIN_DEFAULT_SEEDS} paired seeds on {', '.join(short)})"
            )
            continue
        verdicts = {site: p["verdict"] for site, p in pairs.items() if p}
        worse = [site for site, v in verdicts.items() if v == "worse"]
        if worse:
            left_out.append(f"{c} (worse than Random on {', '.join(worse)})")
        elif "better" not in verdicts.values():
            left_out.append(f"{c} (better than Random on no site)")
        else:
            eligible.append((float(np.mean([p["mean"] for p in pairs.values() if p])), c))
    why = f"; left out: {'; '.join(left_out)}" if left_out else ""
    if not eligible:
        return {
            "method": RANDOM,
            "reason": "no order is better than Random on one site and not worse on any" + why,
        }
    eligible.sort(reverse=True)
    gain, best = eligible[0]
    return {
        "method": best,
        "ranking": [c for _, c in eligible],
        "reason": f"better than Random on a site and worse on none, mean gain over the sites "
        f"{gain:+.4f}" + why,
    }


# ---------------------------------------------------------------------- presentation


def _f(v: float | None, p: int = 3, suffix: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}{suffix}"


def _lab(v: float | None) -> str:
    return "never" if v is None else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _pair(p: dict[str, Any] | None, digits: int = 4) -> str:
    if not p:
        return "-"
    return f"{p['mean']:+.{digits}f} ± {_f(p['std'], digits)}, {p['wins']}/{p['seeds']} ({p['verdict']})"


def _at(m: dict[str, Any], n: float) -> float | None:
    for lab, v in zip(m["labels"], m["polyps_per_100"], strict=True):
        if abs(lab - n) < 0.5:
            return v
    return None


def markdown_set(s: dict[str, Any], title: str, seconds_per_label: float) -> str:
    ref = s["reference"]
    ms = s["methods"]
    rnd = ms.get(RANDOM)
    order = sorted(ms, key=lambda n: -ms[n]["auc"]["alc_log"])
    lines = [
        f"### {title}",
        "",
        f"Whole-pool fine-tuning ({ref['labels']:,.0f} labels): AUC {ref['auc']:.3f}, AP "
        f"{ref['ap']:.3f}. Labels to x%: the fewest from which the mean curve over seeds stays at "
        "or above x% of the whole-pool value to the end of the run ('never': it ends below). "
        "Saved: against IFT Random's labels to the same level. Per seed (paired): "
        "wins/ties/losses against Random on the same seed.",
        "",
        "| method | seeds | AUC: labels to 95% | 97.5% | 99% | 100% | saved at 97.5% | at 99% "
        "| per seed at 99% (w/t/l) | AP: labels to 97.5% | 99% | saved at 99% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        a, p = ms[name]["auc"], ms[name]["ap"]
        pl = a.get("paired_to_level", {}).get("0.99")
        lines.append(
            f"| {name} | {ms[name]['seeds']} | "
            + " | ".join(_lab(a["to_level"][str(lv)]) for lv in LEVELS)
            + f" | {_pct(a['saving']['0.975'])} | {_pct(a['saving']['0.99'])} | "
            + (f"{pl['wins']}/{pl['ties']}/{pl['losses']}" if pl else "-")
            + f" | {_lab(p['to_level']['0.975'])} | {_lab(p['to_level']['0.99'])} | "
            f"{_pct(p['saving']['0.99'])} |"
        )
    lines += [
        "",
        "Areas under the learning curve (mean AUC over the schedule, from the first trained round "
        "to the last), on a linear and a log2-label axis; paired differences to Random: mean "
        "± std over seeds, seeds won, verdict (a tie when mean ± 2 standard errors holds 0). "
        "Polyps per 100 labels: among the labels in hand at 80 and 320 labels.",
        "",
        "| method | ALC (linear) | paired vs Random | ALC (log axis) | paired vs Random "
        "| AP ALC (log) | paired vs Random | polyps per 100 at 80 / 320 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        a, p = ms[name]["auc"], ms[name]["ap"]
        lines.append(
            f"| {name} | {a['alc']:.4f} | {_pair(a.get('paired_alc'))} | {a['alc_log']:.4f} | "
            f"{_pair(a.get('paired_alc_log'))} | {p['alc_log']:.4f} | "
            f"{_pair(p.get('paired_alc_log'))} | {_f(_at(ms[name], 80), 1)} / "
            f"{_f(_at(ms[name], 320), 1)} |"
        )
    if rnd:
        lines += [
            "",
            f"Reviewer time at {seconds_per_label:g} s per label (an assumed figure: one look "
            "and one click per boxed candidate; not measured) to reach 97.5% / 99% of whole-pool "
            "AUC:",
            "",
            "| method | labels to 97.5% | hours | saved vs Random | labels to 99% | hours "
            "| saved vs Random |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in order:
            cells = []
            for lv in ("0.975", "0.99"):
                own = ms[name]["auc"]["to_level"][lv]
                theirs = rnd["auc"]["to_level"][lv]
                hours = None if own is None else own * seconds_per_label / 3600
                saved = (
                    None
                    if own is None or theirs is None
                    else (theirs - own) * seconds_per_label / 3600
                )
                cells += [_lab(own), _f(hours, 1), "-" if saved is None else f"{saved:+.1f} h"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(sets: dict[str, dict[str, Any]], path: Path) -> None:
    """AUC and AP against labels (log axis) per held-out set, Random in black, whole-pool and
    97.5%/99% levels as reference lines; polyps per 100 labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, metric) for k in sets for metric in ("auc", "ap")]
    rows = len(sets)
    fig, grid = plt.subplots(rows, 3, figsize=(16, 5.2 * rows), dpi=100, squeeze=False)
    # Each set's AUC and AP in its row; the polyps panel top right.
    axes = [grid[r, c] for r in range(rows) for c in range(2)] + [grid[0, 2]]
    for r in range(1, rows):
        grid[r, 2].axis("off")
    schedule = sorted(
        {
            lab
            for s in sets.values()
            for m in s["methods"].values()
            for lab in m["labels"]
            if lab > 0
        }
    )
    colours: dict[str, Any] = {}
    for ax, (key, metric) in zip(axes, panels, strict=False):
        s = sets[key]
        ref = s["reference"][metric]
        for name in sorted(s["methods"]):
            m = s["methods"][name]
            x = np.array(m["labels"])
            y, sd = np.array(m[metric]["mean"]), np.array(m[metric]["std"])
            keep = x > 0
            style: dict[str, Any] = {"color": "black", "lw": 2.2} if name == RANDOM else {"lw": 1.3}
            if name == "scratch":
                style["ls"] = "--"
            if name in colours:
                style.setdefault("color", colours[name])
            (line,) = ax.plot(
                x[keep], y[keep], marker="o", ms=3, label=f"{name} (n={m['seeds']})", **style
            )
            colours[name] = line.get_color()
            ax.fill_between(
                x[keep], (y - sd)[keep], (y + sd)[keep], color=line.get_color(), alpha=0.08
            )
        ax.axhline(ref, color="grey", lw=1.2, label=f"whole pool {ref:.3f}")
        for lv, ls in ((0.99, "--"), (0.975, ":")):
            ax.axhline(lv * ref, color="grey", lw=0.8, ls=ls, label=f"{lv:.1%} of whole pool")
        ax.set_xscale("log", base=2)
        ax.set_xticks(schedule, [f"{v:.0f}" for v in schedule])
        ax.set_xlabel("labels (log scale)")
        ax.set_ylabel(f"{SETS[key]} {'AUC' if metric == 'auc' else 'average precision'}")
        trained = [
            v
            for m in s["methods"].values()
            for lab, v in zip(m["labels"], m[metric]["mean"], strict=True)
            if lab > 0
        ]
        low = min(trained, default=ref - 0.1)
        ax.set_ylim(max(0.0, low - 0.02), min(1.0, ref + 0.04))
        ax.set_title(f"{SETS[key]} sequences: {metric.upper()} (mean ± std)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    first = next(iter(sets.values()))
    for name, m in sorted(first["methods"].items()):
        x = np.array(m["labels"])
        y = np.array([np.nan if v is None else v for v in m["polyps_per_100"]])
        keep = x > 0
        ax.plot(x[keep], y[keep], marker="o", ms=3, color=colours.get(name), label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(schedule, [f"{v:.0f}" for v in schedule])
    ax.set_xlabel("labels (log scale)")
    ax.set_ylabel("polyps per 100 labels in hand")
    ax.set_title("what reviewers were shown", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    from experiments.cvc.report import site_of

    fig.suptitle(
        f"Labels to the whole-pool performance: AIFT vs IFT Random on {site_of(path.parent)}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_site(s: dict[str, Any], path: Path, site: str, methods: list[str]) -> None:
    """The plot for a hospital's manager: test AUC against the labels this site's reviewers give
    (log axis), for Random and the named methods, with the vendor model's day-one AUC (no local
    label) and the AUC of fine-tuning on every pool label as lines, and where each method stays
    at or above 97.5% of the latter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    ref, pool = s["reference"]["auc"], s["reference"]["labels"]
    day_one = None
    for name in [RANDOM, *[m for m in methods if m != RANDOM]]:
        m = s["methods"].get(name)
        if m is None:
            continue
        x, y = np.array(m["labels"]), np.array(m["auc"]["mean"])
        if day_one is None and len(x) and x[0] == 0:
            day_one = float(y[0])
        keep = x > 0
        style: dict[str, Any] = {"color": "black", "lw": 2.4} if name == RANDOM else {"lw": 1.8}
        (line,) = ax.plot(
            x[keep], y[keep], marker="o", ms=4, label=f"{name} ({m['seeds']} seeds)", **style
        )
        reach = m["auc"]["to_level"].get("0.975")
        if reach:
            ax.axvline(reach, color=line.get_color(), lw=0.8, ls=":")
    ax.axhline(ref, color="grey", lw=1.4, label=f"every pool label ({pool:.0f}): AUC {ref:.3f}")
    ax.axhline(
        0.975 * ref,
        color="grey",
        lw=0.9,
        ls=":",
        label="97.5% of that (dotted verticals: where each method stays above it)",
    )
    if day_one is not None:
        ax.axhline(
            day_one,
            color="tab:red",
            lw=1.4,
            ls="--",
            label=f"day one, the vendor model with no local label: AUC {day_one:.3f}",
        )
    ax.set_xscale("log", base=2)
    ticks = sorted({lab for m in s["methods"].values() for lab in m["labels"] if lab > 0})
    ax.set_xticks(ticks, [f"{v:.0f}" for v in ticks])
    ax.set_xlabel("labels given by this hospital's reviewers (log scale)")
    ax.set_ylabel("AUC on this hospital's held-out test images")
    low = min([day_one or ref] + [v for m in s["methods"].values() for v in m["auc"]["mean"][1:]])
    ax.set_ylim(max(0.0, low - 0.02), min(1.0, ref + 0.03))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{site}: how many of its own labels the model needs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_peak(
    out: Path, candidates: list[str], seconds_per_label: float = SECONDS_PER_LABEL
) -> tuple[str, dict[str, Any]] | None:
    """peak.png and the peak section (Markdown, summary dict) of a run; None when the run has no
    whole-pool reference."""
    with (out / "curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    sets = {k: s for k in SETS if (s := summarise_set(rows, k)) is not None}
    if "test" not in sets:
        return None
    plot(sets, out / "peak.png")
    choice = choose_default(sets.get("val"), candidates)
    from experiments.cvc.report import site_of

    site_plot = []
    if (out / "site.json").is_file():
        shown = [m for m in (choice["method"], "entropy_alpha") if m] + [
            m for m in ("margin", "bald", "coreset", "typiclust") if m in sets["test"]["methods"]
        ]
        plot_site(sets["test"], out / "site.png", site_of(out), list(dict.fromkeys(shown)))
        site_plot = [f"![{site_of(out)}: AUC against its own labels](site.png)", ""]
    parts = [
        "## Labels to the whole-pool performance",
        "",
        "Default ranking chosen on the validation sequences: "
        + (f"**{choice['method']}**: {choice['reason']}." if choice["method"] else choice["reason"])
        + "",
        "",
        *site_plot,
        "![labels to the whole-pool performance](peak.png)",
        "",
    ]
    if "val" in sets:
        parts.append(
            markdown_set(sets["val"], "Validation sequences (choose here)", seconds_per_label)
        )
    parts.append(markdown_set(sets["test"], "Test sequences (report here)", seconds_per_label))
    return "\n".join(parts), {
        "sets": sets,
        "default": choice,
        "seconds_per_label": seconds_per_label,
    }
