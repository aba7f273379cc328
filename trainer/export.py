"""Export to ONNX and check ONNX Runtime against torch: the one export path of the trainer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.network import Probabilities

INPUT_NAME = "patches"
OUTPUT_NAME = "probabilities"
OPSET = 17


class ExportCheckFailed(RuntimeError):
    """ONNX Runtime's outputs differ from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    checked_patches: int
    opset: int = OPSET


def export_onnx(net: nn.Module, path: Path, input_size: int) -> None:
    """Write ``net`` (+ softmax) as ONNX with a dynamic batch axis."""
    model = Probabilities(net).eval()
    example = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )


def check_parity(
    net: nn.Module, path: Path, patches: np.ndarray, tolerance: float
) -> float:
    """Max |p_onnx - p_torch| over ``patches`` (float32 ``[n, 3, S, S]``) on the CPU provider.

    Raises:
        ExportCheckFailed: over ``tolerance``, or outputs not finite.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run([OUTPUT_NAME], {INPUT_NAME: patches.astype(np.float32)})[0]
    model = Probabilities(net).eval()
    with torch.no_grad():
        torch_probs = model(torch.from_numpy(patches.astype(np.float32))).numpy()
    if not (np.all(np.isfinite(onnx_probs)) and np.all(np.isfinite(torch_probs))):
        raise ExportCheckFailed("non-finite probabilities in the export check")
    diff = float(np.max(np.abs(onnx_probs - torch_probs)))
    if diff > tolerance:
        raise ExportCheckFailed(
            f"ONNX Runtime differs from torch by {diff:.2e} > tolerance {tolerance:.0e}"
        )
    return diff


def export_and_check(
    net: nn.Module, path: Path, input_size: int, tolerance: float, patches: np.ndarray | None = None
) -> ExportReport:
    """Export, then check parity on ``patches`` (default: 8 seeded random patches)."""
    net = net.eval()
    export_onnx(net, path, input_size)
    if patches is None:
        rng = np.random.default_rng(0)
        patches = rng.uniform(0, 255, (8, 3, input_size, input_size)).astype(np.float32)
    diff = check_parity(net, path, patches, tolerance)
    return ExportReport(path, diff, len(patches))
