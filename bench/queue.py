"""Annotation queue latency against the pool's size, ranked in SQL against scoring every
unlabeled candidate (the implementation before migration 5), in the same run.

    python -m bench.queue --sizes 1000 100000 --out docs/bench/queue-cpu.json

For each store (SQLite, and a throwaway PostgreSQL when its binaries are installed) and each
pool size: the pool is filled with candidates of 8 patches each (as `polyp:8` records them),
then the default variant's queue (20 items) is asked for ``--calls`` times while another thread
records classifications into the same store, as a server's Classify does. Printed: p50 and p95
of the queue call, and of the concurrent record calls, for both implementations; the old one is
skipped where one call would take longer than ``--old-limit-s``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.aift import VARIANTS, aift_scores
from service.aift.scoring import DEFAULT_VARIANT
from service.labels.store import CandidateRecord, ImageRecord, SqlLabelStore, open_store

PER_IMAGE = 100
PATCHES = 8


def fill(store: SqlLabelStore, n: int, start: int = 0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for b in range(start // PER_IMAGE, (start + n) // PER_IMAGE):
        rid = f"r{b:08d}"
        p = rng.random((PER_IMAGE, PATCHES)).astype(np.float32)
        probs = np.stack([1 - p, p], -1)
        store.record_classification(
            ImageRecord(rid, "0" * 64, 1, 64, 64, 0, "raw"),
            [
                CandidateRecord(
                    f"{rid}-{i:03d}", rid, "", 0, 0, 8, 8, "polyp:8", "1", 0.5, 0, 0, 0, probs[i]
                )
                for i in range(PER_IMAGE)
            ],
            durable=False,
        )


def old_queue(store: SqlLabelStore, limit: int) -> list[str]:
    """Before migration 5: every unlabeled candidate loaded and scored, then sorted."""
    entries = store.unlabeled()
    if not entries:
        return []
    scores = aift_scores(np.stack([e.patch_probs for e in entries]), DEFAULT_VARIANT)
    order = sorted(range(len(entries)), key=lambda i: (-scores[i], entries[i].candidate_id))
    return [entries[i].candidate_id for i in order[:limit]]


def new_queue(store: SqlLabelStore, limit: int) -> list[str]:
    return [e.candidate_id for e, _ in store.ranked_unlabeled(VARIANTS[DEFAULT_VARIANT], limit)]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "n": len(values),
    }


def measure(store: SqlLabelStore, queue: Any, calls: int) -> dict[str, Any]:
    """``calls`` queue calls while a writer records a classification every few milliseconds."""
    stop = threading.Event()
    writes: list[float] = []
    counter = [10**7]

    def writer() -> None:
        rng = np.random.default_rng(1)
        while not stop.is_set():
            counter[0] += 1
            rid = f"w{counter[0]}"
            p = rng.random((4, PATCHES)).astype(np.float32)
            t0 = time.perf_counter()
            store.record_classification(
                ImageRecord(rid, "1" * 64, 1, 64, 64, 0, "raw"),
                [
                    CandidateRecord(
                        f"{rid}-{i}",
                        rid,
                        "",
                        0,
                        0,
                        8,
                        8,
                        "polyp:8",
                        "1",
                        0.5,
                        0,
                        0,
                        0,
                        np.stack([1 - p[i], p[i]], -1),
                    )
                    for i in range(4)
                ],
                durable=False,
            )
            writes.append(time.perf_counter() - t0)
            stop.wait(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    times = []
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            queue(store, 20)
            times.append(time.perf_counter() - t0)
    finally:
        stop.set()
        thread.join()
    return {"queue": percentiles(times), "concurrent_record": percentiles(writes)}


def run(sizes: list[int], calls: int, old_limit_s: float, backends: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "patches_per_candidate": PATCHES,
        "limit": 20,
        "variant": DEFAULT_VARIANT,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        for backend in backends:
            pg = None
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'labels.sqlite3'}"
            else:
                from tests.pg import TempPostgres

                pg = TempPostgres().start()
                url = pg.new_database()
            store = open_store(url)
            try:
                filled = 0
                for size in sorted(sizes):
                    t0 = time.perf_counter()
                    fill(store, size - filled, filled)
                    filled = size
                    fill_s = time.perf_counter() - t0
                    assert new_queue(store, 20) == old_queue(store, 20) if size <= 100_000 else True
                    row: dict[str, Any] = {
                        "backend": backend,
                        "unlabeled": size,
                        "fill_s": round(fill_s, 1),
                    }
                    row["sql"] = measure(store, new_queue, calls)
                    t0 = time.perf_counter()
                    old_queue(store, 20)
                    one = time.perf_counter() - t0
                    if one <= old_limit_s:
                        row["score_everything"] = measure(store, old_queue, max(3, calls // 10))
                    else:
                        row["score_everything"] = {
                            "one_call_s": round(one, 2),
                            "skipped": "over --old-limit-s",
                        }
                    print(json.dumps(row), flush=True)
                    results["runs"].append(row)
            finally:
                store.close()
                if pg is not None:
                    pg.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--old-limit-s", type=float, default=10.0)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--out")
    args = parser.parse_args()
    results = run(args.sizes, args.calls, args.old_limit_s, args.backends)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
