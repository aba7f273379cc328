"""The serving benchmark's load generator, video stream and ratios work against a real server
(tiny model, short runs: this keeps the benchmark from rotting; it asserts no timings)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.serving import (
    frame_requests,
    hot_swaps,
    load,
    png_frame,
    pool_scoring_ratio,
    render,
    video,
)
from cad.models.registry import ModelRegistry
from service.rpc.server import ServerThread
from support.helpers import make_settings


def test_load_generator_and_video_stream_against_a_real_server(registry_root: Path) -> None:
    with ServerThread(make_settings(registry_root)) as server:
        server.refresh_models()
        level = load(server.address, frame_requests(2), clients=2, seconds=0.5)
        assert level["requests"] >= 2 and level["errors"] == 0
        assert level["patches_per_s"] == pytest.approx(level["candidates_per_s"] * 24)
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        frames = [png_frame(None, i) for i in range(3)]
        stream = video(server.address, frames, fps=None, count=6)
        assert stream["frames"] == 6 and stream["fps"] > 0
        registry = server.server.metrics.registry
        assert (
            registry.get_sample_value(
                "cad_grpc_requests_total", {"method": "ClassifyStream", "code": "OK"}
            )
            == 1
        )


def test_hot_swaps_publish_serve_and_remove_old_versions(registry_root: Path) -> None:
    with ServerThread(make_settings(registry_root, poll_interval_s=0.05)) as server:
        server.refresh_models()
        registry = ModelRegistry(registry_root, "cad")
        first = registry.latest()
        swaps = hot_swaps(registry, server.address, os.getpid(), swaps=3)
        assert swaps["swaps"] == 3 and len(swaps["rss_mb"]) == 3 and swaps["rss_after_first_mb"] > 0
        assert registry.versions() == [
            first + 3
        ]  # the source version itself was removed on the way
        assert server.server.models.require().version == first + 3


def test_pool_scoring_ratio_and_report() -> None:
    ratio = pool_scoring_ratio(patches_per_s=1000.0, n=2000, m=24)
    assert ratio["model_s_at_ceiling"] == pytest.approx(48.0) and 0 < ratio["ratio"] < 1
    level = {
        "clients": 1,
        "requests": 3,
        "candidates_per_s": 1.0,
        "patches_per_s": 24.0,
        "errors": 0,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": 3.0,
    }
    text = render(
        {
            "machine": {"cpus": 2, "providers": ["CPUExecutionProvider"]},
            "server": [level],
            "ort_ceiling_patches_per_s": {64: 30.0},
            "torch_eager_patches_per_s": {64: 20.0},
            "ratios": {
                "server_vs_ort_ceiling": 0.8,
                "server_vs_torch_eager": 1.2,
                "ort_vs_torch_eager": 1.5,
            },
            "video_30fps": {"fps": 30.0, "p50_ms": 10.0, "p99_ms": 20.0},
            "video_max": {"fps": 50.0},
            "pool_scoring": ratio,
            "hot_swaps": {
                "rss_after_first_mb": 100.0,
                "rss_after_last_mb": 101.0,
                "swaps": 50,
                "ratio": 1.01,
            },
            "int8": {"skipped": "no data"},
        }
    )
    assert "0.800 (target >= 0.9)" in text and "ratio 1.010" in text


def test_extraction_benchmark_runs_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import extraction

    out = tmp_path / "extraction.json"
    assert (
        extraction.main(
            [
                "--seconds",
                "0.2",
                "--threads",
                "1",
                "2",
                "--frames",
                "1",
                "--no-model",
                "--feed",
                "1000",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert [(r["threads"], r["array"]) for r in result["rows"]] == [
        (1, "fresh per request"),
        (1, "reused per thread"),
        (2, "fresh per request"),
        (2, "reused per thread"),
    ]
    assert all(
        r["requests_per_s"] > 0 and r["patches_per_s"] > r["requests_per_s"] for r in result["rows"]
    )
    assert result["cores_to_feed"] > 0 and set(result["reuse_vs_fresh"]) == {"1", "2"}
    assert "cores of this kind to cut 1000 patches/s" in capsys.readouterr().out


def test_fp32_ceiling_counts_the_models_flops_against_a_matrix_product() -> None:
    from types import SimpleNamespace

    from bench.serving import fp32_ceiling, model_flops

    info = SimpleNamespace(manifest=SimpleNamespace(input_size=64))
    flops = model_flops(info)
    assert flops > 2 * (9216 * 4096 + 4096 * 4096)  # more than fc6 and fc7 alone
    f = fp32_ceiling(info, ort_rate=100.0, eager_rate=50.0, seconds=0.2)
    assert f["gflop_per_patch"] == pytest.approx(flops / 1e9)
    assert f["needed_for_2x_eager_gflops"] == pytest.approx(
        f["ort_gflops"]
    )  # 2 x 50 = 100 patches/s
    rates = [f["sgemm_gflops_numpy"], f["sgemm_gflops_torch"], f["sgemm_gflops_onnxruntime"]]
    assert min(rates) > 0 and f["sgemm_gflops_best"] == max(rates)
    assert f["ort_vs_sgemm"] == pytest.approx(f["needed_for_2x_eager_vs_sgemm"])
    assert f["needed_for_2x_eager_vs_ort"] == pytest.approx(1.0)


@pytest.mark.slow  # builds an AlexNet and exports it
def test_pe_benchmark_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import pe

    out = tmp_path / "pe.json"
    assert pe.main(["--size", "64", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pe_s_per_candidate"] > 0 and result["polyp_s_per_candidate"] > 0
    assert result["pe_vs_polyp_per_patch"] == pytest.approx(
        (result["pe_s_per_candidate"] / 54) / (result["polyp_s_per_candidate"] / 24)
    )
    assert "PE / polyp" in capsys.readouterr().out
