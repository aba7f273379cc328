"""The real AlexNet: bootstrap, ONNX export and parity, registry manifest, served end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from cad.aift import Box, parse_recipe
from cad.aift.patches import extract_many
from cad.imaging import Window, decode_dicom
from cad.models.registry import MODEL_FILE, WEIGHTS_FILE, ModelRegistry, sha256_file
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, make_settings
from trainer.bootstrap import RegistryNotEmpty, init_model
from trainer.export import export_and_check, export_form
from trainer.network import CadNet, Probabilities
from trainer.settings import TrainerSettings
from trainer.weights import WeightsUnavailable, build_initial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def alexnet_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("alexnet") / "registry"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root.parent / "empty-torch-home"))
        init_model(TrainerSettings(registry_root=root))
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # ~0.5 GB; module fixtures outlive their tests


def test_manifest_records_everything(alexnet_registry: Path) -> None:
    info = ModelRegistry(alexnet_registry, "cad").get(1)
    m = info.manifest
    assert m.version == 1 and m.parent_version is None and m.architecture == "alexnet"
    assert m.pretrained.source == "random-init"
    assert m.input_size == 224 and m.recipe == "polyp" and m.classes == ("background", "finding")
    assert m.sha256 == sha256_file(info.path / MODEL_FILE)
    assert m.files[WEIGHTS_FILE] == sha256_file(info.path / WEIGHTS_FILE)
    assert m.export.parity_max_abs_diff <= 1e-4 and m.export.fc6_fold == 1  # 6x6 map: as is
    assert m.created.endswith("+00:00")


@pytest.mark.parametrize(("size", "fold"), [(64, 36), (100, 9), (128, 4), (224, 1)])
def test_small_inputs_export_fc6_folded_with_the_same_outputs(
    size: int, fold: int, tmp_path: Path
) -> None:
    torch.manual_seed(size)
    net = CadNet(input_size=size).eval()
    with torch.no_grad():  # a trained-looking fc6: no two of the columns a fold sums are alike
        net.backbone.classifier[1].weight.normal_(0, 0.02)
    form, k = export_form(net)
    assert k == fold
    fc6 = form.backbone.classifier[1]  # type: ignore[index, union-attr]
    assert fc6.in_features == 9216 // fold
    x = torch.rand(6, 3, size, size) * 255
    with torch.no_grad():
        torch.testing.assert_close(form(x), net(x), atol=2e-5, rtol=1e-4)
    report = export_and_check(net, tmp_path / "m.onnx", size, 1e-5)
    assert report.fc6_fold == fold and report.max_abs_diff <= 1e-5
    params = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in form.parameters()) == params - 4096 * 9216 * (fold - 1) // fold
    assert (
        abs((tmp_path / "m.onnx").stat().st_size - 4 * (params - 4096 * 9216 * (fold - 1) // fold))
        < 2**20
    )


def test_served_alexnet_matches_torch_on_a_real_ct_slice(alexnet_registry: Path) -> None:
    data = dicom_bytes("CT_small.dcm")
    boxes = [Box(20, 30, 40, 30), Box(70, 70, 25, 25)]
    request = cad_pb2.ClassifyRequest(
        dicom=data,
        window=cad_pb2.Window(center=40, width=400),
        candidates=[
            cad_pb2.Candidate(
                client_id=str(i), box=cad_pb2.Box(x=b.x, y=b.y, width=b.width, height=b.height)
            )
            for i, b in enumerate(boxes)
        ],
    )
    with (
        ServerThread(make_settings(alexnet_registry)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        server.refresh_models()
        response = cad_pb2_grpc.CadInferenceStub(ch).Classify(request, timeout=120)
    assert response.model_version == "1" and all(r.patches == 24 for r in response.results)

    net = CadNet()
    net.load_state_dict(
        torch.load(alexnet_registry / "cad" / "1" / WEIGHTS_FILE, weights_only=True)
    )
    patches = extract_many(
        decode_dicom(data, 0, Window(40, 400)).pixels, boxes, parse_recipe("polyp"), 224
    )
    with torch.no_grad():
        probs = Probabilities(net.eval())(torch.from_numpy(patches)).numpy()[:, 1].reshape(2, 24)
    served = np.array([r.probability for r in response.results])
    np.testing.assert_allclose(served, probs.mean(axis=1), atol=1e-4)


def test_init_refuses_a_registry_with_versions(alexnet_registry: Path) -> None:
    with pytest.raises(RegistryNotEmpty, match="--force"):
        init_model(TrainerSettings(registry_root=alexnet_registry))


def test_cli_init_exit_code_and_message(alexnet_registry: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cadcli.main", "model", "init", "--registry", str(alexnet_registry)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "already has versions [1]" in result.stderr


def _fake_imagenet_file(path: Path) -> Path:
    from torchvision.models import alexnet

    torch.manual_seed(123)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet(weights=None).state_dict(), path)
    return path


def test_local_imagenet_weights_from_settings_path(tmp_path: Path) -> None:
    weights = _fake_imagenet_file(tmp_path / "alexnet.pth")
    net, pretrained = build_initial("alexnet", explicit=weights, seed=0)
    assert (
        pretrained.source == "imagenet"
        and pretrained.path == str(weights)
        and pretrained.found == "explicit"
    )
    state = torch.load(weights, weights_only=True)
    assert torch.equal(net.backbone.features[0].weight, state["features.0.weight"])
    assert net.backbone.classifier[6].out_features == 2


def test_local_imagenet_weights_from_the_torch_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _fake_imagenet_file(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    _, pretrained = build_initial("alexnet", seed=0)
    assert (
        pretrained.source == "imagenet"
        and pretrained.found == "hub-cache"
        and len(pretrained.sha256) == 64
    )


def test_random_init_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, pretrained = build_initial("alexnet", seed=0)
    assert pretrained.source == "random-init"
    assert "RANDOM INITIALISATION" in caplog.text


def test_explicit_imagenet_that_cannot_be_found_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as info:  # AlexNet ships no weights: not a random start
        build_initial("alexnet", "imagenet", seed=0)
    message = str(info.value)
    assert (
        "\n" not in message
        and str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    )


def test_random_is_an_explicit_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _fake_imagenet_file(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    _, pretrained = build_initial("alexnet", "random", seed=0)
    assert pretrained.source == "random-init"  # even though ImageNet weights are in the cache


def test_missing_explicit_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_initial("alexnet", explicit=tmp_path / "nope.pth", seed=0)
    with pytest.raises(FileNotFoundError):
        build_initial("alexnet", tmp_path / "nope.pth", seed=0)


def test_a_state_dict_of_another_architecture_is_refused(tmp_path: Path) -> None:
    weights = _fake_imagenet_file(tmp_path / "alexnet.pth")
    with pytest.raises(ValueError, match="not a torchvision squeezenet1_0 state dict"):
        build_initial("squeezenet1_0", weights, seed=0)


def test_manifest_is_valid_json_on_disk(alexnet_registry: Path) -> None:
    json.loads((alexnet_registry / "cad" / "1" / "manifest.json").read_text())
