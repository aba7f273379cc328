"""Export to ONNX and check ONNX Runtime against torch: the one export path of the trainer."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.network import CadNet, Probabilities

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
    fc6_fold: int = 1
    """How many fc6 inputs were summed into one in the exported graph (1: exported as is)."""


def export_form(net: nn.Module) -> tuple[nn.Module, int]:
    """The network as exported, and its fc6 fold factor.

    Below 224 px :class:`CadNet`'s last feature map is 1-3 px and is upsampled
    (nearest neighbour, factor k) to AlexNet's 6x6 before fc6, so each map pixel
    reaches fc6 k*k times. fc6 applied to the upsampled map equals fc6 with
    those k*k weight columns summed, applied to the map itself: the same
    function (up to float rounding, which the parity check bounds) with k*k
    times fewer fc6 weights and multiply-adds; at 64 px the ONNX file is 81
    instead of 228 MB. ``weights.pt`` keeps the trained parameters unchanged.
    """
    if not isinstance(net, CadNet) or not isinstance(
        getattr(net.backbone, "avgpool", None), nn.Upsample
    ):
        return net, 1
    k = int(net.backbone.avgpool.scale_factor)
    side = 6 // k
    folded = copy.deepcopy(net)
    fc6 = folded.backbone.classifier[1]
    assert isinstance(fc6, nn.Linear) and fc6.in_features == 256 * 36  # noqa: S101  an invariant, not input checking
    with torch.no_grad():
        # flatten order of the 6x6 map: c*36 + I*6 + J with I = i*k + a (nearest: out[I] = in[I // k])
        weight = fc6.weight.reshape(fc6.out_features, 256, side, k, side, k).sum(dim=(3, 5))
        small = nn.Linear(256 * side * side, fc6.out_features)
        small.weight.copy_(weight.reshape(fc6.out_features, -1))
        small.bias.copy_(fc6.bias)
    folded.backbone.classifier[1] = small
    folded.backbone.avgpool = nn.Identity()
    return folded.eval(), k * k


def export_onnx(net: nn.Module, path: Path, input_size: int) -> int:
    """Write ``net`` (+ softmax) as ONNX with a dynamic batch axis, in its :func:`export_form`.
    Returns the fc6 fold factor."""
    form, fold = export_form(net)
    model = Probabilities(form).eval()
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
    return fold


def check_parity(net: nn.Module, path: Path, patches: np.ndarray, tolerance: float) -> float:
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
    fold = export_onnx(net, path, input_size)
    if patches is None:
        rng = np.random.default_rng(0)
        patches = rng.uniform(0, 255, (8, 3, input_size, input_size)).astype(np.float32)
    diff = check_parity(net, path, patches, tolerance)
    return ExportReport(path, diff, len(patches), fc6_fold=fold)
