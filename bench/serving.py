"""Serving benchmark: the real server under load against raw ONNX Runtime and PyTorch eager.

    .venv/bin/python -m bench.serving [--quick] [--providers auto|cpu|cuda] [--out FILE]

One run measures, on the same AlexNet model (224-px patches) and batch sizes:

1. the server (a real ``cad-server`` child process, loopback gRPC, SQLite label store and image
   archive on) under N concurrent clients sending real DICOM slices and colonoscopy PNG frames
   with 3 candidates each, ``polyp`` recipe (24 patches per candidate): candidates/s, patches/s,
   p50/p95/p99 latency per concurrency level;
2. the ceiling: the raw ONNX Runtime session on ready-made batches;
3. PyTorch eager on the same weights (what a team without this product would deploy);
4. video: ``ClassifyStream`` at 30 frames/s, one frame-level patch per frame;
5. AIFT pool scoring of 100,000 candidates x 24 patches against the model time for them;
6. resident memory of the server after the 1st and the 50th hot swap;
7. a reduced-precision variant (int8 on a CPU, fp16 on CUDA): throughput against fp32, AUC
   change on CVC-ClinicDB, and the server serving it where the drop is allowed;
8. on a CPU, the fp32 rate the machine can reach at all (a large matrix product) against the
   model's FLOPs: how far any fp32 server could get past PyTorch eager here;
9. where patches are cut: the server with ``CAD_PATCH_SAMPLING=host`` (numpy on the CPU) and
   ``graph`` (the sampling graph on the model's device) at the highest concurrency, and the
   bytes each request hands the model on either path.

``--no-extras`` skips 4-8 (video, pool scoring, swaps, the variant, the CPU's fp32 rate).

Prints a table and the ratios, and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from cad.models.model import load_model
from cad.models.providers import SessionOptions, select_providers
from cad.models.registry import MODEL_FILE, WEIGHTS_FILE, ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from support.launch import server_process

ROOT = Path(__file__).resolve().parent.parent
CVC = ROOT.parent / "shared" / "data" / "cvc-clinicdb"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 95, 99)} if len(a) else {}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- inputs


def dicom_requests() -> list[cad_pb2.ClassifyRequest]:
    """Real CT/MR slices (pydicom-data) with 3 candidates each."""
    from cadcli.demo import sample_dicom

    out = []
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
        data = sample_dicom(name).read_bytes()
        out.append(
            cad_pb2.ClassifyRequest(
                dicom=data,
                recipe="polyp",
                candidates=[
                    cad_pb2.Candidate(
                        client_id=str(i),
                        box=cad_pb2.Box(x=4 + 18 * i, y=4 + 12 * i, width=16, height=16),
                    )
                    for i in range(3)
                ],
            )
        )
    return out


def frame_paths(n: int) -> list[Path]:
    if (CVC / "images").is_dir():
        return sorted((CVC / "images").glob("*.png"))[:n]
    return []


def png_frame(path: Path | None, seed: int) -> bytes:
    if path is not None:
        return path.read_bytes()
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (288, 384, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def frame_requests(n: int) -> list[cad_pb2.ClassifyRequest]:
    """Colonoscopy frames (CVC-ClinicDB when present beside the repo, else noise) with 3 candidates."""
    paths = frame_paths(n) or [None] * n
    return [
        cad_pb2.ClassifyRequest(
            encoded=png_frame(p, i),
            recipe="polyp",
            source_id="bench-video",
            candidates=[
                cad_pb2.Candidate(
                    client_id=str(k),
                    box=cad_pb2.Box(x=40 + 90 * k, y=60 + 40 * k, width=70, height=60),
                )
                for k in range(3)
            ],
        )
        for i, p in enumerate(paths)
    ]


# --------------------------------------------------------------------------- the server under test

PREFERRED_BATCH, MAX_BATCH = 32, 64


def build_model(work: Path) -> ModelRegistry:
    """A fresh registry under ``work`` with version 1: AlexNet at 224-px patches, polyp recipe."""
    from trainer.bootstrap import init_model
    from trainer.settings import TrainerSettings

    log("building the model (AlexNet, 224-px patches) ...")
    init_model(TrainerSettings(registry_root=work / "registry", input_size=224, recipe="polyp"))
    return ModelRegistry(work / "registry", "cad")


def server_env(work: Path, providers: str, workers: int = 4, runners: int = 1) -> dict[str, str]:
    """``CAD_*`` settings of the benchmarked server: SQLite store and archive on, under ``work``."""
    return {
        "CAD_REGISTRY_ROOT": str(work / "registry"),
        "CAD_HOST": "127.0.0.1",
        "CAD_STORE_URL": f"sqlite:///{work / 'labels.sqlite3'}",
        "CAD_ARCHIVE_ROOT": str(work / "archive"),
        "CAD_POLL_INTERVAL_S": "0.1",
        "CAD_PROVIDERS": providers,
        "CAD_BATCH_SIZE": str(PREFERRED_BATCH),
        "CAD_BATCH_MAX_SIZE": str(MAX_BATCH),
        "CAD_WORKERS": str(workers),
        "CAD_BATCH_RUNNERS": str(runners),
    }


# --------------------------------------------------------------------------- measurements


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause this process's garbage collector while it times the server, as ``timeit`` does.

    The load generator's heap (torch, ONNX Runtime sessions, results) made its full collections
    take up to 200 ms on 2 cores; one of them during the video phase stalled the client's
    receive loop and was counted as server latency for several frames in a row.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def timed_loop(fn: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Items per second of ``fn`` (returns items per call), after warm-up calls."""
    for _ in range(warmup):
        fn()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += fn()
    return done / (time.perf_counter() - t0)


def ort_ceiling(version_info: Any, options: SessionOptions, batch: int, seconds: float) -> float:
    model = load_model(version_info, options)
    x = (
        np.random.default_rng(0)
        .uniform(0, 255, (batch, 3, model.input_size, model.input_size))
        .astype(np.float32)
    )
    return timed_loop(lambda: len(model.run(x)), seconds)


def torch_eager(info: Any, batch: int, seconds: float, cuda: bool) -> float:
    import torch

    from trainer.network import CadNet

    net = CadNet(2, info.manifest.input_size)
    net.load_state_dict(torch.load(info.path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    net.eval()
    device = "cuda" if cuda and torch.cuda.is_available() else "cpu"
    net.to(device)
    size = info.manifest.input_size
    x = torch.from_numpy(
        np.random.default_rng(0).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)
    )

    def step() -> int:
        with torch.inference_mode():
            out = torch.softmax(net(x.to(device)), dim=1).cpu()
        return len(out)

    return timed_loop(step, seconds)


def model_flops(info: Any) -> float:
    """Floating-point operations for one patch through the model (a multiply-add counts 2), by
    PyTorch's own FLOP counter on the network the ONNX graph was exported from."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.network import CadNet

    size = info.manifest.input_size
    net = CadNet(2, size).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def fp32_ceiling(info: Any, ort_rate: float, eager_rate: float, seconds: float) -> dict[str, float]:
    """What fp32 reaches on this CPU: the model's FLOPs per patch against the best rate of a large
    fp32 matrix product, all cores, in numpy's BLAS, PyTorch and ONNX Runtime's own MLAS (the
    kernel every convolution library is built to approach)."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    n = 3072
    rng = np.random.default_rng(0)
    a, b = (
        rng.standard_normal((n, n), dtype=np.float32),
        rng.standard_normal((n, n), dtype=np.float32),
    )
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    square = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm", square[:2], square[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    per_call = 2 * n**3 / 1e9
    gemm = {
        "numpy": timed_loop(lambda: len(a @ b), seconds / 3, warmup=1) / n * per_call,
        "torch": timed_loop(lambda: len(ta @ tb), seconds / 3, warmup=1) / n * per_call,
        "onnxruntime": timed_loop(
            lambda: len(session.run(None, {"a": a, "b": b})[0]), seconds / 3, warmup=1
        )
        / n
        * per_call,
    }
    flops = model_flops(info) / 1e9
    best = max(gemm.values())
    return {
        "gflop_per_patch": flops,
        **{f"sgemm_gflops_{k}": v for k, v in gemm.items()},
        "sgemm_gflops_best": best,
        "ort_gflops": ort_rate * flops,
        "eager_gflops": eager_rate * flops,
        "ort_vs_sgemm": ort_rate * flops / best,
        "needed_for_2x_eager_gflops": 2 * eager_rate * flops,
        "needed_for_2x_eager_vs_sgemm": 2 * eager_rate * flops / best,
        "needed_for_2x_eager_vs_ort": 2 * eager_rate / ort_rate,
    }


def load(
    address: str, requests: list[cad_pb2.ClassifyRequest], clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` threads, each with its own channel, send requests back to back for ``seconds``."""
    latencies: list[float] = []
    counts = {"candidates": 0, "patches": 0, "errors": 0}
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        with grpc.insecure_channel(address) as ch:
            stub = cad_pb2_grpc.CadInferenceStub(ch)
            stub.Classify(requests[k % len(requests)], timeout=120)  # warm the channel
            start.wait()
            i = k
            while time.perf_counter() < stop_at[0]:
                req = requests[i % len(requests)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = stub.Classify(req, timeout=120)
                except grpc.RpcError:
                    with lock:
                        counts["errors"] += 1
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    counts["candidates"] += len(r.results)
                    counts["patches"] += sum(x.patches for x in r.results)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    with collector_paused():
        for t in threads:
            t.start()
        stop_at[0] = time.perf_counter() + 1e9
        start.wait()
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": counts["errors"],
        "candidates_per_s": counts["candidates"] / wall,
        "patches_per_s": counts["patches"] / wall,
        **percentiles(latencies),
    }


def model_input_bytes(requests: list[cad_pb2.ClassifyRequest], size: int) -> dict[str, float]:
    """Mean bytes per request handed to the model: cut float32 patches (host path) against the
    decoded 8-bit image once plus a 2x3 float32 map and an int64 index per patch (graph path)."""
    from cad.aift.patches import parse_recipe
    from cad.encoded import decode_encoded
    from cad.imaging import decode_dicom

    host, graph = [], []
    for req in requests:
        kind = req.WhichOneof("image")
        decode = decode_dicom if kind == "dicom" else decode_encoded
        pixels = decode(getattr(req, kind), req.frame_index).pixels
        patches = len(req.candidates) * parse_recipe(req.recipe).count
        host.append(patches * 3 * size * size * 4)
        graph.append(pixels.nbytes + patches * (6 * 4 + 8))
    return {
        "host_mb": float(np.mean(host)) / 1e6,
        "graph_mb": float(np.mean(graph)) / 1e6,
        "ratio": float(np.mean(graph) / np.mean(host)),
    }


def sampling_comparison(
    env: dict[str, str], requests: list[cad_pb2.ClassifyRequest], clients: int, seconds: float
) -> dict[str, Any]:
    """The server on either patch path, one fresh process each, at ``clients`` clients."""
    out: dict[str, Any] = {}
    for sampling in ("host", "graph"):
        log(f"server, CAD_PATCH_SAMPLING={sampling}, {clients} concurrent clients ...")
        with server_process({**env, "CAD_PATCH_SAMPLING": sampling}) as (_proc, address):
            out[sampling] = load(address, requests, clients, seconds)
        log(f"  {out[sampling]}")
    return out


def video(address: str, frames: list[bytes], fps: float | None, count: int) -> dict[str, Any]:
    """One ClassifyStream; frames paced at ``fps`` (None: as fast as the server answers)."""
    sent: dict[int, float] = {}
    latencies: list[float] = []

    def gen() -> Iterator[cad_pb2.ClassifyRequest]:
        t0 = time.perf_counter()
        for i in range(count):
            if fps is not None:
                delay = t0 + i / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # the endoscope's frame clock
            data = frames[i % len(frames)]
            sent[i] = time.perf_counter()
            yield cad_pb2.ClassifyRequest(
                encoded=data,
                recipe="frame:1",
                source_id="bench-stream",
                candidates=[
                    cad_pb2.Candidate(
                        client_id="frame", box=cad_pb2.Box(x=0, y=0, width=384, height=288)
                    )
                ],
            )

    with grpc.insecure_channel(address) as ch, collector_paused():
        stub = cad_pb2_grpc.CadInferenceStub(ch)
        t0 = time.perf_counter()
        for i, _ in enumerate(stub.ClassifyStream(gen(), timeout=600)):
            latencies.append(time.perf_counter() - sent[i])
        wall = time.perf_counter() - t0
    return {
        "target_fps": fps,
        "frames": len(latencies),
        "fps": len(latencies) / wall,
        **percentiles(latencies),
    }


def pool_scoring_ratio(patches_per_s: float, n: int = 100_000, m: int = 24) -> dict[str, float]:
    from cad.aift import candidate_stats

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, (n, m)).astype(np.float32)
    probs = np.stack([1 - p, p], axis=-1)
    t0 = time.perf_counter()
    for start in range(0, n, 10_000):  # as the trainer does it: in chunks
        candidate_stats(probs[start : start + 10_000])
    scoring = time.perf_counter() - t0
    model = n * m / patches_per_s
    return {
        "candidates": n,
        "patches_per_candidate": m,
        "scoring_s": scoring,
        "model_s_at_ceiling": model,
        "ratio": scoring / model,
    }


def hot_swaps(registry: ModelRegistry, address: str, pid: int, swaps: int) -> dict[str, Any]:
    """Publish ``swaps`` versions one after another; RSS after the first and the last swap."""
    info = registry.get(registry.latest())  # type: ignore[arg-type]
    source = registry.root.parent / "swap-source.onnx"  # old versions are removed below
    shutil.copyfile(info.model_path, source)
    files = {MODEL_FILE: source}
    manifest = {
        k: v
        for k, v in info.manifest.to_json().items()
        if k not in ("version", "sha256", "files", "created")
    }
    rss = []
    with grpc.insecure_channel(address) as ch:
        admin = cad_pb2_grpc.ModelAdminStub(ch)
        infer = cad_pb2_grpc.CadInferenceStub(ch)
        req = frame_requests(1)[0]
        for k in range(swaps):
            new = registry.publish(files, manifest).version
            while admin.GetModel(cad_pb2.GetModelRequest(), timeout=30).version != str(new):
                time.sleep(0.05)  # the server polls the registry every 0.1 s
            infer.Classify(req, timeout=60)
            for old in registry.versions():
                if old < new:
                    registry.remove(old)
            rss.append(rss_mb(pid))
            if k in (0, swaps - 1) or (k + 1) % 10 == 0:
                log(f"  swap {k + 1}/{swaps}: server RSS {rss[-1]:.0f} MB")
    return {
        "swaps": swaps,
        "rss_after_first_mb": rss[0],
        "rss_after_last_mb": rss[-1],
        "ratio": rss[-1] / rss[0],
        "rss_mb": rss,
    }


def reduced_precision(
    registry: ModelRegistry,
    version: int,
    options: SessionOptions,
    batch: int,
    seconds: float,
    quick: bool,
    precision: str = "int8",
) -> dict[str, Any]:
    """Make and publish the ``precision`` variant, compare throughput and CVC-ClinicDB AUC."""
    from cad.aift import parse_recipe
    from cad.aift.patches import extract_many
    from cad.encoded import decode_encoded
    from support.cvc import generate, load_frames
    from trainer.quantize import quantize_version

    if not CVC.is_dir():
        return {"skipped": f"{CVC} not found"}
    split = json.loads((ROOT / "experiments" / "cvc" / "split.json").read_text())
    frames = load_frames(CVC)
    recipe = parse_recipe("polyp:4")
    size = registry.get(version).manifest.input_size

    def patches_of(sequences: list[int], seed: int, limit: int) -> tuple[np.ndarray, list[int]]:
        cands = generate([f for f in frames if f.sequence in set(sequences)], 1, seed)
        cands = [cands[i] for i in np.random.default_rng(seed).permutation(len(cands))[:limit]]
        out = [
            extract_many(decode_encoded(c.frame.path.read_bytes()).pixels, [c.box], recipe, size)
            for c in cands
        ]
        return np.concatenate(out), [c.label for c in cands]

    calib, _ = patches_of(split["pool"], 1, 64 if quick else 128)
    test, labels = patches_of(split["test"], 2, 120 if quick else 400)
    report = quantize_version(registry, version, calib, test, labels, recipe.count, precision)
    variant = registry.variant(version, precision)
    fp32_rate = ort_ceiling(registry.get(version), options, batch, seconds)  # type: ignore[union-attr]
    rate = ort_ceiling(variant, options, batch, seconds)  # type: ignore[union-attr]
    return {
        "precision": precision,
        "auc_fp32": report.auc_fp32,
        f"auc_{precision}": report.auc_variant,
        "auc_drop": report.auc_drop,
        "eval_candidates": report.eval_candidates,
        "calibration_patches": report.calibration_patches,
        "fp32_patches_per_s": fp32_rate,
        f"{precision}_patches_per_s": rate,
        "speedup": rate / fp32_rate,
        "served": report.auc_drop <= 0.005,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter runs (smoke test of the benchmark)"
    )
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="only the server, the baselines and the patch paths (no video, pool scoring, swaps, "
        "the reduced-precision variant, CPU fp32 rate)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server worker threads (default 4 on CPU, 12 with CUDA: patch extraction is the "
        "CPU work that feeds a GPU)",
    )
    parser.add_argument(
        "--runners",
        type=int,
        default=None,
        help="batcher model runners (default 1 on CPU, 2 with CUDA: copies overlap compute)",
    )
    args = parser.parse_args(argv)
    seconds = 4.0 if args.quick else 15.0
    providers = select_providers(args.providers)
    cuda = providers[0] == "CUDAExecutionProvider"
    out = args.out or ROOT / "bench" / "results" / f"serving-{'cuda' if cuda else 'cpu'}.json"
    work = Path(tempfile.mkdtemp(prefix="cad-bench-"))
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "providers": providers,
        },
        "settings": {"seconds_per_level": seconds},
    }
    try:
        registry = build_model(work)
        info = registry.get(1)
        import onnxruntime
        import torch

        results["machine"].update(
            onnxruntime=onnxruntime.__version__,
            torch=torch.__version__,
            pretrained=info.manifest.pretrained.source,
        )
        batch, preferred = MAX_BATCH, PREFERRED_BATCH
        reduced = "fp16" if cuda else "int8"
        options = SessionOptions(tuple(providers))
        workers = args.workers or (12 if cuda else 4)
        runners = args.runners or (2 if cuda else 1)
        env = server_env(work, args.providers, workers, runners)
        results["settings"].update(
            preferred_batch=preferred,
            max_batch=batch,
            workers=workers,
            runners=runners,
            batch_buckets="on" if cuda else "off",
            patch_sampling="graph" if cuda else "host",
            store="sqlite (durable, synchronous=FULL)",
            archive="on",
        )

        log("raw ONNX Runtime ceiling ...")
        ceiling = {b: ort_ceiling(info, options, b, seconds) for b in (preferred, batch)}
        log(f"  {ceiling}")
        log("PyTorch eager ...")
        eager = {b: torch_eager(info, b, seconds, cuda) for b in (preferred, batch)}
        log(f"  {eager}")
        results["ort_ceiling_patches_per_s"] = ceiling
        results["torch_eager_patches_per_s"] = eager
        if not cuda and not args.no_extras:
            log("fp32 rate of this CPU (large matrix products) ...")
            results["fp32_ceiling"] = fp32_ceiling(info, ceiling[batch], eager[batch], seconds)
            log(f"  {results['fp32_ceiling']}")

        requests = dicom_requests() + frame_requests(9)
        log_lines: list[str] = []
        with server_process(env, log_lines=log_lines) as (proc, address):
            levels = []
            for c in args.concurrency:
                log(f"server, {c} concurrent clients ...")
                levels.append(load(address, requests, c, seconds))
                log(f"  {levels[-1]}")
            results["server"] = levels
            if args.no_extras:
                results["settings"]["extras"] = "skipped (--no-extras)"
        results["sampling"] = sampling_comparison(env, requests, max(args.concurrency), seconds)
        results["model_input_bytes"] = model_input_bytes(requests, info.manifest.input_size)
        if not args.no_extras:
            with server_process(env) as (proc, address):
                frames = [png_frame(p, i) for i, p in enumerate(frame_paths(30) or [None] * 30)]
                log("video stream at 30 fps ...")
                results["video_30fps"] = video(address, frames, 30.0, 150 if args.quick else 450)
                log(f"  {results['video_30fps']}")
                results["video_max"] = video(address, frames, None, 150 if args.quick else 450)
                log(f"  unpaced: {results['video_max']}")
                log(f"hot swaps x{args.swaps} ...")
                results["hot_swaps"] = hot_swaps(registry, address, proc.pid, args.swaps)
            results["pool_scoring"] = pool_scoring_ratio(ceiling[batch])
            log(f"{reduced} variant ...")
            results[reduced] = reduced_precision(
                registry,
                registry.latest(),  # type: ignore[arg-type]
                options,
                batch,
                seconds,
                args.quick,
                reduced,
            )
        best = max(level["patches_per_s"] for level in results["server"])
        if results.get(reduced, {}).get("served"):
            log(
                f"server with CAD_PRECISION={reduced}, {max(args.concurrency)} concurrent clients ..."
            )
            variant_log: list[str] = []
            with server_process({**env, "CAD_PRECISION": reduced}, log_lines=variant_log) as (
                _proc,
                address,
            ):
                served = load(address, requests, max(args.concurrency), seconds)
            served[f"served_{reduced}"] = any(f"({reduced})" in line for line in variant_log)
            results[f"server_{reduced}"] = served
            log(f"  {served}")
        results["ratios"] = {
            "server_vs_ort_ceiling": best / ceiling[batch],
            "server_vs_torch_eager": best / eager[batch],
            "ort_vs_torch_eager": ceiling[batch] / eager[batch],
            **{
                f"server_{k}_sampling_vs_ort_ceiling": v["patches_per_s"] / ceiling[batch]
                for k, v in results["sampling"].items()
            },
            **{
                f"server_{k}_sampling_vs_torch_eager": v["patches_per_s"] / eager[batch]
                for k, v in results["sampling"].items()
            },
        }
        if f"server_{reduced}" in results:
            results["ratios"][f"server_{reduced}_vs_torch_eager"] = (
                results[f"server_{reduced}"]["patches_per_s"] / eager[batch]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nJSON: {out}")
    return 0


def render(r: dict[str, Any]) -> str:
    st = {
        "workers": 4,
        "runners": 1,
        "preferred_batch": PREFERRED_BATCH,
        "max_batch": MAX_BATCH,
        "batch_buckets": "off",
        **r.get("settings", {}),
    }  # runs before these were recorded: the old defaults
    lines = [
        (
            f"machine: {r['machine']['cpus']} CPUs, providers {','.join(r['machine']['providers'])}, "
            f"onnxruntime {r['machine'].get('onnxruntime')}, torch {r['machine'].get('torch')}, "
            f"weights {r['machine'].get('pretrained')}"
        ),
        (
            f"server: {st['workers']} workers, {st['runners']} model runner(s), batch {st['preferred_batch']}/"
            f"{st['max_batch']} (preferred/max), batch buckets {st['batch_buckets']}"
        ),
        "",
        "| clients | requests | candidates/s | patches/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in r["server"]:
        lines.append(
            f"| {lv['clients']} | {lv['requests']} | {lv['candidates_per_s']:.1f} | {lv['patches_per_s']:.1f} "
            f"| {lv.get('p50_ms', 0):.0f} | {lv.get('p95_ms', 0):.0f} | {lv.get('p99_ms', 0):.0f} | {lv['errors']} |"
        )
    ceiling, eager = r["ort_ceiling_patches_per_s"], r["torch_eager_patches_per_s"]
    lines += [
        "",
        "| baseline | " + " | ".join(f"batch {b}" for b in ceiling) + " |",
        "|---|" + "---|" * len(ceiling),
        "| raw ONNX Runtime (patches/s) | "
        + " | ".join(f"{v:.1f}" for v in ceiling.values())
        + " |",
        "| PyTorch eager (patches/s) | " + " | ".join(f"{v:.1f}" for v in eager.values()) + " |",
        "",
    ]
    ratios = r["ratios"]
    lines.append(
        f"server at saturation / raw ONNX Runtime: {ratios['server_vs_ort_ceiling']:.3f} (target >= 0.9)"
    )
    lines.append(
        f"server at saturation / PyTorch eager:    {ratios['server_vs_torch_eager']:.2f}x (target >= 2)"
    )
    lines.append(f"raw ONNX Runtime / PyTorch eager:        {ratios['ort_vs_torch_eager']:.2f}x")
    for path, level in r.get("sampling", {}).items():
        lines.append(
            f"patches cut on the {'host (numpy)' if path == 'host' else 'device (graph)'}, "
            f"{level['clients']} clients: {level['patches_per_s']:.1f} patches/s = "
            f"{ratios[f'server_{path}_sampling_vs_ort_ceiling']:.3f} of raw ONNX Runtime, "
            f"{ratios[f'server_{path}_sampling_vs_torch_eager']:.2f}x PyTorch eager"
        )
    if "model_input_bytes" in r:
        b = r["model_input_bytes"]
        lines.append(
            f"handed to the model per request: {b['host_mb']:.2f} MB of patches (host) vs "
            f"{b['graph_mb']:.3f} MB of image and maps (graph), {b['ratio']:.3f}x"
        )
    if "fp32_ceiling" in r:
        f = r["fp32_ceiling"]
        kernels = ", ".join(
            f"{k} {f['sgemm_gflops_' + k]:.0f}" for k in ("numpy", "torch", "onnxruntime")
        )
        lines.append(
            f"fp32 on this CPU: {f['gflop_per_patch']:.2f} GFLOP per patch; raw ONNX Runtime runs "
            f"{f['ort_gflops']:.0f} GFLOP/s, PyTorch eager {f['eager_gflops']:.0f}; the best large fp32 "
            f"matrix product {f['sgemm_gflops_best']:.0f} ({kernels}); "
            f"2x eager needs {f['needed_for_2x_eager_gflops']:.0f} GFLOP/s = "
            f"{f['needed_for_2x_eager_vs_sgemm']:.2f}x that matrix product"
        )
    if "video_30fps" in r:
        v, vm = r["video_30fps"], r["video_max"]
        lines.append(
            f"video, 30 fps paced: {v['fps']:.1f} fps, p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms "
            f"(targets >= 30 fps, p99 <= 50 ms); unpaced {vm['fps']:.1f} fps"
        )
        p = r["pool_scoring"]
        lines.append(
            f"pool scoring {p['candidates']} x {p['patches_per_candidate']}: {p['scoring_s']:.3f} s vs model "
            f"{p['model_s_at_ceiling']:.0f} s -> ratio {p['ratio']:.2e} (target <= 0.01)"
        )
        h = r["hot_swaps"]
        lines.append(
            f"RSS after swap 1: {h['rss_after_first_mb']:.0f} MB, after swap {h['swaps']}: "
            f"{h['rss_after_last_mb']:.0f} MB -> ratio {h['ratio']:.3f} (target <= 1.10)"
        )
    for p in ("int8", "fp16"):
        q = r.get(p)
        if q is None:
            continue
        if "skipped" in q:
            lines.append(f"{p}: skipped ({q['skipped']})")
        else:
            lines.append(
                f"{p}: {q[p + '_patches_per_s']:.1f} vs fp32 {q['fp32_patches_per_s']:.1f} patches/s "
                f"({q['speedup']:.2f}x); CVC AUC {q['auc_fp32']:.4f} -> {q['auc_' + p]:.4f} "
                f"(drop {q['auc_drop']:+.4f}, {q['eval_candidates']} candidates) -> "
                f"{'served' if q['served'] else 'NOT served (drop > 0.005)'}"
            )
        if f"server_{p}" in r:
            lines.append(
                f"server serving {p} ({r[f'server_{p}']['clients']} clients): "
                f"{r[f'server_{p}']['patches_per_s']:.1f} patches/s, "
                f"{ratios[f'server_{p}_vs_torch_eager']:.2f}x PyTorch eager fp32"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
