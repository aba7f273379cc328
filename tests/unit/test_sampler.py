"""The graph path (patches cut by an ONNX sampling graph on the model's device) against the host
path (numpy, the reference), both run here on the CPU provider: the same patches within a stated
tolerance, and the same candidate probabilities within 1e-4, on real DICOM and PNG requests."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from cad.aift.patches import Box, extract_many, parse_recipe, patch_affines
from cad.encoded import decode_encoded
from cad.imaging import Window, decode_dicom
from cad.models.registry import MODEL_FILE, ModelRegistry
from cad.models.sampler import AFFINES, IMAGES, INDEX, ImagePatches, pack, sampler_graph
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, make_settings, make_tiny_onnx

PATCH_TOLERANCE = 0.05
"""Largest difference of a patch pixel (values 0..255) between the two paths: the graph computes
its sampling points in float32 (about 1e-4 px at 1,000 px), numpy in float64."""
PROBABILITY_TOLERANCE = 1e-4
SPECS = ("polyp", "polyp-inside", "single", "frame", "polyp:8", "frame:3")
# inside; partly outside on each side; non-square; sub-pixel; larger than the image
BOXES = [
    Box(5, 6, 20, 20),
    Box(-8, 20, 24, 16),
    Box(50, -5, 20, 30),
    Box(3.25, 40.5, 9.3, 31.1),
    Box(-15, -15, 100, 95),
]
"""Every image under test is at least 64x64."""


def _png_of_a_real_frame() -> bytes:
    """A PNG of a real ultrasound frame (colour, from a multi-frame JPEG DICOM), 120x160."""
    pixels = decode_dicom(dicom_bytes("examples_ybr_color.dcm"), 17).pixels
    buf = io.BytesIO()
    Image.fromarray(pixels[:120, :160]).save(buf, format="PNG")
    return buf.getvalue()


IMAGES_UNDER_TEST = {
    "CT DICOM": lambda: decode_dicom(dicom_bytes("CT_small.dcm"), 0, Window(40, 400)).pixels,
    "MR DICOM": lambda: decode_dicom(dicom_bytes("MR_small.dcm"), 0).pixels,
    "PNG": lambda: decode_encoded(_png_of_a_real_frame()).pixels,
}


@pytest.mark.parametrize("image_name", sorted(IMAGES_UNDER_TEST))
@pytest.mark.parametrize("size", [32, 57])
def test_the_sampling_graph_cuts_the_reference_patches(image_name: str, size: int) -> None:
    pixels = IMAGES_UNDER_TEST[image_name]()
    session = ort.InferenceSession(
        sampler_graph(size).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    h, w = pixels.shape[:2]
    for spec in SPECS:
        recipe = parse_recipe(spec)
        reference = extract_many(pixels, BOXES, recipe, size)
        affines = np.concatenate([patch_affines(h, w, b, recipe) for b in BOXES])
        canvas, packed, index = pack([ImagePatches(pixels, affines)], len(affines))
        cut = session.run(None, {IMAGES: canvas, AFFINES: packed, INDEX: index})[0]
        assert cut.shape == reference.shape == (len(BOXES) * recipe.count, 3, size, size)
        diff = np.abs(cut - reference)
        assert diff.max() <= PATCH_TOLERANCE, (spec, float(diff.max()))
        # not vacuous: the patches differ from each other (flips, scales, crops)
        assert np.abs(reference[0] - reference[-1]).mean() > 1.0 or recipe.count == 1


def test_affine_rows_follow_the_recipe_order_and_count() -> None:
    recipe = parse_recipe("polyp")
    affines = patch_affines(100, 100, Box(20, 30, 40, 20), recipe)
    assert affines.shape == (24, 2, 3) and affines.dtype == np.float32
    # dihedral-major: the first three rows are the three scales, unflipped
    assert np.allclose(affines[:3, 0, 0] * 2, [40, 48, 60]) and np.allclose(affines[:3, 0, 1], 0)
    assert np.allclose(
        patch_affines(100, 100, Box(20, 30, 40, 20), parse_recipe("polyp:5")), affines[:5]
    )
    with pytest.raises(Exception, match="outside"):
        patch_affines(100, 100, Box(200, 30, 40, 20), recipe)


def test_pack_puts_every_part_back_in_order_and_pads_to_the_bucket() -> None:
    a = np.full((4, 5, 3), 1, dtype=np.uint8)
    b = np.full((6, 3, 3), 2, dtype=np.uint8)
    aff = np.arange(5 * 6, dtype=np.float32).reshape(5, 2, 3)
    parts = [ImagePatches(a, aff[:2]), ImagePatches(b, aff[2:3]), ImagePatches(a, aff[3:])]
    canvas, affines, index = pack(parts, 8)
    assert canvas.shape == (2, 6, 5, 3)  # each image once, padded to the largest
    assert (canvas[0, :4, :5] == 1).all() and (canvas[0, 4:] == 0).all()
    assert (canvas[1, :6, :3] == 2).all() and (canvas[1, :, 3:] == 0).all()
    flat = affines.reshape(-1, 2, 3)
    assert np.array_equal(flat[index[:5]], aff)  # the parts' maps, in the parts' order
    assert len(index) == 8 and (index[5:] == index[0]).all()


# --------------------------------------------------------------------------- through servers


@pytest.fixture(scope="module")
def spatial_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry whose model weighs every pixel by where it lies in the patch, so a patch
    flipped, rotated or shifted the wrong way scores differently."""
    tmp = tmp_path_factory.mktemp("sampler")
    onnx_path = tmp / "spatial.onnx"
    make_tiny_onnx(onnx_path, size=32, spatial=True)
    manifest = {"input_size": 32, "recipe": "polyp", "pretrained": {"source": "test"}}
    ModelRegistry(tmp / "registry", "cad").publish({MODEL_FILE: onnx_path}, manifest)
    yield tmp / "registry"
    shutil.rmtree(tmp, ignore_errors=True)


def _requests() -> list[cad_pb2.ClassifyRequest]:
    boxes = [
        cad_pb2.Candidate(
            client_id=str(i), box=cad_pb2.Box(x=b.x, y=b.y, width=b.width, height=b.height)
        )
        for i, b in enumerate(BOXES)
    ]
    images = [
        {"dicom": dicom_bytes("CT_small.dcm"), "window": cad_pb2.Window(center=40, width=400)},
        {"dicom": dicom_bytes("MR_small.dcm")},
        {"dicom": dicom_bytes("examples_ybr_color.dcm"), "frame_index": 17},
        {"encoded": _png_of_a_real_frame()},
    ]
    return [
        cad_pb2.ClassifyRequest(candidates=boxes, recipe=spec, **image)  # type: ignore[arg-type]
        for image in images
        for spec in SPECS
    ]


def _answers(root: Path, sampling: str, concurrent: bool) -> tuple[bool, list[list[float]]]:
    settings = make_settings(root, patch_sampling=sampling, providers="cpu", batch_max_size=32)
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as channel:
        server.refresh_models()
        on_device = server.server.models.require().samples_on_device
        stub = cad_pb2_grpc.CadInferenceStub(channel)

        def ask(request: cad_pb2.ClassifyRequest) -> list[float]:
            response = stub.Classify(request, timeout=60)
            return [v for r in response.results for v in (r.probability, r.entropy, r.score)]

        requests = _requests()
        if concurrent:  # requests on several images share model runs in the batcher
            with ThreadPoolExecutor(8) as pool:
                return on_device, list(pool.map(ask, requests))
        return on_device, [ask(r) for r in requests]


def test_graph_and_host_paths_give_the_same_probabilities_through_real_servers(
    spatial_registry: Path,
) -> None:
    host_on_device, host = _answers(spatial_registry, "host", concurrent=False)
    graph_on_device, graph = _answers(spatial_registry, "graph", concurrent=True)
    assert (host_on_device, graph_on_device) == (False, True)
    host_a, graph_a = np.array(host), np.array(graph)
    probabilities = np.s_[:, 0::3]
    assert np.abs(host_a[probabilities] - graph_a[probabilities]).max() <= PROBABILITY_TOLERANCE
    assert np.allclose(host_a, graph_a, rtol=1e-3, atol=1e-4)  # entropy and score as well
    assert np.ptp(host_a[probabilities]) > 0.1  # the candidates really differ


def test_auto_cuts_on_the_host_on_a_cpu(spatial_registry: Path) -> None:
    settings = make_settings(spatial_registry, providers="cpu")
    with ServerThread(settings) as server:
        server.refresh_models()
        assert not server.server.models.require().samples_on_device


def _cuda_usable() -> bool:
    from cad.models.providers import CUDA, select_providers

    return select_providers("auto")[0] == CUDA


@pytest.mark.slow
@pytest.mark.parametrize(
    "providers",
    [
        ("CPUExecutionProvider",),
        pytest.param(
            ("CUDAExecutionProvider", "CPUExecutionProvider"),
            marks=pytest.mark.skipif(not _cuda_usable(), reason="no usable CUDA device"),
        ),
    ],
)
def test_a_real_squeezenet_gives_the_same_probabilities_on_both_paths(
    tmp_path: Path, providers: tuple[str, ...]
) -> None:
    from cad.models.model import load_model
    from cad.models.providers import SessionOptions
    from cadcli.main import main

    root = tmp_path / "registry"
    with pytest.MonkeyPatch.context() as mp:  # no hub cache, no network: the shipped weights
        mp.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
        args = ["model", "init", "--arch", "squeezenet1_0", "--weights", "imagenet"]
        args += ["--registry", str(root), "--input-size", "64", "--log-level", "WARNING"]
        assert main(args) == 0
    info = ModelRegistry(root, "cad").get(1)
    host = load_model(info, SessionOptions(providers, patch_sampling="host"))
    graph = load_model(info, SessionOptions(providers, patch_sampling="auto"))  # graph on CUDA
    if providers[0] == "CPUExecutionProvider":
        assert not graph.samples_on_device
        graph = load_model(info, SessionOptions(providers, patch_sampling="graph"))
    assert graph.samples_on_device and not host.samples_on_device
    assert graph.provider == host.provider == providers[0]
    for pixels in (IMAGES_UNDER_TEST["CT DICOM"](), IMAGES_UNDER_TEST["PNG"]()):
        h, w = pixels.shape[:2]
        for spec in ("polyp", "frame"):
            recipe = parse_recipe(spec)
            want = host.run(extract_many(pixels, BOXES, recipe, 64))
            affines = np.concatenate([patch_affines(h, w, b, recipe) for b in BOXES])
            got = graph.run_images([ImagePatches(pixels, affines)], len(affines))
            assert np.abs(want - got).max() <= PROBABILITY_TOLERANCE
