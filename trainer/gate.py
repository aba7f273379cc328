"""A round's validation gate: the candidate network and its parent on the validation split and on
the audit slice (the unbiased yardstick), and the decision to publish or refuse, with its
reason."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cad.aift import candidate_probability
from cad.measures import Evaluation, evaluate
from cad.models.registry import VersionInfo
from trainer.data import Example, PatchSource, labels_of
from trainer.finetune import TrainResult, candidate_probabilities
from trainer.network import CadNet
from trainer.settings import TrainerSettings


def evaluate_net(
    net: CadNet,
    examples: Sequence[Example],
    source: PatchSource,
    s: TrainerSettings,
    desc: str,
    progress: bool,
) -> Evaluation:
    probs = candidate_probabilities(
        net, examples, source, desc=desc, progress=progress, depth=s.depth
    )
    scores = np.array([candidate_probability(p) for p in probs])
    return evaluate(labels_of(examples), scores, fpr=s.fpr, seed=s.seed)


def validation_metrics(
    net: CadNet,
    parent_net: CadNet,
    val: Sequence[Example],
    source: PatchSource,
    settings: TrainerSettings,
    result: TrainResult,
    progress: bool,
) -> dict[str, Any]:
    """The new and the parent network on the validation split (None where it has none), and
    the training losses; NaN (a one-class split) as None."""
    new_eval = evaluate_net(net, val, source, settings, "validating new", progress) if val else None
    old_eval = (
        evaluate_net(parent_net, val, source, settings, "validating parent", progress)
        if val
        else None
    )
    metrics: dict[str, Any] = {
        "val_auc": new_eval.auc if new_eval else None,
        "val": new_eval.as_dict() if new_eval else None,
        "parent_val_auc": old_eval.auc if old_eval else None,
        "train_loss": result.losses,
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def audit_metrics(
    net: CadNet,
    parent_net: CadNet,
    audit: Sequence[Example],
    source: PatchSource,
    settings: TrainerSettings,
    progress: bool,
) -> dict[str, Any]:
    """The new and the parent network on the audit slice's labels: the unbiased yardstick (a
    uniform random sample of the pool; the rest of the labels are what a ranking chose)."""
    if len({e.label for e in audit}) < 2:
        return {"audit_labels": len(audit), "audit_auc": None, "parent_audit_auc": None}
    new_eval = evaluate_net(net, audit, source, settings, "audit slice, new", progress)
    old_eval = evaluate_net(parent_net, audit, source, settings, "audit slice, parent", progress)
    return {
        "audit_labels": len(audit),
        "audit_auc": new_eval.auc,
        "audit": new_eval.as_dict(),
        "parent_audit_auc": old_eval.auc,
    }


def gate_decision(
    metrics: dict[str, Any], settings: TrainerSettings, parent: VersionInfo, val_count: int
) -> tuple[str, str]:
    """(what the gate says, why the model is refused: "" to publish). A model is published only
    when its validation AUC is not below the parent's by more than the tolerance."""
    new_auc, old_auc = metrics["val_auc"], metrics["parent_val_auc"]
    if new_auc is None or old_auc is None:
        if not settings.allow_unvalidated:
            return "", (
                f"validation split cannot be scored ({val_count} labels, needs both classes); "
                "not publishing an unvalidated model"
            )
        return "UNVALIDATED: published because allow_unvalidated is set", ""
    if new_auc < old_auc - settings.auc_tolerance:
        return "", (
            f"val AUC {new_auc:.4f} is below the current v{parent.version}'s {old_auc:.4f} "
            f"by more than {settings.auc_tolerance}"
        )
    said = f"val AUC {new_auc:.4f} >= {old_auc:.4f} - {settings.auc_tolerance}"
    audit, parent_audit = metrics.get("audit_auc"), metrics.get("parent_audit_auc")
    if audit is None or parent_audit is None:
        return said, ""
    labels = metrics.get("audit_labels", 0)
    low, high = (
        (metrics.get("audit") or {}).get("auc_low"),
        (metrics.get("audit") or {}).get("auc_high"),
    )
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    if labels < settings.audit_min_labels:
        return f"{said}; audit slice AUC {audit:.4f}{interval} on {labels} labels (reported)", ""
    if audit < parent_audit - settings.auc_tolerance:
        return "", (
            f"audit-slice AUC {audit:.4f}{interval} on {labels} labels is below the current "
            f"v{parent.version}'s {parent_audit:.4f} by more than {settings.auc_tolerance}"
        )
    return f"{said}; audit slice AUC {audit:.4f}{interval} >= {parent_audit:.4f} - tolerance", ""
