"""``python -m experiments.cvc run|report``: the AIFT annotation-saving experiment on
CVC-ClinicDB, run from a checkout with the trainer extra installed."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.cvc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = argparse.ArgumentParser(add_help=False)  # what run and explain share
    run.add_argument(
        "--preset",
        choices=["quick", "standard", "peak", "paper"],
        default="quick",
        help="quick: <= 30 min on 2 cores; standard: <= 3 h, 5 seeds, 100 labels; peak: labels "
        "doubling to the whole pool, 5 seeds, with a validation split; paper: AlexNet 227 px (GPU)",
    )
    run.add_argument("--out", default="results/cvc-quick")
    run.add_argument(
        "--site",
        choices=["cvc-clinicdb", "kvasir-seg"],
        default="cvc-clinicdb",
        help="whose images: CVC-ClinicDB (the development site) or Kvasir-SEG (a new site: its "
        "images, experiments/kvasir/split.json and candidates)",
    )
    run.add_argument("--data", help="the site's folder (default ../shared/data/<site>)")
    run.add_argument(
        "--start",
        help="a new site's runs start from this vendor model folder (made by the vendor command) "
        "instead of ImageNet weights",
    )
    run.add_argument(
        "--split",
        help="JSON file with pool, test (and validation) sequence lists (default: the preset's, "
        "split.json or split-peak.json beside this module)",
    )
    run.add_argument("--pool", type=int, nargs="+", help="pool sequences (overrides --split)")
    run.add_argument("--test", type=int, nargs="+", help="test sequences (overrides --split)")
    run.add_argument("--methods", nargs="+")
    run.add_argument("--seeds", type=int, nargs="+")
    run.add_argument("--rounds", type=int)
    run.add_argument(
        "--budget-share",
        type=float,
        help="methods ending _budget re-score this share of the pool a round (default 0.2)",
    )
    run.add_argument(
        "--prescreen",
        type=int,
        help="methods ending _budget choose their share by a whole-pool pre-screen on this many "
        "patches a candidate (CAD_RESCORE_PRESCREEN; default 0: top, newest and a sample)",
    )
    run.add_argument(
        "--budget-window",
        type=float,
        help="with --prescreen: screen only this share of the pool, the top as served "
        "(CAD_RESCORE_PRESCREEN_WINDOW; default 0: the whole pool)",
    )
    run.add_argument("--log-level", default="WARNING")
    common = run
    run = sub.add_parser(
        "run", parents=[common], help="run (or resume) the experiment, then write the report"
    )
    run.add_argument(
        "--no-reference", action="store_true", help="skip fine-tuning on the whole pool"
    )
    sub.add_parser(
        "explain",
        parents=[common],
        help="what each ranking chose, round by round: sources, kinds, near-duplicates "
        "(explain.csv, explain.md)",
    )
    vendor = sub.add_parser(
        "vendor",
        help="fine-tune the vendor model on every CVC-ClinicDB development sequence (resumable)",
    )
    vendor.add_argument("--out", default="results/vendor")
    vendor.add_argument(
        "--data", help="CVC-ClinicDB's folder (default ../shared/data/cvc-clinicdb)"
    )
    vendor.add_argument("--log-level", default="WARNING")
    default = sub.add_parser(
        "default",
        help="the product's one default ranking over several sites' runs (their validation "
        "splits): better than Random on one, worse on none",
    )
    default.add_argument("runs", nargs="+", help="run folders, each with its curves.csv")
    default.add_argument("--log-level", default="WARNING")
    report = sub.add_parser("report", help="CSV -> plot, savings table, summary")
    report.add_argument("--out", default="results/cvc-quick")
    report.add_argument(
        "--seconds-per-label",
        type=float,
        help="reviewer seconds per label for the time-saved table (default 10, an assumption)",
    )
    report.add_argument("--budget-share", type=float, help="as the run was given it")
    report.add_argument("--prescreen", type=int, help="as the run was given it")
    report.add_argument("--budget-window", type=float, help="as the run was given it")
    report.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print(
            "python -m experiments.cvc: PyTorch is not installed here; install the trainer "
            "extra: pip install -c constraints.txt -e '.[train]'",
            file=sys.stderr,
        )
        return 2
    from cad.logs import configure_logging
    from experiments.cvc.pool import DEFAULT_ROOT
    from experiments.cvc.report import write_report
    from experiments.cvc.run import PRESETS, Experiment, Split, run_all

    configure_logging(args.log_level)
    if getattr(args, "budget_share", None) is not None:
        if not 0 < args.budget_share <= 1:
            print("--budget-share must be in (0, 1]", file=sys.stderr)
            return 2
        from experiments.cvc import budget

        budget.BUDGET_SHARE = args.budget_share
    if getattr(args, "prescreen", None) is not None:
        if args.prescreen < 0:
            print("--prescreen must be 0 or more", file=sys.stderr)
            return 2
        from experiments.cvc import budget

        budget.PRESCREEN = args.prescreen
    if getattr(args, "budget_window", None) is not None:
        if not 0 <= args.budget_window <= 1:
            print("--budget-window must be in [0, 1]", file=sys.stderr)
            return 2
        from experiments.cvc import budget

        budget.WINDOW_SHARE = args.budget_window
    if args.command == "default":
        from experiments.cvc.report import choose_for_sites

        print(choose_for_sites([Path(r) for r in args.runs]))
        return 0
    out = Path(args.out)
    if args.command == "report":
        print(write_report(out, args.seconds_per_label))
        return 0
    if args.command == "vendor":
        from experiments.kvasir.vendor import VENDOR_FILE, build_vendor

        model = build_vendor(out, Path(args.data) if args.data else DEFAULT_ROOT)
        print(f"vendor model: {model}\n{(model / VENDOR_FILE).read_text()}")
        return 0
    preset = PRESETS[args.preset]
    seeds = args.seeds if args.seeds is not None else list(preset.seeds)
    if args.rounds:
        preset = replace(preset, rounds=args.rounds)
    exp: Experiment
    if args.start and args.site != "kvasir-seg":
        print("--start: a vendor start is for a new site (--site kvasir-seg)", file=sys.stderr)
        return 2
    if args.site == "kvasir-seg":
        from experiments.kvasir.data import DEFAULT_ROOT as KVASIR_ROOT
        from experiments.kvasir.run import KvasirExperiment, kvasir_split

        root = Path(args.data) if args.data else KVASIR_ROOT
        site_split = kvasir_split(root, Path(args.split) if args.split else None)
        exp = KvasirExperiment(
            out, preset, site_split, root, start=Path(args.start) if args.start else None
        )
    else:
        split = Split.from_file(Path(args.split) if args.split else HERE / preset.split)
        if args.pool:
            split.pool = args.pool
        if args.test:
            split.test = args.test
        exp = Experiment(out, preset, split, Path(args.data) if args.data else DEFAULT_ROOT)
    if args.command == "explain":
        from experiments.cvc.explain import explain

        path = explain(exp, args.methods)
        print((path.parent / "explain.md").read_text())
        return 0
    run_all(exp, args.methods or list(preset.methods), seeds, reference=not args.no_reference)
    print(write_report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
