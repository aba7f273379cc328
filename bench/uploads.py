"""What refused and concurrent series uploads leave in a server's memory, against a baseline
revision in the same run (issue 37, point 13).

For each revision (this checkout, and ``--baseline-ref`` checked out as a git worktree), a fresh
real ``cad-server`` child process (the AlexNet model of ``bench.serving``) is sent:

1. ``--refused`` sequential ClassifyVolume uploads of ``--refused-mb`` MB of junk each (valid
   messages, not DICOM: the server reads them all, then refuses them at assembly);
2. ``--concurrent`` such uploads of ``--concurrent-mb`` MB at once.

The server's RSS is read from /proc before, after each phase (once its answers are in) and as its
peak (VmHWM). Printed: each figure, and the ratio of this checkout's to the baseline's.

    .venv/bin/python -m bench.uploads --out docs/bench/uploads-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.launch import ROOT, emit, revision_tree
from bench.memory import memory_mb
from bench.serving import build_model, log, server_env
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from support.launch import server_process

MB = 1024 * 1024
PIECE = 8 * MB
"""Bytes of junk per instance, one instance per message (under the 64 MB message limit)."""


def junk_upload(total_mb: int) -> Iterator[cad_pb2.VolumeChunk]:
    header = cad_pb2.VolumeHeader(
        candidates=[cad_pb2.VolumeCandidate(client_id="a", voxel=cad_pb2.Point3D())]
    )
    yield cad_pb2.VolumeChunk(header=header)
    piece = b"\x00" * PIECE
    for _ in range(total_mb * MB // PIECE):
        yield cad_pb2.VolumeChunk(instances=[piece])


def send(address: str, total_mb: int) -> str:
    """One junk upload; the status it was answered with."""
    with grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 * MB)]
    ) as channel:
        try:
            cad_pb2_grpc.CadInferenceStub(channel).ClassifyVolume(
                junk_upload(total_mb), timeout=600
            )
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def run_tree(tree: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = server_env(work, "cpu")
    out: dict[str, Any] = {}
    with server_process(env, tree=tree) as (proc, address):
        out["idle"] = memory_mb(proc.pid)
        statuses = [send(address, args.refused_mb) for _ in range(args.refused)]
        out["after_refused"] = {**memory_mb(proc.pid), "statuses": statuses}
        log(f"  {args.refused} x {args.refused_mb} MB refused: {out['after_refused']}")
        answers: list[str] = []
        threads = [
            threading.Thread(target=lambda: answers.append(send(address, args.concurrent_mb)))
            for _ in range(args.concurrent)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["after_concurrent"] = {**memory_mb(proc.pid), "statuses": sorted(answers)}
        log(f"  {args.concurrent} x {args.concurrent_mb} MB at once: {out['after_concurrent']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", default="2447632", help="git revision to compare with")
    parser.add_argument("--refused", type=int, default=5)
    parser.add_argument("--refused-mb", type=int, default=360)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--concurrent-mb", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cad-bench-uploads-") as tmp:
        work = Path(tmp)
        build_model(work)
        results: dict[str, Any] = {}
        with revision_tree(args.baseline_ref, work / "baseline") as baseline:
            for name, tree in (("baseline", baseline), ("current", ROOT)):
                log(f"{name} ({args.baseline_ref if name == 'baseline' else 'this checkout'}):")
                run_dir = work / f"run-{name}"
                run_dir.mkdir()
                (run_dir / "registry").symlink_to(work / "registry")
                results[name] = run_tree(tree, run_dir, args)
    ratios = {
        phase: round(results["current"][phase]["rss_mb"] / results["baseline"][phase]["rss_mb"], 2)
        for phase in ("idle", "after_refused", "after_concurrent")
    }
    ratios["peak"] = round(
        results["current"]["after_concurrent"]["peak_mb"]
        / results["baseline"]["after_concurrent"]["peak_mb"],
        2,
    )
    report = {
        "machine": "2-core CPU",
        "baseline_ref": args.baseline_ref,
        "workload": {
            "refused": f"{args.refused} x {args.refused_mb} MB junk, one after another",
            "concurrent": f"{args.concurrent} x {args.concurrent_mb} MB junk at once",
        },
        **results,
        "ratio_current_to_baseline_rss": ratios,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
