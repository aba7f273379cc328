"""Patch extraction: what the CPU pays per patch, against the model that the patches feed.

    .venv/bin/python -m bench.extraction [--seconds 4] [--threads 1 2 4] [--feed 15623] [--out FILE]

The requests of the serving benchmark (colonoscopy frames, CVC-ClinicDB when it is beside the
repository, else 384x288 noise frames; real CT/MR slices), decoded once; each request's 3
candidates are cut into 72 patches (``polyp`` recipe, 224 px), from 1..N threads at once:

1. into a fresh array per request (what the server did until it kept one per worker thread);
2. into one array per thread, reused request after request (what the server does now,
   ``cad.aift.patches.PatchBuffers``).

It prints requests/s, ms per request and microseconds of one core per patch for each, their
ratio; the model itself per patch (raw ONNX Runtime on this CPU at batch 64) for comparison; and
how many cores the extraction needs to feed ``--feed`` patches/s (default: the raw ONNX Runtime
ceiling measured on an H100, ``docs/bench/serving-cuda-h100.json``). Writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import (
    ROOT,
    build_model,
    collector_paused,
    dicom_requests,
    frame_requests,
    log,
    ort_ceiling,
)
from cad.aift import Box, extract_patches, parse_recipe
from cad.models.providers import SessionOptions

H100 = ROOT / "docs" / "bench" / "serving-cuda-h100.json"
SIZE = 224


def decoded_requests(frames: int) -> list[tuple[np.ndarray, list[Box]]]:
    """(pixels, boxes) of the serving benchmark's requests, decoded as the server decodes them."""
    from cad.encoded import decode_encoded
    from cad.imaging import ImageLimits, decode_dicom

    out = []
    for req in frame_requests(frames) + dicom_requests():
        if req.WhichOneof("image") == "encoded":
            pixels = decode_encoded(req.encoded).pixels
        else:
            pixels = decode_dicom(req.dicom, 0, None, ImageLimits()).pixels
        boxes = [Box(c.box.x, c.box.y, c.box.width, c.box.height) for c in req.candidates]
        out.append((pixels, boxes))
    return out


def cut(pixels: np.ndarray, boxes: list[Box], out: np.ndarray | None) -> int:
    """One request's patches, into ``out`` or into a fresh array; returns the patch count.

    Candidate by candidate through ``extract_patches(out=...)`` (what ``extract_many`` does), so
    that this script also runs on code from before ``extract_many`` took ``out``: the
    before/after figures in docs/performance.md are this script on both."""
    recipe = parse_recipe("polyp")
    m = recipe.count
    if out is None:
        out = np.empty((len(boxes) * m, 3, SIZE, SIZE), dtype=np.float32)
    for k, box in enumerate(boxes):
        extract_patches(pixels, box, recipe, SIZE, out=out[k * m : (k + 1) * m])
    return len(boxes) * m


def throughput(
    requests: list[tuple[np.ndarray, list[Box]]], threads: int, reuse: bool, seconds: float
) -> dict[str, float]:
    """Requests and patches per second with ``threads`` threads cutting requests in turn."""
    counts = [0] * threads
    patches = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        buffer = np.empty((72, 3, SIZE, SIZE), dtype=np.float32) if reuse else None
        for pixels, boxes in requests[:2]:  # warm-up
            cut(pixels, boxes, buffer)
        start.wait()
        k = i
        while not stop.is_set():
            pixels, boxes = requests[k % len(requests)]
            patches[i] += cut(pixels, boxes, buffer)
            counts[i] += 1
            k += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    with collector_paused():
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)  # the measured interval itself, not a synchronisation
        stop.set()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
    rps, pps = sum(counts) / elapsed, sum(patches) / elapsed
    return {
        "threads": threads,
        "requests_per_s": rps,
        "patches_per_s": pps,
        "ms_per_request": 1000 * threads / rps,
        "core_us_per_patch": 1e6 * threads / pps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--frames", type=int, default=8, help="colonoscopy frames among the requests"
    )
    parser.add_argument(
        "--feed",
        type=float,
        default=None,
        help="patches/s to feed (default: the H100 raw ONNX Runtime ceiling on record)",
    )
    parser.add_argument(
        "--no-model", action="store_true", help="skip the model's own time per patch"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "extraction.json")
    args = parser.parse_args(argv)

    requests = decoded_requests(args.frames)
    log(f"{len(requests)} requests decoded ({sum(len(b) for _, b in requests)} candidates)")
    rows = []
    for threads in args.threads:
        for reuse in (False, True):
            row = {
                "array": "reused per thread" if reuse else "fresh per request",
                **throughput(requests, threads, reuse, args.seconds),
            }
            log(f"  {threads} thread(s), {row['array']}: {row['requests_per_s']:.1f} requests/s")
            rows.append(row)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "requests": len(requests),
        "patch_size": SIZE,
        "recipe": "polyp",
        "rows": rows,
        "reuse_vs_fresh": {
            t: next(
                r["requests_per_s"] for r in rows if r["threads"] == t and "reused" in r["array"]
            )
            / next(r["requests_per_s"] for r in rows if r["threads"] == t and "fresh" in r["array"])
            for t in args.threads
        },
    }
    one = next(r for r in rows if r["threads"] == min(args.threads) and "reused" in r["array"])
    if not args.no_model:
        work = Path(tempfile.mkdtemp(prefix="cad-bench-extract-"))
        try:
            registry = build_model(work)
            rate = ort_ceiling(registry.get(1), SessionOptions(), 64, args.seconds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["model_cpu_patches_per_s"] = rate
        result["extraction_vs_model_cpu"] = one["core_us_per_patch"] / (1e6 / rate)
    feed = args.feed
    if feed is None and H100.is_file():
        feed = max(json.loads(H100.read_text())["ort_ceiling_patches_per_s"].values())
    if feed:
        result["feed_patches_per_s"] = feed
        result["cores_to_feed"] = feed * one["core_us_per_patch"] / 1e6
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(render(result))
    log(f"written to {args.out}")
    return 0


def render(r: dict[str, Any]) -> str:
    lines = [
        "| threads | patch array | requests/s | patches/s | ms per request | core-us per patch |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {x['threads']} | {x['array']} | {x['requests_per_s']:.1f} | {x['patches_per_s']:.0f} | "
        f"{x['ms_per_request']:.1f} | {x['core_us_per_patch']:.0f} |"
        for x in r["rows"]
    ]
    lines.append("")
    lines += [f"reused / fresh, {t} thread(s): {v:.2f}x" for t, v in r["reuse_vs_fresh"].items()]
    if "model_cpu_patches_per_s" in r:
        lines.append(
            f"model on this CPU: {r['model_cpu_patches_per_s']:.1f} patches/s; extraction costs "
            f"{r['extraction_vs_model_cpu']:.3f} of the model's time per patch"
        )
    if "cores_to_feed" in r:
        lines.append(
            f"cores of this kind to cut {r['feed_patches_per_s']:.0f} patches/s: {r['cores_to_feed']:.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
