"""Reduced-precision variants, with the AUC change measured before they are published (servers
only serve one where the drop is allowed): int8 by ONNX Runtime static quantisation calibrated
on labeled patches, fp16 (for CUDA) by converting the weights and arithmetic to half precision
with float32 inputs and outputs kept."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cad.aift import candidate_probability
from cad.measures import roc_auc
from cad.models.batcher import SerialBatcher
from cad.models.model import load_model
from cad.models.providers import SessionOptions
from cad.models.registry import MODEL_FILE, ModelRegistry, VersionInfo, sha256_file
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
SCHEMES = {
    "int8": {
        "format": "QDQ",
        "weights": "int8 per-channel",
        "activations": "uint8",
        "calibration": "MinMax",
    },
    "fp16": {"weights": "fp16", "arithmetic": "fp16", "inputs_outputs": "fp32"},
}


@dataclass(frozen=True)
class QuantizeReport:
    version: int
    precision: str
    auc_fp32: float
    auc_variant: float
    eval_candidates: int
    calibration_patches: int

    @property
    def auc_drop(self) -> float:
        return self.auc_fp32 - self.auc_variant


class _Calibration:
    """ONNX Runtime CalibrationDataReader over ready patches (0..255 float32, NCHW)."""

    def __init__(self, input_name: str, patches: npt.NDArray[np.float32], batch: int = 16) -> None:
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = (
            {input_name: np.ascontiguousarray(patches[i : i + batch])}
            for i in range(0, len(patches), batch)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)


def quantize_onnx(
    source: Path, target: Path, input_name: str, calibration: npt.NDArray[np.float32]
) -> None:
    """Static int8 quantisation of the convolutions and fully connected layers (QDQ, per-channel
    int8 weights, uint8 activations, MinMax calibration)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="cad-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            _Calibration(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTIZED_OPS),  # the softmax output stays exact float
        )


def to_fp16(source: Path, target: Path) -> None:
    """The model in half precision, its float32 input and output kept (the server's contract)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))


def reduced_model(
    info: VersionInfo, precision: str, calibration: npt.NDArray[np.float32], directory: Path
) -> VersionInfo:
    """``info``'s ``precision`` variant written to ``directory`` (not published), loadable like a
    version; int8 is calibrated on ``calibration`` patches (0..255 float32, NCHW)."""
    target = directory / MODEL_FILE
    if precision == "int8":
        input_name = load_model(info, SessionOptions()).input_name
        quantize_onnx(info.model_path, target, input_name, calibration)
    else:
        to_fp16(info.model_path, target)
    return VersionInfo(
        info.version,
        directory,
        dataclasses.replace(info.manifest, sha256=sha256_file(target), variant=precision),
    )


def candidate_auc(
    info: VersionInfo,
    patches: npt.NDArray[np.float32],
    labels: Sequence[int],
    per_candidate: int,
    options: SessionOptions = SessionOptions(),
) -> float:
    """AUC of candidate probabilities (mean of each candidate's ``per_candidate`` patches)."""
    model = load_model(info, options)
    probs = candidate_probability(
        SerialBatcher(64).predict(model, patches).reshape(len(labels), per_candidate, -1)
    )
    return roc_auc(list(labels), probs)


def quantize_version(
    registry: ModelRegistry,
    version: int,
    calibration: npt.NDArray[np.float32],
    eval_patches: npt.NDArray[np.float32],
    eval_labels: Sequence[int],
    per_candidate: int,
    precision: str = "int8",
) -> QuantizeReport:
    """Make the ``precision`` variant of ``version`` (``calibration`` patches are used by int8
    only), measure both AUCs on the evaluation candidates and publish the variant with them
    (whatever the drop: the server decides what it serves)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if len(set(eval_labels)) < 2:
        raise ValueError("the evaluation candidates need both classes to measure the AUC change")
    if len(eval_patches) != len(eval_labels) * per_candidate:
        raise ValueError("eval_patches must hold per_candidate patches for every label")
    info = registry.get(version)
    calibrated = len(calibration) if precision == "int8" else 0
    with tempfile.TemporaryDirectory(prefix=f"cad-{precision}-") as tmp:
        probe = reduced_model(info, precision, calibration, Path(tmp))
        target = probe.model_path
        auc_fp32 = candidate_auc(info, eval_patches, eval_labels, per_candidate)
        auc = candidate_auc(probe, eval_patches, eval_labels, per_candidate)
        report = QuantizeReport(version, precision, auc_fp32, auc, len(eval_labels), calibrated)
        registry.publish_variant(
            version,
            precision,
            target,
            {
                "quantization": {
                    "precision": precision,
                    "auc_fp32": auc_fp32,
                    f"auc_{precision}": auc,
                    "auc_drop": report.auc_drop,
                    "eval_candidates": len(eval_labels),
                    "calibration_patches": calibrated,
                    "scheme": SCHEMES[precision],
                }
            },
        )
    log.info(
        "v%s %s: AUC %.4f -> %.4f (drop %.4f) on %d candidates",
        version,
        precision,
        auc_fp32,
        auc,
        report.auc_drop,
        len(eval_labels),
    )
    return report


def quantize_from_store(
    settings: TrainerSettings,
    version: int | None = None,
    max_calibration: int = 512,
    progress: bool = True,
    precision: str = "int8",
) -> QuantizeReport:
    """``cad model quantize``: calibrate on the label store's labeled patches (as many as
    ``max_calibration``) and measure the AUC change on every labeled candidate; every candidate's
    patches are cut with the version's recipe so all have the same count."""
    from tqdm import tqdm

    from cad.aift import parse_recipe
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from trainer.data import PatchSource, labeled_examples

    registry = ModelRegistry(settings.registry_root, settings.model_name)
    store = open_store(settings.store_url)
    try:
        version = version or registry.with_pins_in(store).target()  # the pin is in the store
        examples = labeled_examples(store)
    finally:
        store.close()
    if version is None:
        raise FileNotFoundError(f"{registry.model_dir} has no versions")
    registry.pins = None  # the version is chosen; the store is closed
    info = registry.get(version)
    recipe = info.manifest.recipe
    source = PatchSource(ImageArchive(settings.archive_root), info.manifest.input_size, recipe)
    chunks = [
        source.patches(e)
        for e in tqdm(examples, desc="labeled patches", unit="cand", disable=not progress)
    ]
    if not chunks:
        raise ValueError("the label store has no labeled candidates to calibrate and evaluate on")
    patches = np.concatenate(chunks)
    rng = np.random.default_rng(settings.seed)
    pick = np.sort(rng.choice(len(patches), size=min(max_calibration, len(patches)), replace=False))
    report = quantize_version(
        registry,
        version,
        patches[pick],
        patches,
        [int(e.label or 0) for e in examples],
        parse_recipe(recipe).count,
        precision,
    )
    store = open_store(settings.store_url)
    try:
        store.fleet.add_audit(
            "publish_variant",
            settings.actor,
            f"{registry.name}/v{version}/{precision}",
            {
                "auc_fp32": report.auc_fp32,
                f"auc_{precision}": report.auc_variant,
                "auc_drop": report.auc_drop,
            },
        )
    finally:
        store.close()
    return report
