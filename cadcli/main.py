"""``cad``: one command line for the product.

- ``cad serve``: the inference server (same as ``cad-server``; never imports torch).
- ``cad model init``: build, export, check and publish the initial model (needs torch).
- ``cad demo``: the whole loop on embedded defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cad.settings import from_flags

if TYPE_CHECKING:  # imported where used: `cad serve` never imports torch
    from cad.models.registry import ModelRegistry
    from trainer.settings import TrainerSettings


def _require_torch(command: str) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SystemExit(
            f"cad {command}: PyTorch is not installed here (serving images carry none); "
            "install the trainer extra: pip install 'cad-aift[train]'"
        )


def _model_init(args: argparse.Namespace) -> int:
    _require_torch("model init")
    from cad.logs import configure_logging
    from trainer.bootstrap import RegistryNotEmpty, init_model
    from trainer.settings import TrainerSettings
    from trainer.weights import WeightsUnavailable

    configure_logging(args.log_level)
    settings = from_flags(
        TrainerSettings,
        args,
        {
            "registry": "registry_root",
            "name": "model_name",
            "weights": "weights",
            "arch": "architecture",
            "allow_download": "allow_download",
            "input_size": "input_size",
            "recipe": "recipe",
        },
    )
    try:
        info = init_model(settings, force=args.force)
    except RegistryNotEmpty as exc:
        if args.if_empty:
            print(f"cad model init: nothing to do ({exc})")
            return 0
        print(f"cad model init: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, WeightsUnavailable, ValueError) as exc:
        print(f"cad model init: {exc}", file=sys.stderr)
        return 2
    manifest, pre = info.manifest, info.manifest.pretrained
    print(
        f"published {manifest.name} version {info.version} ({manifest.architecture}) at {info.path}"
    )
    print(
        f"pretrained: {pre.source}"
        + (f" ({pre.found}: {pre.path}, {pre.licence})" if pre.path else "")
        + f"  sha256: {manifest.sha256}"
    )
    return 0


def _trainer_settings(args: argparse.Namespace, **extra: object) -> TrainerSettings:
    from trainer.settings import TrainerSettings

    flags = {
        name: name
        for name in (
            "store_url",
            "archive_root",
            "preset",
            "depth",
            "seed",
            "val_fraction",
            "start_version",
            "auc_tolerance",
            "min_new_labels",
            "watch_poll_s",
            "hq",
            "allow_unvalidated",
        )
    }
    flags.update(
        registry="registry_root", metrics_port="watch_metrics_port", batch_size="train_batch_size"
    )
    return from_flags(TrainerSettings, args, flags, **extra)


def _train_round(args: argparse.Namespace) -> int:
    _require_torch("train round")
    from cad.logs import configure_logging
    from trainer.round import run_round

    configure_logging(args.log_level)
    report = run_round(_trainer_settings(args))
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
    _require_torch("train rescore")
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from cad.logs import configure_logging
    from cad.models.registry import ModelRegistry
    from trainer.rescore import rescore_pool

    configure_logging(args.log_level)
    settings = _trainer_settings(args)
    store = open_store(settings.store_url)
    try:
        registry = ModelRegistry(settings.registry_root, settings.model_name).with_pins_in(store)
        done = rescore_pool(
            store,
            ImageArchive(settings.archive_root),
            registry,
            depth=args.depth,
            device=settings.device,
            page_size=args.page_size,
            shard=args.shard,
            again=args.again,
            budget=settings.rescore_budget if args.budget is None else args.budget,
            order=settings.rescore_order,
        )
        version = registry.target()
    finally:
        store.close()
    part = f" (shard {args.shard[0]}/{args.shard[1]})" if args.shard else ""
    print(f"re-scored {done} unlabeled candidates with v{version}{part}")
    return 0


def _train_watch(args: argparse.Namespace) -> int:
    _require_torch("train watch")
    from cad.logs import configure_logging
    from trainer.watch import watch

    configure_logging(args.log_level)
    watch(_trainer_settings(args))
    return 0


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from cad.models.registry import ModelRegistry
    from service.settings import ServerSettings

    s = ServerSettings()
    registry = ModelRegistry(
        Path(args.registry) if args.registry else s.registry_root, args.name or s.model_name
    )
    url = _store_url(args)
    if url:  # the pin lives in the label store, where the servers read it
        from cad.labels.store import open_store

        registry.with_pins_in(open_store(url))
    return registry


def _store_url(args: argparse.Namespace) -> str:
    from cadcli.settings import CliSettings

    return getattr(args, "store_url", None) or CliSettings().store_url or ""


def _model_quantize(args: argparse.Namespace) -> int:
    from cad.logs import configure_logging
    from trainer.quantize import quantize_from_store

    configure_logging(args.log_level)
    try:
        report = quantize_from_store(
            _trainer_settings(args),
            args.version,
            args.calibration_patches,
            precision=args.precision,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"cad model quantize: {exc}", file=sys.stderr)
        return 2
    p = report.precision
    print(
        f"{p} variant of version {report.version}: AUC {report.auc_fp32:.4f} -> "
        f"{report.auc_variant:.4f} (drop {report.auc_drop:+.4f}) on {report.eval_candidates} labeled "
        f"candidates; servers with CAD_PRECISION={p} serve it only if the drop is within "
        f"CAD_{p.upper()}_MAX_AUC_DROP"
    )
    return 0


def _model_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    pinned, latest = registry.pinned(), registry.latest()
    print(f"{'version':>7}  {'created':<25} {'parent':>6}  {'val AUC':>7}  {'labels':>6}  note")
    for v in registry.versions():
        m = registry.get(v).manifest
        auc = m.val_auc
        note = ("pinned " if v == pinned else "") + ("newest" if v == latest else "")
        print(
            f"{v:>7}  {m.created:<25} {m.parent_version or '-':>6}  "
            f"{auc if auc is None else round(auc, 4)!s:>7}  {m.labels.count:>6}  {note}"
        )
    return 0


def _model_show(args: argparse.Namespace) -> int:
    import json

    registry = _registry(args)
    version = args.version or registry.target()
    if version is None:
        print(f"cad model show: no version of {registry.name} is published yet", file=sys.stderr)
        return 2
    try:
        manifest = registry.get(int(version)).manifest
        print(json.dumps(manifest.to_json(), indent=2, sort_keys=True))
    except FileNotFoundError:
        print(f"cad model show: no version {version}", file=sys.stderr)
        return 2
    return 0


def _cli_actor(args: argparse.Namespace) -> str:
    import getpass
    import socket

    return getattr(args, "actor", "") or f"{getpass.getuser()}@{socket.gethostname()} (cli)"


def _audit(
    args: argparse.Namespace,
    action: str,
    target: str,
    detail: dict[str, Any],
    actor: str = "",
) -> None:
    """Record a CLI registry change in the label store's audit trail (CAD_STORE_URL / --store-url)."""
    url = _store_url(args)
    if not url:
        print(
            "note: no --store-url / CAD_STORE_URL, so this change is not in the audit trail",
            file=sys.stderr,
        )
        return
    from cad.labels.store import open_store

    store = open_store(url)
    try:
        store.fleet.add_audit(action, actor or _cli_actor(args), target, detail)
    finally:
        store.close()


def _model_rollback(args: argparse.Namespace) -> int:
    from cad.errors import ModelRejected, NotFound
    from cad.models.lifecycle import AuditListener
    from cad.models.manager import ModelManager
    from cad.models.providers import SessionOptions

    def sink(action: str, actor: str, target: str, detail: dict[str, Any]) -> None:
        _audit(args, action, target, {**detail, "via": "cli"}, actor)

    # The PinVersion RPC's pin: the version is loaded and checked (checksum, signature, warm-up)
    # as a server would before anything is pinned, and the pin is audited by the same listener.
    manager = ModelManager(
        _registry(args),
        SessionOptions(),
        listeners=[AuditListener(sink, swaps=False)],
    )
    try:
        manager.pin(args.version, actor=_cli_actor(args), reason=args.reason)
    except NotFound as exc:
        print(f"cad model rollback: {exc}", file=sys.stderr)
        return 2
    except ModelRejected as exc:
        print(f"cad model rollback: not pinned, servers would refuse it: {exc}", file=sys.stderr)
        return 2
    print(f"pinned version {args.version}; servers switch on their next registry poll")
    return 0


def _model_prune(args: argparse.Namespace) -> int:
    """Remove old versions: all but the newest --keep, never the pinned or followed one or one a
    server reported serving within --replica-window-s (the store's replicas table)."""
    from cad.labels.store import open_store
    from cad.models.registry import ModelRegistry, plan_prune
    from service.settings import ServerSettings

    url = _store_url(args)
    if not url:
        print(
            "cad model prune: needs --store-url / CAD_STORE_URL: the pin and the versions servers "
            "serve are kept there, and each removal is audited",
            file=sys.stderr,
        )
        return 2
    s = ServerSettings()
    store = open_store(url)
    try:
        registry = ModelRegistry(
            Path(args.registry) if args.registry else s.registry_root, args.name or s.model_name
        ).with_pins_in(store)
        served: dict[int, str] = {}
        for replica_id, version, host, seen in store.fleet.replicas(
            registry.name, args.replica_window_s
        ):
            if version is not None:
                served.setdefault(version, f"replica {replica_id} on {host} (seen {seen})")
        try:
            doomed, kept = plan_prune(registry, args.keep, served)
        except ValueError as exc:
            print(f"cad model prune: {exc}", file=sys.stderr)
            return 2
        for v, why in sorted(kept.items()):
            print(f"keep    {v:>5}  {why}")
        for v in doomed:
            if args.dry_run:
                print(f"would remove {v:>5}")
                continue
            registry.remove(v)
            store.fleet.add_audit(
                "prune_version", _cli_actor(args), f"{registry.name}/v{v}", {"keep": args.keep}
            )
            print(f"removed {v:>5}")
    finally:
        store.close()
    return 0


def _model_unpin(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if registry.unpin():
        _audit(args, "unpin", registry.name, {"via": "cli"})
        print("unpinned; servers follow the newest version")
    else:
        print("nothing was pinned")
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
    init.set_defaults(func=_model_init)

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
    quant.set_defaults(func=_model_quantize)

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
                "list": _model_list,
                "show": _model_show,
                "rollback": _model_rollback,
                "unpin": _model_unpin,
                "prune": _model_prune,
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
        _require_torch("demo")
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
