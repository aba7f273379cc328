"""int8 and fp16 variants: made with ONNX Runtime, AUC change recorded, served only within the
allowed drop."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cad.models.registry import ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from trainer.quantize import quantize_version


def labeled_patches(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Candidates of 2 patches each: findings are brighter in the first channel (the tiny model's cue)."""
    rng = np.random.default_rng(seed)
    labels = [int(x) for x in rng.integers(0, 2, n)]
    patches = rng.uniform(0, 255, (n, 2, 3, 32, 32)).astype(np.float32)
    for i, y in enumerate(labels):
        patches[i, :, 0] = np.clip(
            patches[i, :, 0] * (0.55 if y else 0.45) + rng.normal(0, 20), 0, 255
        )
    return patches.reshape(n * 2, 3, 32, 32), labels


@pytest.fixture
def quantized(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    publish_tiny(
        root,
        tmp_path / "build",
        weights=np.array([[-0.3, 0.3], [0.0, 0.0], [0.0, 0.0]], np.float32),
    )
    calibration, _ = labeled_patches(32, 0)
    patches, labels = labeled_patches(200, 1)
    report = quantize_version(
        ModelRegistry(root, "cad"), 1, calibration, patches, labels, per_candidate=2
    )
    assert 0.5 < report.auc_fp32 <= 1 and 0.5 < report.auc_variant <= 1
    assert abs(report.auc_drop) < 0.05 and report.eval_candidates == 200
    return root


def test_int8_variant_is_published_beside_its_version(quantized: Path) -> None:
    registry = ModelRegistry(quantized, "cad")
    variant = registry.variant(1, "int8")
    assert variant is not None and registry.versions() == [1]  # a variant, not a new version
    m = variant.manifest
    q = m.quantization
    assert m.variant_of == 1 and m.variant == "int8" and q is not None and q.precision == "int8"
    assert m.sha256 != registry.get(1).manifest.sha256
    assert q.auc_drop == pytest.approx(q.auc_fp32 - q.auc_int8)
    import onnx

    ops = {n.op_type for n in onnx.load(str(variant.model_path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    with pytest.raises(FileExistsError):
        registry.publish_variant(1, "int8", variant.model_path, {})


def test_fp16_variant_keeps_float32_inputs_and_records_its_auc(tmp_path: Path) -> None:
    import onnx

    root = tmp_path / "registry"
    publish_tiny(root, tmp_path / "build", weights=TINY_CUE)
    patches, labels = labeled_patches(200, 1)
    report = quantize_version(
        ModelRegistry(root, "cad"), 1, patches[:0], patches, labels, 2, precision="fp16"
    )
    assert report.precision == "fp16" and report.calibration_patches == 0
    assert abs(report.auc_drop) < 0.01 and 0.5 < report.auc_variant <= 1
    variant = ModelRegistry(root, "cad").variant(1, "fp16")
    assert variant is not None and variant.manifest.variant == "fp16"
    q = variant.manifest.quantization
    assert q is not None and q.precision == "fp16" and q.auc_fp16 == report.auc_variant
    assert q.auc_int8 is None and q.auc_drop == pytest.approx(report.auc_drop)
    graph = onnx.load(str(variant.model_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in graph.initializer}


TINY_CUE = np.array([[-0.3, 0.3], [0.0, 0.0], [0.0, 0.0]], np.float32)


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize(("drop", "allowed"), [(0.004, True), (0.006, False)])
def test_server_serves_a_variant_only_within_the_allowed_auc_drop(
    quantized: Path, tmp_path: Path, drop: float, allowed: bool, precision: str
) -> None:
    # The int8 model, or an fp16 conversion of the version, published as the variant of a fresh
    # version, recorded with a given drop.
    served = precision if allowed else "fp32"
    source = ModelRegistry(quantized, "cad").variant(1, "int8")
    if precision == "fp16":
        from trainer.quantize import to_fp16

        to_fp16(ModelRegistry(quantized, "cad").get(1).model_path, tmp_path / "fp16.onnx")
    root = tmp_path / "fresh"
    publish_tiny(
        root,
        tmp_path / "build2",
        weights=np.array([[-0.3, 0.3], [0.0, 0.0], [0.0, 0.0]], np.float32),
    )
    facts = {"precision": precision, "auc_fp32": 0.9, f"auc_{precision}": 0.9 - drop}
    ModelRegistry(root, "cad").publish_variant(
        1,
        precision,
        tmp_path / "fp16.onnx" if precision == "fp16" else source.model_path,
        {"quantization": {**facts, "auc_drop": drop, "eval_candidates": 10}},
    )
    settings = make_settings(root, precision=precision)  # default: at most 0.005
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        model = server.server.models.current
        assert model is not None and model.precision == served and model.version == 1
        raw = cad_pb2.RawImage(
            height=40,
            width=40,
            channels=3,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=bytes(range(40)) * 120,
        )
        r = cad_pb2_grpc.CadInferenceStub(ch).Classify(
            cad_pb2.ClassifyRequest(
                raw=raw,
                candidates=[
                    cad_pb2.Candidate(client_id="a", box=cad_pb2.Box(x=2, y=2, width=30, height=30))
                ],
            ),
            timeout=30,
        )
        assert 0 <= r.results[0].probability <= 1
        info = server.server.metrics.registry.get_sample_value(
            "cad_model_info",
            {"model": "cad", "version": "1", "provider": model.provider, "precision": served},
        )
        assert info == 1
