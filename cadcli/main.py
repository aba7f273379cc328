"""``cad``: one command line for the product.

- ``cad serve``: the inference server (same as ``cad-server``; never imports torch).
- ``cad model init``: build, export, check and publish the initial model (needs torch).
- ``cad demo``: the whole loop on embedded defaults.
"""

from __future__ import annotations

import argparse
import sys

from cadcli import model as model_commands
from cadcli.settings import trainer_settings


def _train_round(args: argparse.Namespace) -> int:
    model_commands.require_torch("train round")
    from cad.logs import configure_logging
    from trainer.round import run_round

    configure_logging(args.log_level)
    report = run_round(trainer_settings(args))
    print(report.summary())
    return 0 if report.outcome != "rejected" or not args.fail_on_reject else 3


def _shard(text: str) -> tuple[int, int]:
    """``I/N`` (0-based I) as a pair, or argparse's error."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= I < N")
    return index, count


def _train_rescore(args: argparse.Namespace) -> int:
    model_commands.require_torch("train rescore")
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from cad.logs import configure_logging
    from cad.models.registry import ModelRegistry
    from trainer.rescore import rescore_pool

    configure_logging(args.log_level)
    settings = trainer_settings(args)
    store = open_store(settings.store_url)
    try:
        registry = ModelRegistry(settings.registry_root, settings.model_name).with_pins_in(store)
        budget = settings.rescore_budget if args.budget is None else args.budget
        done = rescore_pool(
            store,
            ImageArchive(settings.archive_root),
            registry,
            depth=args.depth,
            device=settings.device,
            page_size=args.page_size,
            shard=args.shard,
            again=args.again,
            budget=budget,
            order=settings.rescore_order,
            prescreen=(settings.rescore_prescreen if budget else 0)
            if args.prescreen is None
            else args.prescreen,
            prescreen_precision=args.prescreen_precision or settings.rescore_prescreen_precision,
            threads=settings.rescore_threads if args.threads is None else args.threads,
            prescreen_window=settings.rescore_prescreen_window
            if args.prescreen_window is None
            else args.prescreen_window,
            window_top=settings.rescore_prescreen_window_top
            if args.prescreen_window_top is None
            else args.prescreen_window_top,
        )
        version = registry.target()
    finally:
        store.close()
    part = f" (shard {args.shard[0]}/{args.shard[1]})" if args.shard else ""
    print(f"re-scored {done} unlabeled candidates with v{version}{part}")
    return 0


def _train_watch(args: argparse.Namespace) -> int:
    model_commands.require_torch("train watch")
    from cad.logs import configure_logging
    from trainer.watch import watch

    configure_logging(args.log_level)
    watch(trainer_settings(args))
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="registry root (CAD_REGISTRY_ROOT)")
    p.add_argument("--store-url", help="label store URL (CAD_STORE_URL)")
    p.add_argument("--archive-root", help="image archive (CAD_ARCHIVE_ROOT)")
    p.add_argument(
        "--preset", choices=["polyp", "frames", "pe"], help="Table 3 learning parameters"
    )
    p.add_argument("--depth", help="tuning depth: fc8 ... conv1 (default conv1)")
    p.add_argument("--hq", action="store_true", help="ACFT HQ training set")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--auc-tolerance", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--start-version",
        type=int,
        help="fine-tune from this version instead of the serving one (1 = the original)",
    )
    p.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="publish even without a scorable validation split (demos only)",
    )
    p.add_argument("--log-level", default="INFO")


def _experiment_moved(args: argparse.Namespace | None = None) -> int:
    print(
        "cad experiment: the CVC-ClinicDB experiment is research, kept apart from the product; "
        "run it from a checkout: python -m experiments.cvc run|report ...",
        file=sys.stderr,
    )
    return 2


# long: declarative, one add_argument per flag; a split would only scatter the command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "serve", help="run the inference server (options: see cad-server --help)", add_help=False
    )
    sub.add_parser(
        "review-ui",
        help="serve the reviewers' web page (options: see cad review-ui --help)",
        add_help=False,
    )
    sub.add_parser(
        "dicom-gateway",
        help="take images from a PACS by C-STORE, send results back as DICOM SRs "
        "(options: see cad dicom-gateway --help)",
        add_help=False,
    )

    model = sub.add_parser("model", help="model registry commands")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    init = model_sub.add_parser(
        "init", help="publish the initial model (AlexNet or SqueezeNet v1.0)"
    )
    init.add_argument("--registry", help="registry root (CAD_REGISTRY_ROOT, default ./registry)")
    init.add_argument("--name", help="model name (CAD_MODEL_NAME, default cad)")
    init.add_argument(
        "--arch",
        choices=["alexnet", "squeezenet1_0"],
        help="architecture (CAD_ARCHITECTURE, default alexnet)",
    )
    init.add_argument(
        "--weights",
        metavar="imagenet|random|PATH",
        help="initial weights: imagenet (an error if none is found: CAD_PRETRAINED_WEIGHTS, "
        "the torch hub cache, the package's shipped SqueezeNet), random, or a state dict file; "
        "default: ImageNet where found locally, else a loud random start",
    )
    init.add_argument(
        "--allow-download",
        action="store_true",
        help="let torchvision download the ImageNet weights if none is found locally",
    )
    init.add_argument("--input-size", type=int, help="patch size (default 224)")
    init.add_argument("--recipe", help="default patch recipe (default polyp)")
    init.add_argument("--force", action="store_true", help="publish even if versions exist")
    init.add_argument(
        "--if-empty",
        action="store_true",
        help="succeed without publishing when versions exist (container init steps)",
    )
    init.add_argument("--log-level", default="INFO")
    init.set_defaults(func=model_commands.init)

    quant = model_sub.add_parser(
        "quantize",
        help="publish an int8 (static, calibrated on labels) or fp16 (for CUDA) variant",
    )
    quant.add_argument("version", nargs="?", type=int, help="default: the version servers follow")
    quant.add_argument("--registry", help="registry root (CAD_REGISTRY_ROOT)")
    quant.add_argument("--store-url", help="label store (CAD_STORE_URL)")
    quant.add_argument("--archive-root", help="image archive (CAD_ARCHIVE_ROOT)")
    quant.add_argument("--calibration-patches", type=int, default=512, help="int8 only")
    quant.add_argument("--precision", choices=["int8", "fp16"], default="int8")
    quant.add_argument("--log-level", default="INFO")
    quant.set_defaults(func=model_commands.quantize)

    for name, helptext in (
        ("list", "list versions"),
        ("show", "print a version's manifest"),
        ("rollback", "pin a version"),
        ("unpin", "follow the newest version"),
        ("prune", "remove old versions (never the pinned, followed or served ones)"),
    ):
        p = model_sub.add_parser(name, help=helptext)
        p.add_argument("--registry", help="registry root (CAD_REGISTRY_ROOT)")
        p.add_argument("--name", help="model name (CAD_MODEL_NAME)")
        if name == "show":
            p.add_argument("version", nargs="?", type=int)
        p.add_argument(
            "--store-url", help="label store holding the pin and the audit trail (CAD_STORE_URL)"
        )
        if name in ("rollback", "unpin", "prune"):
            p.add_argument("--actor", default="", help="who (default: user@host)")
        if name == "prune":
            p.add_argument("--keep", type=int, required=True, help="newest versions to keep")
            p.add_argument(
                "--replica-window-s",
                type=float,
                default=600.0,
                help="a version a server reported serving this recently is kept (default 600)",
            )
            p.add_argument("--dry-run", action="store_true", help="say what would go, remove none")
        if name == "rollback":
            p.add_argument("version", type=int)
            p.add_argument("--reason", default="")
        p.set_defaults(
            func={
                "list": model_commands.list_versions,
                "show": model_commands.show,
                "rollback": model_commands.rollback,
                "unpin": model_commands.unpin,
                "prune": model_commands.prune,
            }[name]
        )

    train = sub.add_parser("train", help="AIFT training rounds")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    round_ = train_sub.add_parser("round", help="run one round")
    _add_training_options(round_)
    round_.add_argument("--fail-on-reject", action="store_true", help="exit 3 if the gate rejects")
    round_.set_defaults(func=_train_round)
    rescore = train_sub.add_parser(
        "rescore",
        help="score the unlabeled pool with the serving version, a page at a time; goes on where "
        "a stopped one stopped",
    )
    for flag, kw in (
        ("--registry", {"help": "registry root (CAD_REGISTRY_ROOT)"}),
        ("--store-url", {"help": "label store URL (CAD_STORE_URL)"}),
        ("--archive-root", {"help": "image archive (CAD_ARCHIVE_ROOT)"}),
        ("--depth", {"help": "score through the trunk cache at this tuning depth (torch)"}),
    ):
        rescore.add_argument(flag, **kw)  # type: ignore[arg-type]
    rescore.add_argument(
        "--shard",
        type=_shard,
        help="I/N: only the I-th (from 0) of N disjoint parts of the pool (N workers, e.g. a "
        "Kubernetes Indexed Job with I = $JOB_COMPLETION_INDEX)",
    )
    rescore.add_argument("--page-size", type=int, default=2048, help="candidates per page")
    rescore.add_argument(
        "--budget",
        type=int,
        help="at most this many: the top of the ranking, the newest, a random sample "
        "(CAD_RESCORE_BUDGET; 0: the whole pool)",
    )
    rescore.add_argument(
        "--prescreen",
        type=int,
        help="with a budget: choose it by a whole-pool pass on this many patches a candidate "
        "(CAD_RESCORE_PRESCREEN, default 2; 0: off the indexes)",
    )
    rescore.add_argument(
        "--prescreen-precision",
        choices=("fp32", "int8"),
        help="the pre-screen's arithmetic (CAD_RESCORE_PRESCREEN_PRECISION, default fp32)",
    )
    rescore.add_argument(
        "--prescreen-window",
        type=int,
        help="screen only this many, chosen off the indexes (CAD_RESCORE_PRESCREEN_WINDOW; 0: "
        "the whole pool)",
    )
    rescore.add_argument(
        "--prescreen-window-top",
        type=float,
        help="the window's share taken from the top as served (CAD_RESCORE_PRESCREEN_WINDOW_TOP, "
        "default 0.5; 1: the previous version's top alone)",
    )
    rescore.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime intra-op threads (CAD_RESCORE_THREADS; 0: one per core; 1 for each of "
        "N workers on N cores)",
    )
    rescore.add_argument(
        "--again", action="store_true", help="also candidates this version has scored already"
    )
    rescore.add_argument("--log-level", default="INFO")
    rescore.set_defaults(func=_train_rescore)
    watch_ = train_sub.add_parser("watch", help="run a round whenever enough new labels arrive")
    _add_training_options(watch_)
    watch_.add_argument("--min-new-labels", type=int)
    watch_.add_argument("--watch-poll-s", type=float)
    watch_.add_argument("--metrics-port", type=int)
    watch_.set_defaults(func=_train_watch)

    moved = sub.add_parser(
        "experiment",
        help="moved: the CVC-ClinicDB experiment is research, run it from a checkout with "
        "python -m experiments.cvc",
        add_help=False,
    )
    moved.set_defaults(func=_experiment_moved)

    demo = sub.add_parser("demo", help="run the whole loop on embedded defaults")
    demo.add_argument("--workdir", help="where the demo registry goes (default: a temp folder)")
    demo.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from service.rpc.server import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["review-ui"]:
        from reviewui.app import main as review_ui_main

        return review_ui_main(argv[1:])
    if argv[:1] == ["dicom-gateway"]:
        from gateway.app import main as gateway_main

        return gateway_main(argv[1:])
    if argv[:1] == ["experiment"]:
        return _experiment_moved()
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        model_commands.require_torch("demo")
        from cadcli.demo import run_demo

        return run_demo(args.workdir, args.log_level)
    from cad.errors import LeaseHeld, StoreUnavailable

    try:
        return int(args.func(args))
    except LeaseHeld as exc:  # another trainer or pruner is at work: say who, no traceback
        print(f"cad: {exc}", file=sys.stderr)
        return 4
    except StoreUnavailable as exc:
        print(f"cad: {exc}", file=sys.stderr)
        return 5


if __name__ == "__main__":
    raise SystemExit(main())
