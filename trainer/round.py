"""One AIFT round: fine-tune the serving version on the labels, evaluate, gate, publish, re-score.

Continuous: the round starts from the weights of the version servers follow
(pinned, else newest), never from the original weights. Every round, published
or not, is appended to ``<registry>/<model>/rounds.jsonl`` with its reason.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cad.aift import candidate_probability
from cad.clock import utc_now
from cad.labels.archive import ImageArchive
from cad.labels.store import SqlLabelStore, open_store
from cad.labels.store.leases import Lease, holder_name
from cad.models.registry import MODEL_FILE, WEIGHTS_FILE, ModelRegistry, VersionInfo
from trainer.data import (
    Example,
    PatchSource,
    ids_hash,
    labeled_examples,
    split_of,
    unsettled_count,
)
from trainer.device import device_name, resolve_device
from trainer.export import ExportCheckFailed, ExportReport, export_and_check
from trainer.finetune import candidate_probabilities, fine_tune
from trainer.gate import audit_metrics, gate_decision, validation_metrics
from trainer.network import CadNet
from trainer.pool import archived, load_net
from trainer.presets import PRESETS, trained_layers
from trainer.rescore import keyed_methods, rescore_pool, write_queue_keys
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
ROUNDS_FILE = "rounds.jsonl"
TRAINER_LEASE = "trainer"


@dataclass
class RoundReport:
    outcome: str
    """``published``, ``rejected`` or ``skipped``."""
    reason: str
    parent_version: int | None
    version: int | None = None
    labels: int = 0
    train: int = 0
    val: int = 0
    labels_sha256: str = ""
    """:func:`trainer.data.ids_hash` of the labels the round saw (what ``cad train watch`` compares)."""
    unsettled: int = 0
    """Labeled candidates left out: reviewers disagree and nobody has adjudicated them yet."""
    audit: int = 0
    """Settled labels of the audit slice: measured on, never trained on."""
    metrics: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    started: str = field(default_factory=utc_now)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step (train, validate, export, rescore, queue_keys): where a round's time goes."""

    def summary(self) -> str:
        m = self.metrics
        auc = m.get("val_auc")
        parent_auc = m.get("parent_val_auc")
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        target = f"v{self.version}" if self.version else "no new version"
        return (
            f"round: {self.outcome} ({target}, parent v{self.parent_version}); labels {self.labels} "
            f"(train {self.train}, val {self.val})"
            + (f", {self.unsettled} disputed left out until adjudicated" if self.unsettled else "")
            + f"; val AUC {fmt(auc)} vs parent {fmt(parent_auc)}"
            + (
                f"; audit slice {self.audit} labels, AUC {fmt(m.get('audit_auc'))} vs parent "
                f"{fmt(m.get('parent_audit_auc'))}"
                if self.audit
                else ""
            )
            + f"; {self.duration_s:.1f}s; {self.reason}"
        )


def _record(registry: ModelRegistry, report: RoundReport) -> None:
    registry.model_dir.mkdir(parents=True, exist_ok=True)
    with (registry.model_dir / ROUNDS_FILE).open("a") as fh:
        fh.write(json.dumps(asdict(report), sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _hq_set(
    parent: VersionInfo,
    train: list[Example],
    net: CadNet,
    source: PatchSource,
    progress: bool,
    depth: str,
) -> list[Example]:
    """ACFT's HQ set: labels newer than the parent's, plus older labels the parent gets wrong."""
    until = parent.manifest.labels.until
    new = [e for e in train if e.labeled_at > until]
    old = [e for e in train if e.labeled_at <= until]
    probs = candidate_probabilities(
        net, old, source, desc="HQ check", progress=progress, depth=depth
    )
    wrong = [
        e
        for e, p in zip(old, probs, strict=True)
        if (candidate_probability(p) > 0.5) != bool(e.label)
    ]
    return new + wrong


def _val_patches(
    examples: Sequence[Example], source: PatchSource, limit: int = 64
) -> np.ndarray | None:
    chunks, total = [], 0
    for e in examples:
        if total >= limit:
            break
        p = source.patches(e)
        chunks.append(p)
        total += len(p)
    return np.concatenate(chunks)[:limit] if chunks else None


def run_round(
    settings: TrainerSettings, progress: bool = True, lease: Lease | None = None
) -> RoundReport:
    """Run one round; never raises for a model that fails its gate (the report says why).

    One trainer at a time: the round holds the store's ``trainer`` lease from before it reads
    the parent until its line is in ``rounds.jsonl`` (``lease``: one the caller holds already,
    as ``cad train watch`` does for its lifetime).

    Raises:
        LeaseHeld: another trainer holds the lease (the message names it).
    """
    keyed_methods(settings.queue_keys)  # a misspelt baseline fails before any work
    if lease is None:
        store = open_store(settings.store_url)
        try:
            with store.lease(TRAINER_LEASE, holder_name("cad train round")) as own:
                return run_round(settings, progress, own)
        finally:
            store.close()
    lease.ensure()
    t0 = time.perf_counter()
    store = open_store(settings.store_url)
    # the version servers follow: the pin is in the store, as the servers read it
    registry = ModelRegistry(settings.registry_root, settings.model_name).with_pins_in(store)
    archive = ImageArchive(settings.archive_root)
    try:
        parent_version = settings.start_version or (1 if settings.scratch else registry.target())
        if parent_version is None:
            raise RuntimeError(f"{registry.model_dir} has no model yet: run `cad model init` first")
        parent = registry.get(parent_version)
        preset = PRESETS[settings.preset]
        report = _round(settings, registry, parent, preset, store, archive, progress, lease)
        if report.outcome == "published":
            store.fleet.add_audit(
                "publish",
                settings.actor,
                f"{registry.name}/v{report.version}",
                {
                    "parent": report.parent_version,
                    "labels": report.labels,
                    "gate": report.reason,
                    "val_auc": report.metrics.get("val_auc"),
                },
            )
        elif report.outcome == "rejected":
            store.fleet.add_audit(
                "round_rejected",
                settings.actor,
                f"{registry.name}/v{report.parent_version}",
                {"reason": report.reason, "labels": report.labels},
            )
        if settings.rescore:
            t = time.perf_counter()
            report.metrics["pool_rescored"] = rescore_pool(
                store, archive, registry, progress, settings.depth, settings.device,
                budget=settings.rescore_budget, order=settings.rescore_order,
                prescreen=settings.rescore_prescreen if settings.rescore_budget else 0,
                prescreen_precision=settings.rescore_prescreen_precision,
                threads=settings.rescore_threads,
                prescreen_window=settings.rescore_prescreen_window,
                window_top=settings.rescore_prescreen_window_top,
            )  # fmt: skip
            report.timings["rescore"] = time.perf_counter() - t
            methods = keyed_methods(settings.queue_keys)
            if methods:
                t = time.perf_counter()
                report.metrics["queue_keys"] = write_queue_keys(
                    store, archive, registry, methods, settings, progress
                )
                report.timings["queue_keys"] = time.perf_counter() - t
    finally:
        store.close()
    report.duration_s = time.perf_counter() - t0
    _record(registry, report)
    log.info("%s", report.summary())
    return report


# long: the round's steps in order, each one call and its timing; cut further it reads worse
def _round(
    settings: TrainerSettings,
    registry: ModelRegistry,
    parent: VersionInfo,
    preset: Any,
    store: SqlLabelStore,
    archive: ImageArchive,
    progress: bool,
    lease: Lease | None = None,
) -> RoundReport:
    """One round in named steps: split the labels, choose the training set, fine-tune,
    validate, export and check parity, gate against the parent, publish with a manifest
    (``lease`` checked again first: a failover may have handed it to another trainer)."""
    source = PatchSource(archive, parent.manifest.input_size, settings.recipe_override)
    examples, train, val, report = _split(store, settings, parent)
    audit = _audit_slice(store, archive, report)
    if len({e.label for e in train}) < 2:
        report.reason = "the training split needs labels of both classes"
        return report

    device = resolve_device(settings.device)
    net = load_net(parent).to(device)
    trained_layers(net.architecture, settings.depth)  # a depth this architecture has, or ValueError
    parent_net = copy.deepcopy(net)
    first = parent.manifest.training is None
    schedule = preset.scratch if settings.scratch else (preset.first if first else preset.later)
    if settings.epochs:
        schedule = replace(schedule, epochs=settings.epochs)
    train_set = (
        _hq_set(parent, train, net, source, progress, settings.depth)
        if settings.hq and not first
        else train
    )
    if len({e.label for e in train_set}) < 2:
        report.reason = "the HQ training set has a single class"
        return report
    with _timed(report, "train"):
        result = fine_tune(
            net, train_set, source, schedule, settings.depth, settings.train_batch_size,
            settings.seed, progress,
        )  # fmt: skip
    with _timed(report, "validate"):
        report.metrics = validation_metrics(
            net, parent_net, val, source, settings, result, progress
        )
        report.metrics.update(audit_metrics(net, parent_net, audit, source, settings, progress))
    started_export = time.perf_counter()
    net.cpu()  # export and its parity check run on the CPU, whatever trained it

    with tempfile.TemporaryDirectory(prefix="cad-round-") as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        try:
            export = _export(net, onnx_path, val or train_set, source, settings, progress)
        except ExportCheckFailed as exc:
            report.outcome, report.reason = "rejected", f"export check failed: {exc}"
            return report
        report.metrics["parity_max_abs_diff"] = export.max_abs_diff
        gate, refused = gate_decision(report.metrics, settings, parent, len(val))
        if refused:
            report.outcome, report.reason = "rejected", refused
            return report
        weights_path = Path(tmp) / WEIGHTS_FILE
        torch.save(net.state_dict(), weights_path)
        manifest = _manifest(
            parent,
            settings,
            sets={"examples": examples, "train": train, "val": val, "trained_on": train_set},
            round_kind="scratch" if settings.scratch else ("first" if first else "later"),
            device=device_name(device),
            schedule=asdict(schedule),
            patches_seen=result.patches_seen,
            metrics=report.metrics,
            gate=gate,
            export=export,
        )
        if lease is not None:
            lease.ensure()  # still ours after minutes of fine-tuning, or nothing is published
        info = registry.publish({MODEL_FILE: onnx_path, WEIGHTS_FILE: weights_path}, manifest)
    report.timings["export"] = time.perf_counter() - started_export
    report.outcome, report.version, report.reason = "published", info.version, gate
    return report


def _audit_slice(store: SqlLabelStore, archive: ImageArchive, report: RoundReport) -> list[Example]:
    """The audit slice's settled labels (archived ones), counted in the report."""
    audit, _ = archived(labeled_examples(store, audit_slice=True), archive)
    report.audit = len(audit)
    return audit


@contextmanager
def _timed(report: RoundReport, step: str) -> Iterator[None]:
    """Add the seconds the block takes to ``report.timings[step]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        report.timings[step] = report.timings.get(step, 0.0) + time.perf_counter() - t


def _split(
    store: SqlLabelStore, settings: TrainerSettings, parent: VersionInfo
) -> tuple[list[Example], list[Example], list[Example], RoundReport]:
    """The settled labels, split into train and validation by source (a study, a video), and
    the round's report so far."""
    examples = labeled_examples(store)
    train = [e for e in examples if split_of(e.source_key, settings.val_fraction) == "train"]
    val = [e for e in examples if split_of(e.source_key, settings.val_fraction) == "val"]
    report = RoundReport(
        "skipped",
        "",
        parent.version,
        labels=len(examples),
        train=len(train),
        val=len(val),
        labels_sha256=ids_hash(examples),
        unsettled=unsettled_count(store),
    )
    if report.unsettled:
        log.info(
            "%d labeled candidates left out: reviewers disagree and nobody adjudicated them",
            report.unsettled,
        )
    return examples, train, val, report


def _export(
    net: CadNet,
    onnx_path: Path,
    check_on: Sequence[Example],
    source: PatchSource,
    settings: TrainerSettings,
    progress: bool,
) -> ExportReport:
    """Export to ONNX and check its parity with the network on real patches."""
    with tqdm(total=1, desc="ONNX export + parity check", disable=not progress, leave=False) as bar:
        export = export_and_check(
            net,
            onnx_path,
            source.input_size,
            settings.parity_tolerance,
            _val_patches(check_on, source),
        )
        bar.update()
    return export


def _manifest(
    parent: VersionInfo,
    settings: TrainerSettings,
    sets: dict[str, Sequence[Example]],
    round_kind: str,
    device: str,
    schedule: dict[str, Any],
    patches_seen: int,
    metrics: dict[str, Any],
    gate: str,
    export: ExportReport,
) -> dict[str, Any]:
    """The new version's manifest: inherited from the parent, with its labels, training,
    metrics, gate and export recorded."""
    inherited = parent.manifest
    examples = sets["examples"]
    return dict(
        architecture=inherited.architecture,
        classes=list(inherited.classes),
        input_size=inherited.input_size,
        input_name=inherited.input_name,
        output_name=inherited.output_name,
        recipe=inherited.recipe,
        pretrained=inherited.pretrained.as_dict(),
        parent_version=parent.version,
        labels={
            "count": len(examples),
            "ids_sha256": ids_hash(examples),
            "until": max(e.labeled_at for e in examples),
            "train": len(sets["train"]),
            "val": len(sets["val"]),
            "trained_on": len(sets["trained_on"]),
        },
        training={
            "preset": settings.preset,
            "round": round_kind,
            "schedule": schedule,
            "depth": settings.depth,
            "hq": settings.hq,
            "batch_size": settings.train_batch_size,
            "seed": settings.seed,
            "val_fraction": settings.val_fraction,
            "patches_seen": patches_seen,
            "device": device,
            "precision": "fp32",
        },
        metrics=metrics,
        gate=gate,
        export={
            "opset": export.opset,
            "parity_max_abs_diff": export.max_abs_diff,
            "fc6_fold": export.fc6_fold,
            "parity_patches": export.checked_patches,
            "torch": torch.__version__,
        },
    )
