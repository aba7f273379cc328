"""Durable before acknowledged: kill -9 the real server mid-burst, restart, lose nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from cad.labels.store import open_store
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from support.helpers import publish_tiny
from support.launch import server_process

pytestmark = pytest.mark.slow  # the fast tier leaves it out (README)


def test_acknowledged_corrections_survive_kill_9(tmp_path: Path, store_url: str) -> None:
    registry = tmp_path / "registry"
    publish_tiny(registry, tmp_path / "build")
    env = {
        "CAD_REGISTRY_ROOT": str(registry),
        "CAD_HOST": "127.0.0.1",
        "CAD_STORE_URL": store_url,
        "CAD_ARCHIVE_ROOT": str(tmp_path / "archive"),
        "CAD_POLL_INTERVAL_S": "3600",
    }
    acked: dict[str, tuple[str, str, int]] = {}  # key -> (event_id, candidate_id, label)
    attempted: dict[str, tuple[str, int]] = {}
    lock = threading.Condition()
    with server_process(env) as (proc, address), grpc.insecure_channel(address) as channel:
        raw = cad_pb2.RawImage(
            height=64,
            width=64,
            channels=1,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=bytes(range(64)) * 64,
        )
        response = cad_pb2_grpc.CadInferenceStub(channel).Classify(
            cad_pb2.ClassifyRequest(
                raw=raw,
                candidates=[
                    cad_pb2.Candidate(
                        client_id=str(i), box=cad_pb2.Box(x=i * 3, y=i * 2, width=16, height=16)
                    )
                    for i in range(20)
                ],
            ),
            timeout=30,
        )
        ids = [r.candidate_id for r in response.results]
        review = cad_pb2_grpc.CadReviewStub(channel)

        def burst(worker: int) -> None:
            for i in range(10_000):
                key = f"w{worker}-{i}"
                cid, label = ids[(i * 7 + worker) % 20], (i + worker) % 2
                with lock:
                    attempted[key] = (cid, label)
                verdict = cad_pb2.TRUE_POSITIVE if label else cad_pb2.FALSE_POSITIVE
                try:
                    receipt = review.SubmitCorrection(
                        cad_pb2.Correction(
                            candidate_id=cid,
                            verdict=verdict,
                            reviewer=f"dr.{worker}",
                            idempotency_key=key,
                        ),
                        timeout=10,
                    )
                except grpc.RpcError:
                    return  # the server was killed
                with lock:
                    acked[key] = (receipt.event_id, cid, label)
                    lock.notify_all()

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        with lock:
            assert lock.wait_for(lambda: len(acked) >= 80, timeout=120)
        proc.kill()  # SIGKILL mid-burst
        for t in threads:
            t.join(timeout=60)
        assert proc.wait(timeout=30) == -9

    store = open_store(store_url)
    try:
        events = {e.idempotency_key: e for e in store.labels.events()}
        for key, (event_id, cid, label) in acked.items():
            assert key in events, f"acknowledged correction {key} was lost"
            assert (events[key].event_id, events[key].candidate_id, events[key].label_after) == (
                event_id,
                cid,
                label,
            )
        # No half-written correction: every candidate's events are contiguous and its label is the last one's.
        exported = {x.candidate.candidate_id: x for x in store.queue.labeled()}
        for cid in ids:
            mine = sorted(
                (e for e in events.values() if e.candidate_id == cid), key=lambda e: e.seq
            )
            assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
            if mine:
                assert exported[cid].label == mine[-1].label_after and exported[cid].events == len(
                    mine
                )
                assert exported[cid].last_event_id == mine[-1].event_id
        assert set(events) <= set(attempted)
    finally:
        store.close()

    # After a restart, retries of everything sent are safe: replays, or first writes.
    with server_process(env) as (_, address), grpc.insecure_channel(address) as channel:
        review = cad_pb2_grpc.CadReviewStub(channel)
        for key, (cid, label) in attempted.items():
            verdict = cad_pb2.TRUE_POSITIVE if label else cad_pb2.FALSE_POSITIVE
            worker = key.split("-")[0][1:]
            receipt = review.SubmitCorrection(
                cad_pb2.Correction(
                    candidate_id=cid, verdict=verdict, reviewer=f"dr.{worker}", idempotency_key=key
                ),
                timeout=10,
            )
            if key in acked:
                assert receipt.replayed and receipt.event_id == acked[key][0]
