"""Patches cut on the model's device: the recipe's sampling as an ONNX graph before the model.

The host path cuts every patch in numpy (:func:`cad.aift.patches.extract_many`) and sends
the model ``float32 (n, 3, S, S)``: 0.6 MB per patch at 224 px, 43 MB for a 72-patch request,
cut on the CPU. The graph path sends the decoded 8-bit image once and, per patch, the 2x3 affine
map of :func:`cad.aift.patches.patch_affines` (24 bytes); this graph samples the patches
where the model runs (bilinear, zeros outside the image, ONNX ``GridSample``) and feeds them to
the model inside one session, so the patches never leave the device.

Inputs of the combined graph, for ``B`` images of a batch (each zero-padded at the bottom and
right to the largest, which is exact: the padding is the zeros the sampler reads outside an
image anyway) with up to ``N`` patches each:

- ``cad_images``: uint8 ``(B, H, W, 3)``;
- ``cad_affines``: float32 ``(B, N, 2, 3)``, in pixels (``x`` column, ``y`` row);
- ``cad_index``: int64 ``(P,)``, which of the ``B * N`` sampled patches the model runs on, in
  the order the batcher wants the probabilities back (a bucket is padded by repeating one).

The output is the model's own. The grid is built with ``MatMul`` (a constant base grid times the
affine maps) rather than ``AffineGrid``, which needs opset 20 and has fewer kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IMAGES, AFFINES, INDEX = "cad_images", "cad_affines", "cad_index"
MIN_OPSET = 16
"""GridSample's first opset."""


@dataclass(frozen=True)
class ImagePatches:
    """One request's patches as the image they are cut from and one affine map per patch
    (what the classifier hands the batcher on the graph path). Sliced like an array of patches."""

    image: npt.NDArray[np.uint8]
    """The decoded image, uint8 ``(H, W, 3)``."""
    affines: npt.NDArray[np.float32]
    """float32 ``(n, 2, 3)`` from :func:`cad.aift.patches.patch_affines`."""

    def __len__(self) -> int:
        return len(self.affines)

    def __getitem__(self, index: slice) -> ImagePatches:
        return ImagePatches(self.image, self.affines[index])

    @property
    def nbytes(self) -> int:
        """Bytes sent to the model for these patches (the image counted once)."""
        return int(self.image.nbytes + self.affines.nbytes + 8 * len(self))


def opset_of(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def sampler_graph(size: int, opset: int = MIN_OPSET, ir_version: int = 8, output: str = "") -> Any:
    """The sampler alone: (images, affines, index) -> float32 patches ``(P, 3, size, size)``,
    values 0..255, named ``output`` (default ``cad_patches``)."""
    from onnx import TensorProto, helper

    if opset < MIN_OPSET:
        raise ValueError(f"the sampler needs ONNX opset {MIN_OPSET} or newer, not {opset}")
    out = output or "cad_patches"
    p = "cad_sampler/"  # internal names, clear of any model's
    centres = (2.0 * np.arange(size) + 1.0) / size - 1.0
    u, v = np.meshgrid(centres, centres)  # row-major over the patch: u along columns
    base = np.stack([u.ravel(), v.ravel(), np.ones(size * size)], axis=1).astype(np.float32)

    def const(name: str, array: npt.NDArray[Any]) -> Any:
        kind = TensorProto.INT64 if array.dtype == np.int64 else TensorProto.FLOAT
        return helper.make_tensor(p + name, kind, list(array.shape), array.ravel().tolist())

    node = helper.make_node
    nodes = [
        node("Cast", [IMAGES], [p + "float"], to=TensorProto.FLOAT),
        node("Transpose", [p + "float"], [p + "nchw"], perm=[0, 3, 1, 2]),
        # pixels -> GridSample's normalised coordinates (align_corners=0): (2 x + 1) / W - 1
        node("Shape", [IMAGES], [p + "shape"]),
        node("Gather", [p + "shape", p + "wh_axes"], [p + "wh_int"]),
        node("Cast", [p + "wh_int"], [p + "wh"], to=TensorProto.FLOAT),
        node("Div", [p + "two", p + "wh"], [p + "scale"]),
        node("Div", [p + "one", p + "wh"], [p + "inv"]),
        node("Sub", [p + "inv", p + "one"], [p + "offset"]),
        node("Transpose", [AFFINES], [p + "affines_t"], perm=[0, 1, 3, 2]),
        node("MatMul", [p + "base", p + "affines_t"], [p + "grid_px"]),  # (B, N, S*S, 2)
        node("Mul", [p + "grid_px", p + "scale"], [p + "grid_scaled"]),
        node("Add", [p + "grid_scaled", p + "offset"], [p + "grid_norm"]),
        node("Reshape", [p + "grid_norm", p + "grid_shape"], [p + "grid"]),  # (B, N*S, S, 2)
        node(
            "GridSample",
            [p + "nchw", p + "grid"],
            [p + "sampled"],  # (B, 3, N*S, S)
            mode="linear" if opset >= 20 else "bilinear",
            padding_mode="zeros",
            align_corners=0,
        ),
        node("Reshape", [p + "sampled", p + "split_shape"], [p + "split"]),  # (B, 3, N, S, S)
        node("Transpose", [p + "split"], [p + "by_patch"], perm=[0, 2, 1, 3, 4]),
        node("Reshape", [p + "by_patch", p + "flat_shape"], [p + "flat"]),  # (B*N, 3, S, S)
        node("Gather", [p + "flat", INDEX], [out], axis=0),
    ]
    initializers = [
        const("wh_axes", np.array([2, 1], dtype=np.int64)),
        const("two", np.array(2.0, dtype=np.float32)),
        const("one", np.array(1.0, dtype=np.float32)),
        const("base", base),
        const("grid_shape", np.array([0, -1, size, 2], dtype=np.int64)),
        const("split_shape", np.array([0, 3, -1, size, size], dtype=np.int64)),
        const("flat_shape", np.array([-1, 3, size, size], dtype=np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "cad_patch_sampler",
        [
            helper.make_tensor_value_info(
                IMAGES, TensorProto.UINT8, ["images", "height", "width", 3]
            ),
            helper.make_tensor_value_info(
                AFFINES, TensorProto.FLOAT, ["images", "per_image", 2, 3]
            ),
            helper.make_tensor_value_info(INDEX, TensorProto.INT64, ["patches"]),
        ],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["patches", 3, size, size])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def with_sampler(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto`` honouring the server's contract) with the sampler in
    front of its input: the combined graph described in the module docstring.

    Raises:
        ValueError: the model's opset is older than GridSample's.
    """
    from onnx import compose

    model_input = model.graph.input[0]
    size = model_input.type.tensor_type.shape.dim[2].dim_value
    sampler = sampler_graph(size, opset_of(model), model.ir_version, output="cad_sampler/patches")
    return compose.merge_models(sampler, model, io_map=[("cad_sampler/patches", model_input.name)])


def pack(
    parts: Sequence[ImagePatches], size: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The combined graph's inputs for one batch: each distinct image once (zero-padded to the
    largest), the affine maps by image, and the index that puts the patches back in the order
    of ``parts``, padded to ``size`` (a bucket) by repeating the first patch."""
    rows: dict[int, int] = {}
    images: list[npt.NDArray[np.uint8]] = []
    maps: list[list[npt.NDArray[np.float32]]] = []
    index: list[npt.NDArray[np.int64]] = []
    starts: list[tuple[int, int]] = []
    for part in parts:
        row = rows.setdefault(id(part.image), len(images))
        if row == len(images):
            images.append(part.image)
            maps.append([])
        starts.append((row, sum(len(a) for a in maps[row])))
        maps[row].append(part.affines)
    per_image = max(sum(len(a) for a in m) for m in maps)
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    canvas = np.zeros((len(images), height, width, 3), dtype=np.uint8)
    affines = np.zeros((len(images), per_image, 2, 3), dtype=np.float32)
    for row, (image, m) in enumerate(zip(images, maps, strict=True)):
        canvas[row, : image.shape[0], : image.shape[1]] = image
        joined = np.concatenate(m)
        affines[row, : len(joined)] = joined
    for (row, start), part in zip(starts, parts, strict=True):
        index.append(row * per_image + start + np.arange(len(part), dtype=np.int64))
    flat = np.concatenate(index)
    if size > len(flat):
        flat = np.concatenate([flat, np.full(size - len(flat), flat[0], dtype=np.int64)])
    return canvas, affines, flat
