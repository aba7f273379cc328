"""Zero-downtime hot swap, refused broken versions, and pinning (rollback) over real gRPC."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from cad.labels.store import open_store
from cad.models.registry import MODEL_FILE, ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import block_model_runs, make_settings, publish_tiny

RAW = cad_pb2.RawImage(
    height=24, width=24, channels=1, pixel_type=cad_pb2.RawImage.UINT8, pixels=bytes(range(24)) * 24
)
REQUEST = cad_pb2.ClassifyRequest(
    raw=RAW,
    recipe="polyp:4",
    candidates=[cad_pb2.Candidate(client_id="c", box=cad_pb2.Box(x=2, y=2, width=12, height=12))],
)


def wait_for_version(
    admin: cad_pb2_grpc.ModelAdminStub, version: int, deadline_s: float = 60
) -> None:
    end = time.monotonic() + deadline_s
    while int(admin.GetModel(cad_pb2.GetModelRequest(), timeout=10).version) != version:
        assert time.monotonic() < end, f"server never swapped to version {version}"


def test_ten_versions_under_eight_concurrent_clients(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    publish_tiny(root, tmp_path / "b")
    with (
        ServerThread(make_settings(root, poll_interval_s=0.02)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        server.refresh_models()
        admin = cad_pb2_grpc.ModelAdminStub(ch)
        done = threading.Event()
        seen: list[list[int]] = [[] for _ in range(8)]
        failures: list[str] = []

        def client(i: int) -> None:
            stub = cad_pb2_grpc.CadInferenceStub(ch)
            while not (done.is_set() and seen[i] and seen[i][-1] == 11):
                try:
                    seen[i].append(int(stub.Classify(REQUEST, timeout=30).model_version))
                except grpc.RpcError as exc:
                    failures.append(f"client {i}: {exc.code().name} {exc.details()}")
                    return

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, i) for i in range(8)]
            rng = np.random.default_rng(0)
            for version in range(2, 12):  # 10 versions, one after another, noticed by the poller
                publish_tiny(
                    root, tmp_path / "b", weights=rng.normal(size=(3, 2)).astype(np.float32)
                )
                wait_for_version(admin, version)
            done.set()
            for f in futures:
                f.result(timeout=120)
        assert failures == []
        for versions in seen:
            assert versions == sorted(versions), "a client saw versions go backwards"
            assert versions[-1] == 11
        assert sum(len(v) for v in seen) >= 80
        assert server.server.metrics.registry.get_sample_value("cad_model_load_failures_total") == 0


def test_in_flight_request_finishes_on_the_old_version(registry_root: Path, tmp_path: Path) -> None:
    # Two batcher runners: the old version's run is held forever here, and must not hold the new one.
    with (
        ServerThread(make_settings(registry_root, batch_runners=2)) as server,
        grpc.insecure_channel(server.address) as channel,
        ThreadPoolExecutor(1) as pool,
    ):
        server.refresh_models()
        old = server.server.models.current
        assert old is not None
        entered, release = block_model_runs(old)
        stub = cad_pb2_grpc.CadInferenceStub(channel)
        pending = pool.submit(stub.Classify, REQUEST, timeout=60)
        assert entered.wait(30)
        publish_tiny(server.server.settings.registry_root, tmp_path / "b")
        assert server.refresh_models()
        assert stub.Classify(REQUEST, timeout=30).model_version == "2"  # new requests: new version
        release.set()
        assert pending.result(timeout=60).model_version == "1"  # the in-flight one: old version


def test_broken_version_is_refused_while_the_old_one_keeps_serving(
    server: ServerThread, channel: grpc.Channel, tmp_path: Path
) -> None:
    root = server.server.settings.registry_root
    info = publish_tiny(root, tmp_path / "b")
    model = info.path / MODEL_FILE
    shutil.copyfile(model, tmp_path / "good.onnx")
    model.write_bytes(model.read_bytes()[:100])  # truncated after publish: checksum mismatch
    assert not server.refresh_models()
    assert cad_pb2_grpc.CadInferenceStub(channel).Classify(REQUEST, timeout=30).model_version == "1"
    listing = cad_pb2_grpc.ModelAdminStub(channel).ListVersions(
        cad_pb2.ListVersionsRequest(), timeout=10
    )
    refused = {v.version: v.refused for v in listing.versions}
    assert "checksum mismatch" in refused["2"] and refused["1"] == ""
    assert server.server.metrics.registry.get_sample_value("cad_model_load_failures_total") == 1
    assert not server.refresh_models()  # unchanged: not tried again on every poll
    assert server.server.metrics.registry.get_sample_value("cad_model_load_failures_total") == 1
    # the operator puts the right file back (the same path, as a restore from backup does):
    # the replica tries the version again without a restart
    shutil.copyfile(tmp_path / "good.onnx", model)
    assert server.refresh_models()
    assert cad_pb2_grpc.CadInferenceStub(channel).Classify(REQUEST, timeout=30).model_version == "2"


def test_pin_rollback_and_unpin(
    server: ServerThread, channel: grpc.Channel, tmp_path: Path
) -> None:
    root = server.server.settings.registry_root
    publish_tiny(root, tmp_path / "b")
    publish_tiny(root, tmp_path / "b")
    assert server.refresh_models()
    admin = cad_pb2_grpc.ModelAdminStub(channel)
    stub = cad_pb2_grpc.CadInferenceStub(channel)
    assert stub.Classify(REQUEST, timeout=30).model_version == "3"
    pinned = admin.PinVersion(
        cad_pb2.PinRequest(version="1", actor="ops", reason="FP rate rose"), timeout=30
    )
    assert pinned.serving_version == "1"
    # the pin is in the label store, where every replica and the CLI read it; nothing is
    # written into the registry, which servers mount read-only
    store = open_store(server.server.settings.store_url)
    assert ModelRegistry(root, "cad").with_pins_in(store).pinned() == 1
    store.close()
    assert not (root / "cad" / "pinned.json").exists()
    assert stub.Classify(REQUEST, timeout=30).model_version == "1"
    publish_tiny(root, tmp_path / "b")  # a new version does not override the pin
    assert not server.refresh_models()
    listing = admin.ListVersions(cad_pb2.ListVersionsRequest(), timeout=10)
    assert (
        listing.pinned_version == "1"
        and listing.serving_version == "1"
        and len(listing.versions) == 4
    )
    manifest = admin.GetVersion(cad_pb2.GetVersionRequest(version="3"), timeout=10)
    assert manifest.version == "3" and manifest.execution_provider == ""
    assert admin.Unpin(cad_pb2.UnpinRequest(actor="ops"), timeout=30).serving_version == "4"
    for bad, code in (("99", grpc.StatusCode.NOT_FOUND), ("x", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as err:
            admin.PinVersion(cad_pb2.PinRequest(version=bad), timeout=10)
        assert err.value.code() == code


def test_pinning_a_broken_version_is_refused(
    server: ServerThread, channel: grpc.Channel, tmp_path: Path
) -> None:
    root = server.server.settings.registry_root
    publish_tiny(root, tmp_path / "b", nan_output=True)
    assert not server.refresh_models()
    with pytest.raises(grpc.RpcError) as err:
        cad_pb2_grpc.ModelAdminStub(channel).PinVersion(cad_pb2.PinRequest(version="2"), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ModelRegistry(root, "cad").pinned() is None
