"""``cad model init``: build the initial model, export, check and publish version 1."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from cad.aift import parse_recipe
from cad.models.registry import MODEL_FILE, WEIGHTS_FILE, ModelRegistry, VersionInfo
from trainer.export import export_and_check
from trainer.network import CLASSES
from trainer.settings import TrainerSettings
from trainer.weights import build_initial

log = logging.getLogger(__name__)


class RegistryNotEmpty(RuntimeError):
    """``init`` on a registry that already has versions, without ``force``."""


def init_model(settings: TrainerSettings, force: bool = False) -> VersionInfo:
    """Create and publish the initial model version.

    Raises:
        RegistryNotEmpty: versions exist and ``force`` is false.
        trainer.weights.WeightsUnavailable: ImageNet weights asked for and not found.
        trainer.export.ExportCheckFailed: ONNX Runtime disagrees with torch.
    """
    registry = ModelRegistry(settings.registry_root, settings.model_name)
    if registry.versions() and not force:
        raise RegistryNotEmpty(
            f"{registry.model_dir} already has versions {registry.versions()}; "
            "pass --force to publish a fresh initial model as a new version"
        )
    recipe = parse_recipe(settings.recipe)
    net, pretrained = build_initial(
        settings.architecture,
        settings.weights,
        settings.pretrained_weights,
        settings.allow_download,
        settings.seed,
        settings.input_size,
    )
    with tempfile.TemporaryDirectory(prefix="cad-init-") as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        log.info("exporting %s (%d px input) to ONNX", settings.architecture, settings.input_size)
        report = export_and_check(net, onnx_path, settings.input_size, settings.parity_tolerance)
        log.info("ONNX Runtime matches torch: max |dp| = %.2e", report.max_abs_diff)
        weights_path = Path(tmp) / WEIGHTS_FILE
        torch.save(net.state_dict(), weights_path)
        manifest = {
            "parent_version": None,
            "architecture": settings.architecture,
            "classes": list(CLASSES),
            "input_size": settings.input_size,
            "input_name": "patches",
            "output_name": "probabilities",
            "recipe": recipe.spec,
            "pretrained": pretrained.as_dict(),
            "seed": settings.seed,
            "export": {
                "opset": report.opset,
                "parity_max_abs_diff": report.max_abs_diff,
                "fc6_fold": report.fc6_fold,
                "parity_patches": report.checked_patches,
                "torch": torch.__version__,
            },
            "labels": {"count": 0, "ids_sha256": None},
            "metrics": {},
        }
        info = registry.publish({MODEL_FILE: onnx_path, WEIGHTS_FILE: weights_path}, manifest)
    log.info(
        "published %s version %d (%s) at %s",
        registry.name,
        info.version,
        pretrained.source,
        info.path,
    )
    return info
