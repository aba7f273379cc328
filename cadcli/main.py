"""``cad``: one command line for the product.

- ``cad serve``: the inference server (same as ``cad-server``; never imports torch).
- ``cad model init``: build, export, check and publish the initial model (needs torch).
- ``cad demo``: the whole loop on embedded defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _require_torch(command: str) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SystemExit(
            f"cad {command}: PyTorch is not installed here (serving images carry none); "
            "install the trainer extra: pip install 'cad-aift[train]'"
        )


def _model_init(args: argparse.Namespace) -> int:
    _require_torch("model init")
    from service.server import configure_logging
    from trainer.bootstrap import RegistryNotEmpty, init_model
    from trainer.settings import TrainerSettings

    configure_logging(args.log_level)
    overrides: dict[str, object] = {}
    if args.registry:
        overrides["registry_root"] = Path(args.registry)
    if args.name:
        overrides["model_name"] = args.name
    if args.weights:
        overrides["pretrained_weights"] = Path(args.weights)
    if args.input_size:
        overrides["input_size"] = args.input_size
    if args.recipe:
        overrides["recipe"] = args.recipe
    settings = TrainerSettings(**overrides)  # type: ignore[arg-type]
    try:
        info = init_model(settings, force=args.force)
    except (RegistryNotEmpty, FileNotFoundError) as exc:
        print(f"cad model init: {exc}", file=sys.stderr)
        return 2
    print(f"published {info.manifest['name']} version {info.version} at {info.path}")
    print(f"pretrained: {info.manifest['pretrained']['source']}  sha256: {info.manifest['sha256']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the inference server (options: see cad-server --help)",
                   add_help=False)

    model = sub.add_parser("model", help="model registry commands")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    init = model_sub.add_parser("init", help="publish the initial AlexNet model")
    init.add_argument("--registry", help="registry root (CAD_REGISTRY_ROOT, default ./registry)")
    init.add_argument("--name", help="model name (CAD_MODEL_NAME, default cad)")
    init.add_argument("--weights", help="local ImageNet AlexNet .pth (CAD_PRETRAINED_WEIGHTS)")
    init.add_argument("--input-size", type=int, help="patch size (default 224)")
    init.add_argument("--recipe", help="default patch recipe (default polyp)")
    init.add_argument("--force", action="store_true", help="publish even if versions exist")
    init.add_argument("--log-level", default="INFO")
    init.set_defaults(func=_model_init)

    demo = sub.add_parser("demo", help="run the whole loop on embedded defaults")
    demo.add_argument("--workdir", help="where the demo registry goes (default: a temp folder)")
    demo.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from service.server import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        _require_torch("demo")
        from cadcli.demo import run_demo

        return run_demo(args.workdir, args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
