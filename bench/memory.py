"""Where a long-running server's memory goes: RSS under a long mixed workload, per allocator
setting, in one run.

The workload, repeated in rounds by several client threads against a real ``cad-server``
child process (AlexNet at 224 px, the polyp recipe: 24 patches per candidate): DICOM slices of
several transfer syntaxes, PNG frames, short video streams, malformed files (byte flips and
truncations of the same DICOM files), reviewer corrections and annotation-queue calls. After
each round the server's RSS is read from /proc, split into anonymous memory (heap, arenas, ONNX
Runtime's buffers) and file-backed memory (shared libraries). Each configuration gets a fresh
server, so the figures compare in one run on one machine.

    .venv/bin/python -m bench.memory --rounds 12 --out docs/bench/memory-cpu.json

Configurations: ``default`` (glibc's defaults: up to 8 malloc arenas per core, a dynamic mmap
threshold), ``arena-2`` (``MALLOC_ARENA_MAX=2``), ``trim`` (``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB, which also switches off the dynamic threshold), and
``workers-2`` (``CAD_WORKERS=2``) and ``no-ort-arena`` (``CAD_CPU_MEM_ARENA=false``: ONNX
Runtime allocates per run instead of keeping an arena).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench.serving import build_model, dicom_requests, frame_requests, log, server_env
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from support.launch import server_process

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "arena-2": {"MALLOC_ARENA_MAX": "2"},
    "trim": {"MALLOC_TRIM_THRESHOLD_": "1048576", "MALLOC_MMAP_THRESHOLD_": "1048576"},
    "workers-2": {"CAD_WORKERS": "2"},
    "no-ort-arena": {"CAD_CPU_MEM_ARENA": "false"},
}


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {
        "rss_mb": fields.get("VmRSS", 0.0),
        "anon_mb": fields.get("RssAnon", 0.0),
        "file_mb": fields.get("RssFile", 0.0),
        "peak_mb": fields.get("VmHWM", 0.0),
    }


def malformed(requests: list[cad_pb2.ClassifyRequest], rng: random.Random) -> list[bytes]:
    out = []
    for request in requests:
        data = bytearray(request.dicom)
        for _ in range(4):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        out.append(bytes(data))
        out.append(request.dicom[: rng.randrange(len(request.dicom))])
    return out


def one_round(address: str, clients: int, seed: int) -> dict[str, int]:
    dicom = dicom_requests()
    frames = frame_requests(6)
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        with grpc.insecure_channel(address) as ch:
            inference = cad_pb2_grpc.CadInferenceStub(ch)
            review = cad_pb2_grpc.CadReviewStub(ch)

            def call(fn: Any, request: Any) -> Any:
                try:
                    result = fn(request, timeout=120)
                    if hasattr(result, "__next__"):
                        result = list(result)
                    with lock:
                        counts["ok"] += 1
                    return result
                except grpc.RpcError:
                    with lock:
                        counts["refused"] += 1
                    return None

            for request in dicom + frames:
                answer = call(inference.Classify, request)
                if answer is not None and rng.random() < 0.3:
                    call(
                        review.SubmitCorrection,
                        cad_pb2.Correction(
                            candidate_id=answer.results[0].candidate_id,
                            verdict=rng.choice([cad_pb2.TRUE_POSITIVE, cad_pb2.FALSE_POSITIVE]),
                            reviewer=f"reviewer-{k}",
                        ),
                    )
            call(inference.ClassifyStream, iter(frames))
            for data in malformed(dicom, rng):
                call(
                    inference.Classify,
                    cad_pb2.ClassifyRequest(dicom=data, candidates=dicom[0].candidates),
                )
            call(review.GetAnnotationQueue, cad_pb2.QueueRequest(limit=50, variant="entropy"))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def run_config(name: str, extra: dict[str, str], work: Path, rounds: int, clients: int) -> dict:
    env = {**server_env(work, "cpu", workers=4), **extra}
    with server_process(env) as (proc, address):
        samples = [{"round": 0, **memory_mb(proc.pid)}]
        log(f"[{name}] started: RSS {samples[0]['rss_mb']:.0f} MB")
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            counts = one_round(address, clients, r)
            samples.append({"round": r, **memory_mb(proc.pid), **counts})
            s = samples[-1]
            log(
                f"[{name}] round {r}/{rounds} ({time.perf_counter() - t0:.1f} s, "
                f"{counts['ok']} ok, {counts['refused']} refused): RSS {s['rss_mb']:.0f} MB "
                f"(anon {s['anon_mb']:.0f}, files {s['file_mb']:.0f}), peak {s['peak_mb']:.0f}"
            )
    start, end = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    half = samples[len(samples) // 2]["rss_mb"]
    return {
        "env": extra,
        "samples": samples,
        "rss_start_mb": start,
        "rss_end_mb": end,
        "end_over_start": end / start,
        "growth_second_half_mb": end - half,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cad-memory-") as tmp:
        work = Path(tmp)
        log("building the AlexNet registry ...")
        build_model(work)
        results = {}
        for name in args.configs:
            for leftover in ("labels.sqlite3", "archive"):
                path = work / leftover
                if path.is_file():
                    path.unlink()
            results[name] = run_config(name, CONFIGS[name], work, args.rounds, args.clients)
    base = results.get("default")
    print(f"{'config':<10} {'start MB':>9} {'end MB':>8} {'end/start':>9} {'2nd-half growth MB':>19}"
          f" {'end vs default':>15}")  # fmt: skip
    for name, r in results.items():
        ratio = r["rss_end_mb"] / base["rss_end_mb"] if base else float("nan")
        print(
            f"{name:<10} {r['rss_start_mb']:>9.0f} {r['rss_end_mb']:>8.0f} "
            f"{r['end_over_start']:>9.2f} {r['growth_second_half_mb']:>19.0f} {ratio:>15.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
