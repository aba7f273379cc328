"""Annotation queue latency against the pool's size, ranked in SQL against scoring every
unlabeled candidate (the implementation before migration 5), in the same run.

    python -m bench.queue --sizes 1000 100000 --out docs/bench/queue-cpu.json

For each store (SQLite, and a throwaway PostgreSQL when its binaries are installed) and each
pool size: the pool is filled with candidates of 8 patches each (as `polyp:8` records them),
then the default variant's queue (20 items) is asked for ``--calls`` times while another thread
records classifications into the same store, as a server's Classify does. Printed: p50 and p95
of the queue call, and of the concurrent record calls, for both implementations; the old one is
skipped where one call would take longer than ``--old-limit-s``.

With ``--grpc``, each pool is then served by a real ``cad-server`` process (CPU, a tiny model)
and measured as the review page meets it: ``GetAnnotationQueue`` over gRPC by ``--reviewers``
authenticated reviewers in turn, each call claiming its items (so every reviewer's queue skips
the items the others hold), while a client sends ``Classify`` calls (a 128x96 frame, 4
candidates, 8 patches each) back to back. Classify's latency is measured alone first and then
during the queue calls, in the same run: the ratio says what the queue costs the CAD client.
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

from cad.aift import VARIANTS, aift_scores
from cad.aift.scoring import DEFAULT_VARIANT
from cad.labels.store import CandidateRecord, ImageRecord, SqlLabelStore, open_store

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
    entries = store.queue.unlabeled()
    if not entries:
        return []
    scores = aift_scores(np.stack([e.patch_probs for e in entries]), DEFAULT_VARIANT)
    order = sorted(range(len(entries)), key=lambda i: (-scores[i], entries[i].candidate_id))
    return [entries[i].candidate_id for i in order[:limit]]


def new_queue(store: SqlLabelStore, limit: int) -> list[str]:
    return [
        e.candidate_id for e, _ in store.queue.ranked_unlabeled(VARIANTS[DEFAULT_VARIANT], limit)
    ]


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


TOKENS = {"infer": "bench-infer-token-0123456789"}


def _png() -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def grpc_measure(url: str, work: Path, calls: int, reviewers: int) -> dict[str, Any]:
    """Queue calls with claims over gRPC against a real server on the store at ``url``, with a
    Classify load; Classify alone first, as the baseline of the same run."""
    import grpc

    from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
    from support.helpers import publish_tiny
    from support.launch import server_process

    registry = work / "registry"
    if not registry.exists():
        publish_tiny(registry, work / "build", recipe="polyp:8")
    names = [f"dr.bench{i}" for i in range(reviewers)]
    tokens = {**TOKENS, **{n: f"{n}-review-token-0123456789" for n in names}}
    table = [{"identity": "tower", "roles": ["infer"], "token": tokens["infer"]}]
    table += [{"identity": n, "roles": ["review"], "token": tokens[n]} for n in names]
    (work / "tokens.json").write_text(json.dumps({"tokens": table}))
    env = {
        "CAD_STORE_URL": url,
        "CAD_REGISTRY_ROOT": str(registry),
        "CAD_ARCHIVE_ROOT": str(work / "archive"),
        "CAD_SPOOL_DIR": str(work / "spool"),
        "CAD_AUTH_TOKENS_FILE": str(work / "tokens.json"),
        "CAD_HOST": "127.0.0.1",
        "CAD_PROVIDERS": "cpu",
        "CAD_INTRA_OP_THREADS": "1",
        "CAD_WORKERS": "2",
        "CAD_QUEUE_CLAIM_S": "600",
    }
    request = cad_pb2.ClassifyRequest(
        encoded=_png(),
        candidates=[
            cad_pb2.Candidate(
                client_id=f"c{i}", box=cad_pb2.Box(x=8 + 28 * i, y=30, width=24, height=24)
            )
            for i in range(4)
        ],
    )

    def bearer(who: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {tokens[who]}")]

    with server_process(env) as (_, address), grpc.insecure_channel(address) as channel:
        infer = cad_pb2_grpc.CadInferenceStub(channel)
        review = cad_pb2_grpc.CadReviewStub(channel)
        stop = threading.Event()
        classify_times: list[float] = []

        def classify_load() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                infer.Classify(request, timeout=60, metadata=bearer("infer"))
                classify_times.append(time.perf_counter() - t0)

        for _ in range(5):  # warm the model and the connection
            infer.Classify(request, timeout=60, metadata=bearer("infer"))
        thread = threading.Thread(target=classify_load, daemon=True)
        thread.start()
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and len(classify_times) < 200:
            time.sleep(0.05)
        alone = list(classify_times)
        classify_times.clear()
        queue_times: list[float] = []
        handed: list[set[str]] = [set() for _ in names]
        try:
            for k in range(calls):
                who = k % len(names)
                t0 = time.perf_counter()
                reply = review.GetAnnotationQueue(
                    cad_pb2.QueueRequest(limit=20), timeout=60, metadata=bearer(names[who])
                )
                queue_times.append(time.perf_counter() - t0)
                handed[who] |= {i.candidate_id for i in reply.items}
        finally:
            stop.set()
            thread.join()
        during = list(classify_times)
        overlap = sum(len(a & b) for i, a in enumerate(handed) for b in handed[i + 1 :])
    base, load = percentiles(alone), percentiles(during)
    return {
        "reviewers": reviewers,
        "queue_with_claims": percentiles(queue_times),
        "items_held_by_two_reviewers": overlap,
        "classify_alone": base,
        "classify_during_queue_calls": load,
        "classify_p95_ratio": round(load["p95_ms"] / base["p95_ms"], 2) if base and load else None,
    }


def run(
    sizes: list[int],
    calls: int,
    old_limit_s: float,
    backends: list[str],
    grpc_calls: int = 0,
    reviewers: int = 4,
) -> dict[str, Any]:
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
                from support.pg import TempPostgres

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
                    if grpc_calls:
                        work = Path(tmp) / f"grpc-{backend}"
                        work.mkdir(exist_ok=True)
                        row["grpc"] = grpc_measure(url, work, grpc_calls, reviewers)
                        store._run(  # the next size starts with nothing claimed
                            lambda cur: cur.execute(
                                "UPDATE candidates SET claimed_by = NULL, claimed_until = NULL "
                                "WHERE claimed_by IS NOT NULL"
                            )
                        )
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
    parser.add_argument(
        "--grpc",
        type=int,
        default=0,
        metavar="CALLS",
        help="also this many queue calls with claims over gRPC to a real server under a "
        "Classify load (0: skip)",
    )
    parser.add_argument("--reviewers", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    results = run(
        args.sizes, args.calls, args.old_limit_s, args.backends, args.grpc, args.reviewers
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
