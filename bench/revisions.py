"""The server of this checkout against the server of another revision, in one run.

    .venv/bin/python -m bench.revisions --base REV [--rounds 3] [--clients 8] [--seconds 15]

Both servers serve the same AlexNet (224-px patches) from one registry, each a real
``cad-server`` child process with the serving benchmark's settings and requests; they take turns
(base, this checkout, this checkout, base, ...) so that the machine's drift during the run falls
on both alike. Between turns the raw ONNX Runtime session is measured on ready-made batches.
Prints patches/s per turn, the ratio of this checkout to the base per round and the median, and
each server's median share of the raw session; writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.launch import revision_tree
from bench.serving import (
    MAX_BATCH,
    ROOT,
    build_model,
    dicom_requests,
    frame_requests,
    load,
    log,
    ort_ceiling,
    server_env,
)
from cad.models.providers import SessionOptions, select_providers
from support.launch import server_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "revisions.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cad-revisions-"))
    try:
        with revision_tree(args.base, work / "base") as base_tree:
            base_sha = subprocess.run(
                ["git", "-C", str(base_tree), "rev-parse", "--short", "HEAD"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            results: dict[str, Any] = {"base": base_sha, "clients": args.clients, "turns": []}
            info = build_model(work).get(1)
            env = server_env(work, args.providers)
            requests = dicom_requests() + frame_requests(9)
            options = SessionOptions(tuple(select_providers(args.providers)))
            for r in range(args.rounds):
                order = [("base", base_tree), ("head", ROOT)]
                for name, tree in order if r % 2 == 0 else order[::-1]:
                    ceiling = ort_ceiling(info, options, MAX_BATCH, args.seconds)
                    log(f"round {r + 1}, {name}: raw ONNX Runtime {ceiling:.1f} patches/s ...")
                    with server_process(env, tree=tree) as (_proc, address):
                        level = load(address, requests, args.clients, args.seconds)
                    log(f"  server {level['patches_per_s']:.1f} patches/s")
                    results["turns"].append(
                        {"round": r + 1, "server": name, "ort": ceiling, **level}
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    turns = results["turns"]
    rate = {(t["round"], t["server"]): t["patches_per_s"] for t in turns}
    ratios = [rate[(r, "head")] / rate[(r, "base")] for r in range(1, args.rounds + 1)]
    share = {
        name: statistics.median(t["patches_per_s"] / t["ort"] for t in turns if t["server"] == name)
        for name in ("base", "head")
    }
    results.update(head_vs_base=ratios, head_vs_base_median=statistics.median(ratios), share=share)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| round | server | raw ONNX Runtime | server patches/s | server / raw | p99 ms |")
    print("|---|---|---|---|---|---|")
    for t in turns:
        print(
            f"| {t['round']} | {'this checkout' if t['server'] == 'head' else base_sha} "
            f"| {t['ort']:.1f} | {t['patches_per_s']:.1f} | {t['patches_per_s'] / t['ort']:.3f} "
            f"| {t['p99_ms']:.0f} |"
        )
    print(
        f"\nthis checkout / {base_sha}, per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"median {results['head_vs_base_median']:.3f}"
    )
    print(
        f"median share of the raw session: {base_sha} {share['base']:.3f}, "
        f"this checkout {share['head']:.3f}"
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
