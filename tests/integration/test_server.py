"""The real gRPC server in-process on free ports: classification, streaming, admin, health."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from cad.aift import Box, candidate_stats, parse_recipe
from cad.aift.patches import extract_many
from cad.imaging import Window, decode_dicom
from cad.models.registry import ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import block_model_runs, dicom_bytes, make_settings, publish_tiny


def cand(cid: str, x: float, y: float, w: float, h: float) -> cad_pb2.Candidate:
    return cad_pb2.Candidate(client_id=cid, box=cad_pb2.Box(x=x, y=y, width=w, height=h))


def expected_stats(registry_root: Path, pixels: np.ndarray, boxes: list[Box], recipe: str):
    """What the server should answer, computed from the shared domain code and a raw session."""
    info = ModelRegistry(registry_root, "cad").get(1)
    session = ort.InferenceSession(str(info.model_path), providers=["CPUExecutionProvider"])
    r = parse_recipe(recipe)
    patches = extract_many(pixels, boxes, r, 32)
    probs = session.run(None, {"patches": patches})[0]
    return candidate_stats(probs.reshape(len(boxes), r.count, -1))


def test_classify_ct_dicom_matches_the_domain_computation(
    stub: cad_pb2_grpc.CadInferenceStub, registry_root: Path
) -> None:
    data = dicom_bytes("CT_small.dcm")
    request = cad_pb2.ClassifyRequest(
        dicom=data,
        window=cad_pb2.Window(center=40, width=400),
        candidates=[
            cand("a", 10, 10, 30, 30),
            cand("b", 60, 50, 40, 20),
            cand("edge", 110, 110, 30, 30),
        ],
    )
    response = stub.Classify(request, timeout=30)
    assert response.model_version == "1" and response.recipe == "polyp"
    assert (response.image_width, response.image_height) == (128, 128)
    assert [r.client_id for r in response.results] == ["a", "b", "edge"]
    ids = [r.candidate_id for r in response.results]
    assert len(set(ids)) == 3 and all(i.startswith(response.request_id) for i in ids)
    pixels = decode_dicom(data, 0, Window(40, 400)).pixels
    boxes = [Box(10, 10, 30, 30), Box(60, 50, 40, 20), Box(110, 110, 30, 30)]
    stats = expected_stats(registry_root, pixels, boxes, "polyp")
    for i, r in enumerate(response.results):
        assert r.patches == 24
        assert r.probability == pytest.approx(stats.probability[i], abs=1e-5)
        assert r.entropy == pytest.approx(stats.entropy[i], rel=1e-4)
        assert r.diversity == pytest.approx(stats.diversity[i], rel=1e-3, abs=1e-6)
        assert r.score == pytest.approx(stats.score[i], rel=1e-4)
    assert len({round(r.probability, 6) for r in response.results}) == 3


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("MR_small.dcm", 0),
        ("RG3_J2KR.dcm", 0),  # CR, MONOCHROME1, JPEG 2000
        ("examples_ybr_color.dcm", 17),  # multi-frame ultrasound, JPEG baseline
        ("emri_small_jpeg_ls_lossless.dcm", 4),  # multi-frame MR, JPEG-LS
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", 0),  # JPEG lossless
    ],
)
def test_classify_real_dicom_modalities(
    stub: cad_pb2_grpc.CadInferenceStub, name: str, frame: int
) -> None:
    response = stub.Classify(
        cad_pb2.ClassifyRequest(
            dicom=dicom_bytes(name), frame_index=frame, candidates=[cand("c", 5, 5, 40, 40)]
        ),
        timeout=30,
    )
    assert response.frame_index == frame
    assert 0.0 < response.results[0].probability < 1.0


def test_png_jpeg_and_raw_frames(stub: cad_pb2_grpc.CadInferenceStub) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    Image.fromarray(frame).save(jpg, format="JPEG")
    boxes = [cand("x", 8, 8, 20, 20)]
    raw = cad_pb2.RawImage(
        height=48, width=64, channels=3, pixel_type=cad_pb2.RawImage.UINT8, pixels=frame.tobytes()
    )
    by_png = stub.Classify(
        cad_pb2.ClassifyRequest(encoded=png.getvalue(), candidates=boxes), timeout=30
    )
    by_raw = stub.Classify(cad_pb2.ClassifyRequest(raw=raw, candidates=boxes), timeout=30)
    by_jpg = stub.Classify(
        cad_pb2.ClassifyRequest(encoded=jpg.getvalue(), candidates=boxes), timeout=30
    )
    assert by_png.results[0].probability == pytest.approx(by_raw.results[0].probability, abs=1e-6)
    assert by_jpg.results[0].probability == pytest.approx(by_raw.results[0].probability, abs=0.02)
    single = stub.Classify(
        cad_pb2.ClassifyRequest(raw=raw, candidates=boxes, recipe="single"), timeout=30
    )
    assert single.results[0].patches == 1 and single.recipe == "single"


def test_stream_returns_results_in_frame_order(stub: cad_pb2_grpc.CadInferenceStub) -> None:
    data = dicom_bytes("examples_ybr_color.dcm")

    def frames():
        for i in range(30):
            yield cad_pb2.ClassifyRequest(
                dicom=data,
                frame_index=i,
                source_id="video-1",
                candidates=[cand(f"f{i}", 100, 80, 60, 50)],
                recipe="frame:1",
            )

    responses = list(stub.ClassifyStream(frames(), timeout=60))
    assert [r.frame_index for r in responses] == list(range(30))
    assert [r.results[0].client_id for r in responses] == [f"f{i}" for i in range(30)]
    assert all(r.results[0].patches == 1 for r in responses)


def test_stream_bounds_frames_in_flight_for_a_slow_reader(registry_root: Path) -> None:
    settings = make_settings(registry_root, stream_max_inflight=2)
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as channel:
        server.refresh_models()
        stub = cad_pb2_grpc.CadInferenceStub(channel)
        gauge = server.server.metrics.stream_frames_in_flight
        frame = np.zeros((32, 32, 3), dtype=np.uint8).tobytes()
        sent = 0

        def frames():
            nonlocal sent
            for i in range(40):
                sent += 1
                yield cad_pb2.ClassifyRequest(
                    raw=cad_pb2.RawImage(
                        height=32,
                        width=32,
                        channels=3,
                        pixel_type=cad_pb2.RawImage.UINT8,
                        pixels=frame,
                    ),
                    frame_index=i,
                    candidates=[cand("c", 0, 0, 32, 32)],
                    recipe="single",
                )

        seen = []
        for response in stub.ClassifyStream(frames(), timeout=60):
            seen.append(response.frame_index)
            assert gauge._value.get() <= 2  # never more than the configured frames in flight
        assert seen == list(range(40)) and sent == 40
        assert gauge._value.get() == 0


def test_get_model_reports_version_manifest_and_provider(
    channel: grpc.Channel, registry_root: Path
) -> None:
    info = cad_pb2_grpc.ModelAdminStub(channel).GetModel(cad_pb2.GetModelRequest(), timeout=10)
    manifest = json.loads(info.manifest_json)
    assert info.version == "1" and info.model_name == "cad"
    assert info.execution_provider == "CPUExecutionProvider"  # no CUDA device on test machines
    assert info.input_size == 32 and info.default_recipe == "polyp"
    assert manifest["sha256"] == ModelRegistry(registry_root, "cad").get(1).manifest.sha256


def test_health_is_not_serving_until_a_model_is_published(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    with (
        ServerThread(make_settings(root)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        check = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status  # noqa: E731
        assert check() == health_pb2.HealthCheckResponse.NOT_SERVING
        server.refresh_models()
        assert "cad model init" in server.server.models.status
        with pytest.raises(grpc.RpcError) as err:
            cad_pb2_grpc.CadInferenceStub(channel).Classify(
                cad_pb2.ClassifyRequest(encoded=b"x", candidates=[cand("c", 0, 0, 1, 1)]),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cad model init" in err.value.details()
        publish_tiny(root, tmp_path / "build")
        assert server.refresh_models()
        assert check() == health_pb2.HealthCheckResponse.SERVING
        status = health.Check(
            health_pb2.HealthCheckRequest(service="cad.v1.CadInference"), timeout=10
        ).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"cad.v1.CadInference", "cad.v1.ModelAdmin", "grpc.health.v1.Health"} <= names


def test_event_loop_keeps_serving_while_the_model_runs(
    server: ServerThread, channel: grpc.Channel
) -> None:
    model = server.server.models.current
    assert model is not None
    entered, release = block_model_runs(model)
    stub = cad_pb2_grpc.CadInferenceStub(channel)
    request = cad_pb2.ClassifyRequest(
        raw=cad_pb2.RawImage(
            height=8, width=8, channels=1, pixel_type=cad_pb2.RawImage.UINT8, pixels=bytes(64)
        ),
        candidates=[cand("c", 0, 0, 8, 8)],
    )
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stub.Classify, request, timeout=60)
        assert entered.wait(30)
        # The model is blocked in a worker thread; the event loop must still answer.
        info = cad_pb2_grpc.ModelAdminStub(channel).GetModel(cad_pb2.GetModelRequest(), timeout=10)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert info.version == "1" and health.status == health_pb2.HealthCheckResponse.SERVING
        assert not pending.done()
        release.set()
        assert pending.result(timeout=60).results[0].client_id == "c"


def test_patches_run_in_batches_of_at_most_batch_size(registry_root: Path) -> None:
    with (
        ServerThread(make_settings(registry_root, batch_size=16, batch_max_size=16)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        server.refresh_models()
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        raw = cad_pb2.RawImage(
            height=64,
            width=64,
            channels=3,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=frame.tobytes(),
        )
        candidates = [cand(str(i), i * 3, i * 2, 20, 20) for i in range(10)]
        cad_pb2_grpc.CadInferenceStub(ch).Classify(
            cad_pb2.ClassifyRequest(raw=raw, candidates=candidates), timeout=30
        )
        registry = server.server.metrics.registry
        total = registry.get_sample_value("cad_model_batch_patches_sum")
        runs = registry.get_sample_value("cad_model_batch_patches_count")
        at_most_16 = registry.get_sample_value("cad_model_batch_patches_bucket", {"le": "16.0"})
        assert total == 240 and runs == at_most_16 and runs >= 15
        assert registry.get_sample_value("cad_candidates_total") == 10
        assert registry.get_sample_value("cad_patches_total") == 240


def test_healthcheck_command_exit_codes(server: ServerThread, tmp_path: Path) -> None:
    from service.rpc.healthcheck import main as healthcheck

    assert healthcheck(["--address", server.address]) == 0
    with ServerThread(make_settings(tmp_path / "empty")) as idle:
        assert healthcheck(["--address", idle.address]) == 1


def test_the_server_process_freezes_its_start_up_objects_out_of_full_collections(
    tmp_path: Path,
) -> None:
    import os
    import re
    import subprocess
    import sys
    import threading

    publish_tiny(tmp_path / "registry", tmp_path / "build")
    env = {
        **os.environ,
        "CAD_REGISTRY_ROOT": str(tmp_path / "registry"),
        "CAD_HOST": "127.0.0.1",
        "CAD_STORE_URL": f"sqlite:///{tmp_path / 'labels.sqlite3'}",
        "CAD_ARCHIVE_ROOT": str(tmp_path / "a"),
        "CAD_POLL_INTERVAL_S": "3600",
    }
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.rpc.server", "--port", "0", "--metrics-port", "-1"],
        cwd=root,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    guard = threading.Timer(120, proc.kill)  # a server that never logs it ends the read below
    guard.start()
    frozen = None
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if m := re.search(r"froze (\d+) start-up objects", line):
                frozen = int(m.group(1))
                break
    finally:
        guard.cancel()
        proc.kill()
        proc.wait(timeout=30)
    assert frozen is not None and frozen > 10_000  # imports alone are tens of thousands of objects
