"""A label store outage, for real: a PostgreSQL server of this module's own is stopped with
``pg_ctl stop -m immediate`` and started again while a real gRPC server runs on it.

Inference must not depend on the store (answers go out, records are spooled and written once
when it is back), reviews get UNAVAILABLE (never INTERNAL), readiness says the truth, and the
server comes back by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from bench.failover import request
from cad.errors import LeaseHeld, StoreUnavailable
from cad.labels.spool import RecordSpool
from cad.labels.store import CandidateRecord, ImageRecord, open_store
from cad.metrics import ServiceMetrics
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import make_settings
from support.pg import TempPostgres, pg_bin

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.slow  # the fast tier leaves it out (README)


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    server = TempPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def up(pg: TempPostgres) -> Iterator[TempPostgres]:
    """The module's database, running again after the test whatever the test did to it."""
    yield pg
    with contextlib.suppress(Exception):  # it was running
        pg.restart()


def test_a_dead_database_is_unavailable_and_the_store_reconnects_by_itself(
    up: TempPostgres,
) -> None:
    store = open_store(up.new_database(), timeout_s=1.0)
    try:
        store.fleet.add_audit("pin", "ops", "cad", {"version": 1})
        up.crash()
        with pytest.raises(StoreUnavailable, match="label store is unreachable"):
            store.fleet.audit()
        assert not store.available and not store.ping()
        up.restart()
        # the same store object, no reopening: its dead connections are replaced
        assert [e.action for e in store.fleet.audit()] == ["pin"]
        assert store.available
    finally:
        store.close()


def test_an_unreachable_database_at_start_is_refused_by_the_cli_and_tolerated_by_servers(
    up: TempPostgres,
) -> None:
    url = up.new_database()
    up.crash()
    with pytest.raises(StoreUnavailable):
        open_store(url, timeout_s=0.5)
    store = open_store(url, timeout_s=0.5, require=False)  # what a server does
    try:
        assert not store.available
        up.restart()
        assert store.ping() and store.schema_version() >= 3  # migrated on first contact
    finally:
        store.close()


def health(channel: grpc.Channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    names = ["", "cad.v1.CadInference", "cad.v1.CadReview", "cad.v1.ModelAdmin"]
    return {
        n: stub.Check(health_pb2.HealthCheckRequest(service=n), timeout=5).status for n in names
    }


def test_classify_answers_through_an_outage_records_once_after_and_reviews_are_unavailable(
    up: TempPostgres, registry_root: Path, tmp_path: Path
) -> None:
    url = up.new_database()
    settings = make_settings(
        registry_root,
        store_url=url,
        store_timeout_s=1.0,
        store_probe_interval_s=3600.0,  # the test checks the store itself: no timing
        # rows committed durably: a relaxed commit (background) can be lost by a database crash
        # within PostgreSQL's WAL writer delay, and the correction below refers to one
        record_sync="each",
    )
    metrics = CollectorRegistry()
    with ServerThread(settings, metrics) as running, grpc.insecure_channel(running.address) as ch:
        running.refresh_models()
        server = running.server
        assert server.check_store()
        infer = cad_pb2_grpc.CadInferenceStub(ch)
        review = cad_pb2_grpc.CadReviewStub(ch)
        before = infer.Classify(request(), timeout=30)
        assert set(health(ch).values()) == {SERVING}

        up.crash()
        during = [infer.Classify(request(3), timeout=30) for _ in range(3)]
        during += list(infer.ClassifyStream(iter([request(1), request(1)]), timeout=30))
        assert all(r.request_id and len(r.results) >= 1 for r in during)
        correction = cad_pb2.Correction(
            candidate_id=before.results[0].candidate_id,
            verdict=cad_pb2.TRUE_POSITIVE,
            reviewer="dr.a",
            idempotency_key="outage-1",
        )
        with pytest.raises(grpc.RpcError) as err:
            review.SubmitCorrection(correction, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "label store is unreachable" in (err.value.details() or "")
        assert not server.check_store()
        statuses = health(ch)
        assert statuses["cad.v1.CadInference"] == SERVING  # video keeps its overlay
        assert statuses[""] == NOT_SERVING and statuses["cad.v1.CadReview"] == NOT_SERVING
        assert metrics.get_sample_value("cad_store_up") == 0
        assert metrics.get_sample_value("cad_spool_records") == len(during)
        assert metrics.get_sample_value("cad_spool_oldest_age_seconds") >= 0

        up.restart()
        assert server.check_store()  # no restart of the server: it reconnects and drains
        assert metrics.get_sample_value("cad_spool_records") == 0
        assert metrics.get_sample_value("cad_spool_written_total") == len(during)
        assert set(health(ch).values()) == {SERVING}
        receipt = review.SubmitCorrection(correction, timeout=30)  # the same key, retried
        assert not receipt.replayed and receipt.label == cad_pb2.POSITIVE

    check = open_store(url)
    try:
        for response in during:  # every spooled record written exactly once, as answered
            image = check.get_image(response.request_id)
            stored = check.candidates_of(response.request_id)
            assert [c.candidate.candidate_id for c in stored] == [
                r.candidate_id for r in response.results
            ]
            for c, r in zip(stored, response.results, strict=True):
                assert c.candidate.probability == pytest.approx(r.probability, abs=1e-6)
            assert image.created  # the time it was classified, kept through the spool
        # the unary calls, one after another, are stored in the order they were answered (the
        # frames of a stream are processed side by side)
        created = [check.get_image(r.request_id).created for r in during[:3]]
        assert created == sorted(created) and len(set(created)) == 3
        assert sum(1 for _ in check.queue.labeled()) == 1
    finally:
        check.close()


def record(i: int) -> tuple[ImageRecord, list[CandidateRecord]]:
    rid = f"req-{i}"
    image = ImageRecord(rid, "0" * 64, 10, 8, 8, 0, "png", created=f"2026-01-01T00:00:0{i}Z")
    probs = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    cand = CandidateRecord(
        f"{rid}-0", rid, "c", 1, 1, 2, 2, "single", "1", 0.5, 0.1, 0.2, 0.3, probs
    )
    return image, [cand]


def test_the_spool_is_ordered_bounded_single_owner_and_writes_once_after_a_crash(
    tmp_path: Path,
) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    folder = tmp_path / "spool"
    spool = RecordSpool(folder, max_records=3, metrics=metrics)
    with pytest.raises(RuntimeError, match="in use by another server process"):
        RecordSpool(folder, max_records=3, metrics=metrics)
    assert all(spool.append(*record(i)) for i in range(3))
    assert not spool.append(*record(3))  # full: dropped and counted
    assert metrics.registry.get_sample_value("cad_spool_dropped_total") == 1

    written: list[str] = []

    def down(image: ImageRecord, candidates: list[CandidateRecord]) -> None:
        raise StoreUnavailable("down")

    assert spool.drain(down) == 0 and spool.pending == 3
    # a crash after the store took the first record but before its file was removed
    store = open_store(f"sqlite:///{tmp_path / 'labels.sqlite3'}")
    first = sorted(folder.glob("*.record.json"))[0]
    from cad.labels.spool import _decode

    store.record_classification(*_decode(first.read_bytes()))
    spool.close()

    again = RecordSpool(folder, max_records=3, metrics=metrics)  # the restarted process
    assert again.pending == 3

    def write(image: ImageRecord, candidates: list[CandidateRecord]) -> None:
        written.append(image.request_id)
        store.record_classification(image, candidates)

    assert again.drain(write) == 3 and again.pending == 0
    assert written == ["req-0", "req-1", "req-2"]  # oldest first
    for i in range(3):
        (stored,) = store.candidates_of(f"req-{i}")  # once, with its patch predictions
        assert np.array_equal(stored.candidate.patch_probs, record(i)[1][0].patch_probs)
    again.close()
    store.close()


def test_a_lease_lost_with_the_database_is_taken_again(up: TempPostgres) -> None:
    store = open_store(up.new_database(), timeout_s=1.0)
    lease = store.lease("trainer", "cad train watch on here (pid 1)").acquire()
    try:
        up.crash()
        with pytest.raises(StoreUnavailable):
            lease.ensure()
        up.restart()
        lease.ensure()  # taken again on a new connection
        with pytest.raises(LeaseHeld, match="cad train watch on here"):
            store.lease("trainer", "cad train round").acquire()
    finally:
        lease.release()
        store.close()


def test_one_pruner_at_a_time_across_replicas(registry_root: Path, up: TempPostgres) -> None:
    url = up.new_database()
    with ServerThread(make_settings(registry_root, store_url=url)) as running:
        other = open_store(url)
        try:
            with other.lease("archive-prune", "cad-server on replica-2 (pid 9)"):
                assert running.server.prune_archive_now() is None  # skipped: replica-2 prunes
            report = running.server.prune_archive_now()
            assert report is not None and report.images_removed == 0
        finally:
            other.close()


def test_a_pin_over_grpc_reaches_every_replica_without_writing_the_registry(
    registry_root: Path, tmp_path: Path, up: TempPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """Servers mount the registry read-only: PinVersion keeps the pin in the label store, where
    the other replicas and the CLI read it (and they converge on it)."""
    from cadcli.main import main
    from support.helpers import publish_tiny

    publish_tiny(registry_root, tmp_path / "b")  # version 2
    before = sorted(p.name for p in (registry_root / "cad").iterdir())
    url = up.new_database()

    def replica(i: int) -> ServerThread:
        return ServerThread(
            make_settings(registry_root, store_url=url, spool_dir=tmp_path / f"spool-{i}")
        )

    with replica(0) as a, replica(1) as b, grpc.insecure_channel(a.address) as ch:
        a.refresh_models(), b.refresh_models()
        assert a.server.models.current.version == b.server.models.current.version == 2
        admin = cad_pb2_grpc.ModelAdminStub(ch)
        admin.PinVersion(cad_pb2.PinRequest(version="1", actor="ops", reason="FP rate"), timeout=30)
        assert a.server.models.current.version == 1
        b.refresh_models()
        assert b.server.models.current.version == 1  # the other replica follows the pin
        assert main(["model", "list", "--registry", str(registry_root), "--store-url", url]) == 0
        assert "pinned" in next(
            line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("1 ")
        )
        assert main(["model", "unpin", "--registry", str(registry_root), "--store-url", url]) == 0
        a.refresh_models(), b.refresh_models()
        assert a.server.models.current.version == b.server.models.current.version == 2
        trail = [e.action for e in open_store(url).fleet.audit()]
        assert "pin" in trail and "unpin" in trail
    assert sorted(p.name for p in (registry_root / "cad").iterdir()) == before  # nothing written
