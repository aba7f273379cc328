"""Prometheus endpoint: a real scrape over HTTP, checked by promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import grpc
import pytest

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes


def scrape(server: ServerThread) -> str:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


def _traffic(stub: cad_pb2_grpc.CadInferenceStub) -> None:
    ok = cad_pb2.ClassifyRequest(
        dicom=dicom_bytes("CT_small.dcm"),
        candidates=[
            cad_pb2.Candidate(client_id="a", box=cad_pb2.Box(x=1, y=1, width=20, height=20))
        ],
    )
    stub.Classify(ok, timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Classify(cad_pb2.ClassifyRequest(dicom=b"nope", candidates=ok.candidates), timeout=30)


def test_scrape_has_the_service_metrics(
    server: ServerThread, stub: cad_pb2_grpc.CadInferenceStub
) -> None:
    _traffic(stub)
    text = scrape(server)
    for needle in (
        'cad_grpc_requests_total{code="OK",method="Classify"} 1.0',
        'cad_grpc_requests_total{code="INVALID_ARGUMENT",method="Classify"} 1.0',
        'cad_grpc_request_duration_seconds_bucket{le="+Inf",method="Classify"} 2.0',
        "cad_model_inference_duration_seconds_count",
        "cad_model_batch_patches_bucket",
        "cad_candidates_total 1.0",
        "cad_patches_total 24.0",
        'cad_model_info{model="cad",precision="fp32",provider="CPUExecutionProvider",version="1"} 1.0',
        "cad_model_load_failures_total 0.0",
        "cad_model_loaded 1.0",
    ):
        assert needle in text, needle


def test_promtool_check_metrics_passes_on_a_real_scrape(
    server: ServerThread, stub: cad_pb2_grpc.CadInferenceStub
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs the Debian package prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    _traffic(stub)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape(server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )
