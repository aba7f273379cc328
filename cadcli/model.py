"""``cad model ...``: a registry's versions from the command line: the first version (needs
torch), an int8 copy, listing, showing, pinning back (rollback), unpinning and pruning, each
recorded in the audit trail the servers' admin calls write to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cad.settings import from_flags
from cadcli.settings import trainer_settings

if TYPE_CHECKING:  # imported where used: `cad serve` never imports torch
    from cad.models.registry import ModelRegistry


def require_torch(command: str) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SystemExit(
            f"cad {command}: PyTorch is not installed here (serving images carry none); "
            "install the trainer extra: pip install 'cad-aift[train]'"
        )


def init(args: argparse.Namespace) -> int:
    require_torch("model init")
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


def open_registry(args: argparse.Namespace) -> ModelRegistry:
    from cad.models.registry import ModelRegistry
    from service.settings import ServerSettings

    s = ServerSettings()
    registry = ModelRegistry(
        Path(args.registry) if args.registry else s.registry_root, args.name or s.model_name
    )
    url = store_url(args)
    if url:  # the pin lives in the label store, where the servers read it
        from cad.labels.store import open_store

        registry.with_pins_in(open_store(url))
    return registry


def store_url(args: argparse.Namespace) -> str:
    from cadcli.settings import CliSettings

    return getattr(args, "store_url", None) or CliSettings().store_url or ""


def quantize(args: argparse.Namespace) -> int:
    from cad.logs import configure_logging
    from trainer.quantize import quantize_from_store

    configure_logging(args.log_level)
    try:
        report = quantize_from_store(
            trainer_settings(args),
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


def list_versions(args: argparse.Namespace) -> int:
    registry = open_registry(args)
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


def show(args: argparse.Namespace) -> int:
    import json

    registry = open_registry(args)
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


def cli_actor(args: argparse.Namespace) -> str:
    import getpass
    import socket

    return getattr(args, "actor", "") or f"{getpass.getuser()}@{socket.gethostname()} (cli)"


def audit(
    args: argparse.Namespace,
    action: str,
    target: str,
    detail: dict[str, Any],
    actor: str = "",
) -> None:
    """Record a CLI registry change in the label store's audit trail (CAD_STORE_URL / --store-url)."""
    url = store_url(args)
    if not url:
        print(
            "note: no --store-url / CAD_STORE_URL, so this change is not in the audit trail",
            file=sys.stderr,
        )
        return
    from cad.labels.store import open_store

    store = open_store(url)
    try:
        store.fleet.add_audit(action, actor or cli_actor(args), target, detail)
    finally:
        store.close()


def rollback(args: argparse.Namespace) -> int:
    from cad.errors import ModelRejected, NotFound
    from cad.models.lifecycle import AuditListener
    from cad.models.manager import ModelManager
    from cad.models.providers import SessionOptions

    def sink(action: str, actor: str, target: str, detail: dict[str, Any]) -> None:
        audit(args, action, target, {**detail, "via": "cli"}, actor)

    # The PinVersion RPC's pin: the version is loaded and checked (checksum, signature, warm-up)
    # as a server would before anything is pinned, and the pin is audited by the same listener.
    manager = ModelManager(
        open_registry(args),
        SessionOptions(),
        listeners=[AuditListener(sink, swaps=False)],
    )
    try:
        manager.pin(args.version, actor=cli_actor(args), reason=args.reason)
    except NotFound as exc:
        print(f"cad model rollback: {exc}", file=sys.stderr)
        return 2
    except ModelRejected as exc:
        print(f"cad model rollback: not pinned, servers would refuse it: {exc}", file=sys.stderr)
        return 2
    print(f"pinned version {args.version}; servers switch on their next registry poll")
    return 0


def prune(args: argparse.Namespace) -> int:
    """Remove old versions: all but the newest --keep, never the pinned or followed one or one a
    server reported serving within --replica-window-s (the store's replicas table)."""
    from cad.labels.store import open_store
    from cad.models.registry import ModelRegistry, plan_prune
    from service.settings import ServerSettings

    url = store_url(args)
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
                "prune_version", cli_actor(args), f"{registry.name}/v{v}", {"keep": args.keep}
            )
            print(f"removed {v:>5}")
    finally:
        store.close()
    return 0


def unpin(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    if registry.unpin():
        audit(args, "unpin", registry.name, {"via": "cli"})
        print("unpinned; servers follow the newest version")
    else:
        print("nothing was pinned")
    return 0
