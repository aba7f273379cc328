"""Test helpers: real DICOM files shipped by pydicom / pydicom-data, tiny ONNX models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from cad.models.registry import MODEL_FILE, ModelRegistry, VersionInfo
from cadcli.demo import sample_dicom as dicom_path
from service.settings import ServerSettings


def dicom_bytes(name: str) -> bytes:
    return dicom_path(name).read_bytes()


TINY_WEIGHTS = np.array([[0.03, -0.03], [-0.02, 0.02], [0.01, -0.01]], dtype=np.float32)


def make_tiny_onnx(
    path: Path,
    size: int = 32,
    channels: int = 3,
    nan_output: bool = False,
    weights: np.ndarray = TINY_WEIGHTS,
    spatial: bool = False,
) -> None:
    """A tiny model honouring the server's contract: patches [N,3,S,S] -> probabilities [N,2].

    probabilities = softmax(mean_pixel_per_channel / 255 @ W * 50 + b): fast, and its
    output depends on the patch content so different candidates get different results.
    ``spatial``: each pixel is first weighted by a fixed random map, so that the output also
    depends on where in the patch a pixel lies (a flipped or rotated patch scores differently).
    """
    import onnx
    from onnx import TensorProto, helper

    pixel_map = np.random.default_rng(7).uniform(-3, 5, (1, channels, size, size))
    nodes = [helper.make_node("Mul", ["patches", "pixel_map"], ["weighted"])] if spatial else []
    nodes += [
        helper.make_node(
            "ReduceMean", ["weighted" if spatial else "patches", "axes"], ["pooled"], keepdims=0
        ),
        helper.make_node("Div", ["pooled", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    output = "probs"
    if nan_output:
        nodes.append(helper.make_node("Div", ["probs", "zero"], ["inf"]))
        nodes.append(helper.make_node("Mul", ["inf", "zero"], ["nan"]))
        output = "nan"
    nodes.append(helper.make_node("Identity", [output], ["probabilities"]))
    initializers = [
        helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0 / 50.0]),
        helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.flatten().tolist()),
        helper.make_tensor("b", TensorProto.FLOAT, [2], [0.0, 0.0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    if spatial:
        initializers.append(
            helper.make_tensor(
                "pixel_map", TensorProto.FLOAT, list(pixel_map.shape), pixel_map.ravel().tolist()
            )
        )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(
                "patches", TensorProto.FLOAT, ["batch", channels, size, size]
            )
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


TINY_MANIFEST = {"input_size": 32, "pretrained": {"source": "test"}}
"""The fields a test publisher gives (the registry fills in the rest)."""


def publish_tiny(
    root: Path,
    tmp: Path,
    name: str = "cad",
    size: int = 32,
    recipe: str = "polyp",
    **kwargs: object,
) -> VersionInfo:
    """Publish a tiny model version into the registry at ``root``."""
    tmp.mkdir(parents=True, exist_ok=True)
    onnx_path = tmp / f"tiny-{np.random.default_rng().integers(1 << 30)}.onnx"
    make_tiny_onnx(onnx_path, size=size, **kwargs)  # type: ignore[arg-type]
    manifest = {"input_size": size, "recipe": recipe, "pretrained": {"source": "test"}}
    return ModelRegistry(root, name).publish({MODEL_FILE: onnx_path}, manifest)


def manifest_of(info: VersionInfo) -> dict[str, object]:
    return json.loads((info.path / "manifest.json").read_text())


def block_model_runs(model: object) -> tuple[threading.Event, threading.Event]:
    """Make ``model.run`` wait until released: returns (entered, release) events."""
    entered, release = threading.Event(), threading.Event()
    original = model.run  # type: ignore[attr-defined]

    def blocking_run(batch: np.ndarray) -> np.ndarray:
        entered.set()
        assert release.wait(30), "the test never released the model"
        return original(batch)

    model.run = blocking_run  # type: ignore[attr-defined]
    return entered, release


def with_raw(name: str, **values: str | bytes) -> bytes:
    """A bundled DICOM file with attributes replaced by raw bytes, exactly as a broken modality
    could write them (pydicom would refuse to set such values through its API)."""
    import io

    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(dicom_path(name))
    for keyword, raw in values.items():
        tag = Tag(tag_for_keyword(keyword))
        data = raw.encode() if isinstance(raw, str) else raw
        data += b" " * (len(data) % 2)
        implicit, little = ds.original_encoding
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(data), data, 0, implicit, little)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def make_settings(root: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "registry_root": root,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "providers": "auto",
        "poll_interval_s": 3600.0,  # tests refresh explicitly; no timing dependence
        "grace_s": 1.0,
        "store_url": f"sqlite:///{root}-labels.sqlite3",
        "archive_root": Path(f"{root}-archive"),
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]
