"""SqueezeNet v1.0 beside AlexNet: the shipped ImageNet weights, `cad model init --arch`, served
probabilities equal to torch's, tuning depths, the frozen-trunk cache, and a round that keeps the
architecture."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from cad.aift import Box, extract_patches, parse_recipe
from cad.imaging import decode_dicom
from cad.labels.archive import ImageArchive
from cad.labels.store import open_store
from cad.models.registry import WEIGHTS_FILE, ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, make_settings
from trainer.data import PatchSource, labeled_examples, unlabeled_examples
from trainer.finetune import SplitNet, candidate_probabilities, param_groups
from trainer.network import CadNet, depths_of
from trainer.pool import load_net
from trainer.presets import Schedule
from trainer.rescore import rescore_pool
from trainer.round import run_round
from trainer.settings import TrainerSettings
from trainer.trunk import TrunkCache, trunk_digest
from trainer.weights import KNOWN, SHIPPED_DIR, build_initial, file_sha256

BOXES = [(0, 0, 10, 10), (20, 20, 30, 30), (2, 30, 12, 12), (30, 5, 25, 25), (10, 10, 20, 20)]
FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "SC_rgb.dcm",
    "emri_small.dcm",
    "693_UNCR.dcm",
    "image_dfl.dcm",
]


def test_shipped_weights_are_intact_and_licensed() -> None:
    known = KNOWN["squeezenet1_0"]
    weights = SHIPPED_DIR / known.shipped
    assert (
        file_sha256(weights)
        == known.shipped_sha256
        == ("4ba88a9c544cef063b50949ffb505fd862eb226585bc642a79f264fcaee6d59c")
    )
    licence = SHIPPED_DIR / "LICENSE-squeezenet"
    # verbatim: the BSD 2-clause text of the source repository, byte for byte
    assert hashlib.sha256(licence.read_bytes()).hexdigest() == (
        "900e176e31b720a8bb3f2db1ce735f49a2c28edccee0bb1fbed2b350c318b5d0"
    )


def test_shipped_imagenet_classifier_recognises_a_real_photo() -> None:
    """Grace Hopper in uniform (matplotlib's sample photo): ImageNet class 457 'bow tie' first,
    with a clear margin (0.284 vs 0.241 for 'suit' when measured), and her uniform's classes
    (suit 834, mortarboard 667, academic gown 400) next. A random network does not do this."""
    import torchvision
    import torchvision.transforms as transforms
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        photo = Image.open(fh).convert("RGB")
    x = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )(photo)[None]
    net = torchvision.models.squeezenet1_0()
    net.load_state_dict(torch.load(SHIPPED_DIR / KNOWN["squeezenet1_0"].shipped, weights_only=True))
    with torch.no_grad():
        p = torch.softmax(net.eval()(x), 1)[0]
    top = p.topk(4).indices.tolist()
    assert top[0] == 457 and set(top[1:]) <= {834, 667, 400, 906}
    assert p[457] > p[top[1]] + 0.02


def test_squeezenet_always_finds_its_shipped_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    for choice in (None, "imagenet"):
        net, pre = build_initial("squeezenet1_0", choice, seed=0, input_size=64)
        assert (pre.source, pre.found) == ("imagenet", "shipped") and pre.licence.startswith(
            "BSD-2-Clause"
        )
        state = torch.load(SHIPPED_DIR / KNOWN["squeezenet1_0"].shipped, weights_only=True)
        assert torch.equal(
            net.backbone.features[12].expand3x3.weight, state["features.12.expand3x3.weight"]
        )
        assert net.backbone.classifier[1].out_channels == 2
    _, pre = build_initial("squeezenet1_0", "random", seed=0)
    assert pre.source == "random-init"


def test_depths_rates_and_the_split() -> None:
    assert depths_of("squeezenet1_0") == (
        "conv1",
        "fire2",
        "fire3",
        "fire4",
        "fire5",
        "fire6",
        "fire7",
        "fire8",
        "fire9",
        "classifier",
    )
    net = CadNet(input_size=64, architecture="squeezenet1_0")
    groups = {
        g["name"]: g["lr"] for g in param_groups(net, Schedule(0.9, 1e-3, 1e-2, 0.95, 1), "fire9")
    }
    assert groups == {
        "fire9.weight": 1e-3,
        "fire9.bias": 2e-3,
        "classifier.weight": 1e-2,
        "classifier.bias": 2e-2,
    }
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {
        f"backbone.features.12.{c}.{k}"
        for c in ("squeeze", "expand1x1", "expand3x3")
        for k in ("weight", "bias")
    } | {"backbone.classifier.1.weight", "backbone.classifier.1.bias"}
    with pytest.raises(ValueError, match="unknown tuning depth 'fc8' for squeezenet1_0"):
        param_groups(net, Schedule(0.9, 1e-3, 1e-2, 0.95, 1), "fc8")
    x = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        for depth in depths_of("squeezenet1_0"):
            trunk, top = net.eval().split(depth)
            assert torch.allclose(top(trunk(x)), net(x), atol=1e-6), depth


def test_trunk_cache_serves_the_same_activations_and_never_a_stale_trunk() -> None:
    net = CadNet(input_size=64, architecture="squeezenet1_0").eval()
    trunk, _ = net.split("fire9")
    cache = TrunkCache(max_bytes=1 << 30)
    calls = []

    def patches() -> np.ndarray:
        calls.append(1)
        return np.random.default_rng(0).uniform(0, 255, (4, 3, 64, 64)).astype(np.float32)

    digest = trunk_digest(trunk)
    first = cache.features(trunk, digest, "k", patches)
    again = cache.features(trunk, digest, "k", patches)
    assert again is first and len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    with torch.no_grad():
        assert torch.equal(first, trunk(torch.from_numpy(patches())))
        net.backbone.features[0].bias += 1.0  # the trunk changed: another digest, recomputed
    assert trunk_digest(trunk) != digest
    cache.features(trunk, trunk_digest(trunk), "k", patches)
    assert cache.misses == 2
    small = TrunkCache(max_bytes=first.numel() * 4)  # room for one entry: the oldest goes
    small.features(trunk, digest, "a", patches)
    small.features(trunk, digest, "b", patches)
    assert small.nbytes == first.numel() * 4


@dataclass
class World:
    root: Path
    store_url: str
    archive: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("squeezenet")
    root = tmp / "registry"
    from cadcli.main import main

    with pytest.MonkeyPatch.context() as mp:  # no hub cache, no network: the shipped weights
        mp.setenv("TORCH_HOME", str(tmp / "empty-torch-home"))
        assert (
            main(
                [
                    "model",
                    "init",
                    "--arch",
                    "squeezenet1_0",
                    "--weights",
                    "imagenet",
                    "--registry",
                    str(root),
                    "--input-size",
                    "64",
                    "--recipe",
                    "polyp:8",
                    "--log-level",
                    "WARNING",
                ]
            )
            == 0
        )
    yield World(root, f"sqlite:///{root}-labels.sqlite3", Path(f"{root}-archive"))
    shutil.rmtree(tmp, ignore_errors=True)


def test_init_publishes_an_imagenet_squeezenet(world: World) -> None:
    m = ModelRegistry(world.root, "cad").get(1).manifest
    assert m.architecture == "squeezenet1_0" and m.input_size == 64
    pre = m.pretrained
    assert (pre.source, pre.found) == ("imagenet", "shipped")
    assert pre.sha256 == KNOWN["squeezenet1_0"].shipped_sha256 and "BSD-2-Clause" in pre.licence
    assert m.export.parity_max_abs_diff <= 1e-4


@pytest.mark.slow
def test_served_probabilities_equal_torch_and_a_round_keeps_the_architecture(world: World) -> None:
    settings = make_settings(world.root)
    info = ModelRegistry(world.root, "cad").get(1)
    net = load_net(info)
    recipe = parse_recipe("polyp:8")
    worst = 0.0
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        stub, review = cad_pb2_grpc.CadInferenceStub(ch), cad_pb2_grpc.CadReviewStub(ch)
        for name in FILES:
            data = dicom_bytes(name)
            r = stub.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=data,
                    candidates=[
                        cad_pb2.Candidate(
                            client_id=str(i), box=cad_pb2.Box(x=x, y=y, width=w, height=h)
                        )
                        for i, (x, y, w, h) in enumerate(BOXES)
                    ],
                ),
                timeout=60,
            )
            pixels = decode_dicom(data).pixels
            for res, (x, y, w, h) in zip(r.results, BOXES, strict=True):
                patches = torch.from_numpy(extract_patches(pixels, Box(x, y, w, h), recipe, 64))
                with torch.no_grad():
                    expected = float(torch.softmax(net(patches), 1)[:, 1].mean())
                worst = max(worst, abs(res.probability - expected))
            for res in r.results[:4]:
                verdict = cad_pb2.TRUE_POSITIVE if res.client_id in "13" else cad_pb2.FALSE_POSITIVE
                review.SubmitCorrection(
                    cad_pb2.Correction(
                        candidate_id=res.candidate_id, verdict=verdict, reviewer="dr.t"
                    ),
                    timeout=30,
                )
    assert worst <= 1e-4

    report = run_round(
        TrainerSettings(
            registry_root=world.root,
            store_url=world.store_url,
            archive_root=world.archive,
            depth="fire9",
            val_fraction=0.0,
            allow_unvalidated=True,
            train_batch_size=32,
            seed=1,
        ),
        progress=False,
    )
    assert report.outcome == "published", report.reason
    child = ModelRegistry(world.root, "cad").get(report.version)  # type: ignore[arg-type]
    assert (
        child.manifest.architecture == "squeezenet1_0"
        and child.manifest.training["depth"] == "fire9"
    )
    new, old = (
        torch.load(child.path / WEIGHTS_FILE, weights_only=True),
        torch.load(info.path / WEIGHTS_FILE, weights_only=True),
    )
    assert torch.equal(
        new["backbone.features.10.squeeze.weight"], old["backbone.features.10.squeeze.weight"]
    )
    assert not torch.equal(new["backbone.classifier.1.weight"], old["backbone.classifier.1.weight"])

    # re-scoring through the trunk cache gives what the served ONNX model gives
    store = open_store(world.store_url)
    try:
        archive = ImageArchive(world.archive)
        registry = ModelRegistry(world.root, "cad")
        rescore_pool(store, archive, registry, progress=False, depth="fire9")
        via_cache = {e.candidate_id: e.patch_probs for e in store.queue.unlabeled()}
        rescore_pool(store, archive, registry, progress=False, again=True)  # the ONNX path
        via_onnx = {e.candidate_id: e.patch_probs for e in store.queue.unlabeled()}
        assert via_cache.keys() == via_onnx.keys() and len(via_cache) == len(FILES)
        assert max(float(np.abs(via_cache[k] - via_onnx[k]).max()) for k in via_cache) <= 1e-4
        examples = labeled_examples(store)[:3] + unlabeled_examples(store)[:2]
    finally:
        store.close()
    source = PatchSource(ImageArchive(world.archive), 64)
    child_net = load_net(child)
    plain = candidate_probabilities(child_net, examples, source, progress=False)
    split = SplitNet(child_net, "fire9", source)
    assert split.cache is not None and split.digest == trunk_digest(
        net.split("fire9")[0]
    )  # same trunk as v1
    cached = candidate_probabilities(child_net, examples, source, progress=False, depth="fire9")
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain, cached, strict=True)) <= 1e-5
