"""Fault injection at the scale of one machine: three ``cad serve`` processes on one registry and
one real PostgreSQL, clients classifying (unary and streams), correcting and probing health all
along, while the database is stopped with ``pg_ctl stop -m immediate`` twice, one server is
killed with SIGKILL and started again, and a new model version is published.

    python -m bench.failover --out docs/bench/failover.json

prints and writes what happened: requests answered during each outage, errors by status, the
spool's peak per replica, how long each replica took to be ready again after each outage, how
long the replicas took to converge on the new version, and what was checked in the database
afterwards (acknowledged corrections and classification records, each exactly once).
``tests/system/test_failover.py`` runs the same scenario and asserts on its result.

The "trainer" here publishes a tiny model through the registry's publish (the path every round
publishes through), holding the trainer lease as a round does; a real round on this 2-core
machine would take minutes and prove nothing more about the serving tier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cad.labels.store import open_store
from cad.labels.store.leases import holder_name
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from support.helpers import dicom_bytes, publish_tiny
from support.launch import server_process
from support.pg import TempPostgres
from support.pgfailover import AutoFailoverCluster

log = logging.getLogger("bench.failover")
SERVING = health_pb2.HealthCheckResponse.SERVING
REPLICAS = 3


def request(n: int = 2) -> cad_pb2.ClassifyRequest:
    return cad_pb2.ClassifyRequest(
        dicom=dicom_bytes("CT_small.dcm"),
        window=cad_pb2.Window(center=40, width=400),
        candidates=[
            cad_pb2.Candidate(
                client_id=f"c{i}", box=cad_pb2.Box(x=10 + 25 * i, y=20, width=24, height=30)
            )
            for i in range(n)
        ],
    )


@dataclass
class Replica:
    index: int
    env: dict[str, str]
    spool: Path
    address: str = ""
    proc: subprocess.Popen[str] | None = None
    starts: int = 0


@dataclass
class Tally:
    """What the clients saw, by phase of the scenario (thread-safe)."""

    phase: str = "warm-up"
    answered: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    records: list[tuple[str, list[str]]] = field(default_factory=list)
    """Acknowledged classifications: (request_id, candidate ids)."""
    versions: dict[int, str] = field(default_factory=dict)
    """The model version each replica answered with last."""
    corrections: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Acknowledged corrections: idempotency key -> (candidate id, label)."""
    health: list[tuple[float, int, int]] = field(default_factory=list)
    """(monotonic time, replica, status of the whole server) samples."""
    spool_peak: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    replica_of: dict[str, int] = field(default_factory=dict)
    """Request id -> the replica that answered it."""
    writes: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, replica) of each acknowledged correction: a write to the primary."""
    latency: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Unary Classify seconds, by replica."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, replica: int, rpc: str, response: cad_pb2.ClassifyResponse) -> None:
        with self.lock:
            self.answered[self.phase] += 1
            self.answered[f"{rpc}:total"] += 1
            self.records.append((response.request_id, [r.candidate_id for r in response.results]))
            self.replica_of[response.request_id] = replica
            self.versions[replica] = response.model_version

    def error(self, rpc: str, code: grpc.StatusCode) -> None:
        with self.lock:
            self.errors[f"{self.phase}/{rpc}:{code.name}"] += 1


class Scenario:
    """``replicated``: the database is a pg_auto_failover formation (a monitor, a primary and a
    synchronous standby, ``support.pgfailover``) reached by a multi-host URI; its primary dies
    instead of a stopped server, the old primary rejoins as a standby, then a planned
    switchover. The third replica records classifications with ``CAD_RECORD_SYNC=background``
    so that what a crash costs that setting is measured beside the others' ``each``."""

    def __init__(
        self, work: Path, say: Callable[[str], None] = print, replicated: bool = False
    ) -> None:
        self.work = work
        self.say = say
        self.replicated = replicated
        self.cluster: AutoFailoverCluster | None = None
        self.pg: TempPostgres | None = None
        if replicated:
            self.cluster = AutoFailoverCluster().start()
            self.url = self.cluster.uri
        else:
            self.pg = TempPostgres().start()
            self.url = self.pg.new_database()
        self.registry = work / "registry"
        publish_tiny(self.registry, work / "build")
        self.stop = threading.Event()
        self.tally = Tally()
        self.replicas = [
            Replica(
                i,
                {
                    "CAD_STORE_URL": self.url,
                    "CAD_REGISTRY_ROOT": str(self.registry),
                    "CAD_ARCHIVE_ROOT": str(work / "archive"),  # shared, as the k8s volume is
                    "CAD_SPOOL_DIR": str(work / f"spool-{i}"),  # one per replica
                    "CAD_HOST": "127.0.0.1",
                    "CAD_POLL_INTERVAL_S": "0.5",
                    "CAD_STORE_PROBE_INTERVAL_S": "0.5",
                    "CAD_STORE_TIMEOUT_S": "1.0",
                    # every acknowledged record must be found after ("background": measured)
                    "CAD_RECORD_SYNC": "background" if replicated and i == 2 else "each",
                    "CAD_PROVIDERS": "cpu",
                    "CAD_INTRA_OP_THREADS": "1",
                    "CAD_WORKERS": "2",
                    "CAD_RETENTION_INTERVAL_S": "5",  # the pruners take turns by the lease
                },
                work / f"spool-{i}",
            )
            for i in range(REPLICAS)
        ]
        self.exits = contextlib.ExitStack()
        self.channels: dict[str, grpc.Channel] = {}
        self.channels_lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ processes

    def start(self, replica: Replica) -> None:
        proc, address = self.exits.enter_context(server_process(replica.env, timeout_s=120))
        replica.proc, replica.address = proc, address
        replica.starts += 1

    def channel(self, replica: Replica) -> grpc.Channel:
        """One channel per address, made once: the client threads ask at the same moment after
        a replica's restart, and a channel made twice is closed when the loser is collected
        (an RPC on it then fails with "closed channel", not with a status)."""
        with self.channels_lock:
            address = replica.address
            if address not in self.channels:
                self.channels[address] = grpc.insecure_channel(address)
            return self.channels[address]

    # ------------------------------------------------------------------ clients

    def _classify(self, replica: Replica) -> None:
        while not self.stop.is_set():
            try:
                stub = cad_pb2_grpc.CadInferenceStub(self.channel(replica))
                t0 = time.perf_counter()
                response = stub.Classify(request(), timeout=10)
                took = time.perf_counter() - t0
                self.tally.answer(replica.index, "Classify", response)
                with self.tally.lock:
                    self.tally.latency[replica.index].append(took)
            except grpc.RpcError as exc:
                self.tally.error("Classify", exc.code())
            self.stop.wait(0.05)  # pacing: about 15 frames a second per client

    def _stream(self, replica: Replica) -> None:
        def frames() -> Iterator[cad_pb2.ClassifyRequest]:
            while not self.stop.is_set():
                yield request(1)
                self.stop.wait(0.1)

        while not self.stop.is_set():
            try:
                stub = cad_pb2_grpc.CadInferenceStub(self.channel(replica))
                for response in stub.ClassifyStream(frames(), timeout=600):
                    self.tally.answer(replica.index, "ClassifyStream", response)
            except grpc.RpcError as exc:
                if not self.stop.is_set():
                    self.tally.error("ClassifyStream", exc.code())
                self.stop.wait(0.2)  # the replica is down: try again shortly

    def _correct(self) -> None:
        """Reviewers: confirm or dismiss classified candidates; an unacknowledged verdict is
        retried with the same idempotency key (on the next replica) until it is stored."""
        pending: list[tuple[str, str, int]] = []
        taken = 0
        turn = 0
        fetch = True
        while not self.stop.is_set() or pending:
            if (fetch or not pending) and not self.stop.is_set():
                fetch = False
                with self.tally.lock:
                    fresh = self.tally.records[taken : taken + 1]
                if fresh:
                    taken += 1
                    cid = fresh[0][1][0]
                    pending.append((f"k-{uuid.uuid4().hex}", cid, taken % 2))
            if not pending:
                self.stop.wait(0.1)
                continue
            key, cid, label = pending[0]
            replica = self.replicas[turn % REPLICAS]
            turn += 1
            try:
                receipt = cad_pb2_grpc.CadReviewStub(self.channel(replica)).SubmitCorrection(
                    cad_pb2.Correction(
                        candidate_id=cid,
                        verdict=cad_pb2.TRUE_POSITIVE if label else cad_pb2.FALSE_POSITIVE,
                        reviewer="dr.failover",
                        idempotency_key=key,
                    ),
                    timeout=10,
                )
                with self.tally.lock:
                    self.tally.corrections[key] = (receipt.candidate_id, label)
                    self.tally.answered["SubmitCorrection:total"] += 1
                    self.tally.writes.append((time.monotonic(), replica.index))
                pending.pop(0)
            except grpc.RpcError as exc:
                # UNAVAILABLE: the store or the replica is down; NOT_FOUND: the candidate's
                # record still waits in a replica's spool. Both: the same key again, later.
                self.tally.error("SubmitCorrection", exc.code())
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    # as a reviewer would, go on to the next item meanwhile: one record slow
                    # to leave a spool must not hold back every correction after it
                    pending.append(pending.pop(0))
                    fetch = True
                elif exc.code() != grpc.StatusCode.UNAVAILABLE:
                    pending.pop(0)
                if self.stop.wait(0.2) and time.monotonic() > self.give_up:
                    break
            self.stop.wait(0.15)

    def _watch(self) -> None:
        """Health of each replica's whole server (readiness) and the depth of its spool."""
        while not self.stop.is_set():
            for replica in self.replicas:
                try:
                    status = (
                        health_pb2_grpc.HealthStub(self.channel(replica))
                        .Check(health_pb2.HealthCheckRequest(), timeout=2)
                        .status
                    )
                except grpc.RpcError:
                    status = -1  # not answering (killed)
                depth = len(list(replica.spool.glob("*.record.json")))
                with self.tally.lock:
                    self.tally.health.append((time.monotonic(), replica.index, status))
                    self.tally.spool_peak[replica.index] = max(
                        self.tally.spool_peak[replica.index], depth
                    )
            self.stop.wait(0.1)

    # ------------------------------------------------------------------ the scenario

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 90) -> float:
        """Poll ``check`` until true; returns the seconds it took (RuntimeError after timeout)."""
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > timeout:
                with self.tally.lock:  # what the clients saw meanwhile, to read the cause by
                    seen = dict(self.tally.errors)
                    writes = len(self.tally.writes)
                    records = len(self.tally.records)
                raise RuntimeError(
                    f"timed out after {timeout:.0f} s waiting for {what} (errors by phase/call: "
                    f"{seen}; {writes} corrections and {records} records acknowledged)"
                )
            time.sleep(0.05)
        return time.monotonic() - t0

    def ready_since(self, replica: int, since: float) -> float | None:
        with self.tally.lock:
            for t, index, status in self.tally.health:
                if index == replica and t >= since and status == SERVING:
                    return t
        return None

    def saw_not_ready(self, replica: int, start: float, end: float) -> bool:
        with self.tally.lock:
            return any(
                index == replica and start <= t <= end and status != SERVING
                for t, index, status in self.tally.health
            )

    def outage(self, name: str, seconds: float) -> dict[str, Any]:
        self.say(f"{name}: pg_ctl stop -m immediate for {seconds:.0f} s")
        with self.tally.lock:
            self.tally.phase = name
            before = (
                self.tally.answered["Classify:total"] + self.tally.answered["ClassifyStream:total"]
            )
        down = time.monotonic()
        assert self.pg is not None
        self.pg.crash()
        self.wait_until(
            f"every replica to say NOT_SERVING in {name}",
            lambda: all(self.saw_not_ready(r.index, down, time.monotonic()) for r in self.replicas),
        )
        self.stop.wait(max(0.0, seconds - (time.monotonic() - down)))
        with self.tally.lock:
            answered = self.tally.answered[name]
            self.tally.phase = f"after {name}"
        self.pg.restart()
        back = time.monotonic()
        self.wait_until(
            f"every replica ready after {name}",
            lambda: all(self.ready_since(r.index, back) is not None for r in self.replicas),
        )
        recover = [round(self.ready_since(r.index, back) - back, 2) for r in self.replicas]  # type: ignore[operator]
        self.say(f"  answered during it: {answered}; ready again after {recover} s")
        return {
            "seconds_down": round(back - down, 1),
            "classifications_answered_during": answered,
            "classifications_before": before,
            "not_serving_seen": [self.saw_not_ready(r.index, down, back) for r in self.replicas],
            "recover_s": recover,
        }

    def first_writes(self, since: float) -> dict[int, float]:
        """Seconds from ``since`` to each replica's first acknowledged correction after it."""
        first: dict[int, float] = {}
        with self.tally.lock:
            for t, index in self.tally.writes:
                if t >= since and index not in first:
                    first[index] = round(t - since, 2)
        return first

    def failover(self, name: str) -> dict[str, Any]:
        """The primary's host dies (its keeper and postmaster, SIGKILL); the monitor promotes
        the standby; the replicas find it through the multi-host URI by themselves. A trainer
        holding its lease (an advisory lock on the old primary) is checked across it."""
        assert self.cluster is not None
        (primary,) = self.cluster.primaries()
        trainer_a = open_store(self.url)
        trainer_b = open_store(self.url)
        lease_a = trainer_a.lease("trainer", holder_name("trainer A")).acquire()
        self.say(f"{name}: kill -9 the primary {primary} (keeper and postmaster)")
        with self.tally.lock:
            self.tally.phase = name
        down = time.monotonic()
        self.cluster.kill(primary)
        promoted_after = self.cluster.wait(
            "the standby's promotion",
            lambda: bool(self.cluster and self.cluster.primaries() not in ([], [primary])),
        )
        promoted = time.monotonic()
        (new_primary,) = self.cluster.primaries()
        self.wait_until(
            f"every replica ready after {name}",
            lambda: all(self.ready_since(r.index, promoted) is not None for r in self.replicas),
        )
        ready = [round(self.ready_since(r.index, promoted) - promoted, 2) for r in self.replicas]  # type: ignore[operator]
        self.wait_until(
            f"a correction through every replica after {name}",
            lambda: len(self.first_writes(promoted)) == REPLICAS,
            timeout=180,
        )
        # the lease: the old primary took trainer A's lock with it; whoever takes it on the new
        # primary holds it alone, and A learns so at its next check, before more work
        lease = {"b_took_it": False, "a_told": ""}
        lease_b = trainer_b.lease("trainer", holder_name("trainer B"))
        try:
            lease_b.acquire()
            lease["b_took_it"] = True
            lease_a.ensure()
            lease["a_told"] = "still held (a second holder)"
        except Exception as exc:  # noqa: BLE001  LeaseHeld is what A must be told
            lease["a_told"] = type(exc).__name__
        finally:
            # a lease holds its lock on a connection of its own, not the store's: release both
            # (B's was left to the garbage collector, and a later lease was refused by it)
            lease_a.release()
            lease_b.release()
            trainer_a.close()
            trainer_b.close()
        with self.tally.lock:
            self.tally.phase = f"after {name}"
        first = self.first_writes(down)
        self.say(
            f"  {new_primary} promoted {promoted_after:.1f} s after the kill; first write "
            f"{min(first.values())} s after it; replicas ready {ready} s after promotion"
        )
        return {
            "old_primary": primary,
            "new_primary": new_primary,
            "promoted_after_kill_s": round(promoted_after, 1),
            "first_write_after_kill_s": min(first.values()),
            "replicas_ready_after_promotion_s": ready,
            "replicas_first_write_after_promotion_s": [
                self.first_writes(promoted)[r.index] for r in self.replicas
            ],
            "lease": lease,
        }

    def rejoin_and_switch(self, old: str) -> dict[str, Any]:
        """The old primary's host comes back: it rejoins as a standby; then a planned
        switchover hands the primary back to it."""
        assert self.cluster is not None
        self.cluster.rejoin(old)
        rejoined = self.cluster.wait(
            f"{old} to rejoin as a standby (and the primary to have it)",
            lambda: bool(
                self.cluster
                and sorted(self.cluster.states().values()) == ["primary", "secondary"]
                and self.cluster.states().get(old) == "secondary"
            ),
        )
        with self.tally.lock:
            self.tally.phase = "switchover"
        began = time.monotonic()
        self.cluster.switchover()
        switched = time.monotonic()
        self.wait_until(
            "a correction through every replica after the switchover",
            lambda: len(self.first_writes(switched)) == REPLICAS,
            timeout=180,  # the one reviewer goes round the replicas; a loaded machine is slow
        )
        with self.tally.lock:
            self.tally.phase = "after switchover"
        self.say(f"  {old} rejoined after {rejoined:.1f} s; switchover {switched - began:.1f} s")
        return {
            "rejoined_as_standby_s": round(rejoined, 1),
            "switchover_s": round(switched - began, 1),
            "primary_after": self.cluster.primaries(),
            "replicas_first_write_after_switchover_s": [
                self.first_writes(switched)[r.index] for r in self.replicas
            ],
        }

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        for replica in self.replicas:
            self.start(replica)
        self.say(f"{REPLICAS} replicas serving on {[r.address for r in self.replicas]}")
        self.give_up = float("inf")
        for replica in self.replicas:
            self.threads += [
                threading.Thread(target=self._classify, args=(replica,), daemon=True),
                threading.Thread(target=self._stream, args=(replica,), daemon=True),
            ]
        self.threads += [
            threading.Thread(target=self._correct, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for thread in self.threads:
            thread.start()
        self.wait_until("the first corrections", lambda: len(self.tally.corrections) >= 3)
        result: dict[str, Any] = {"outages": {}, "database": "single"}
        if self.replicated:
            result["database"] = "pg_auto_failover: a monitor, a primary and a synchronous standby"
            result["failover"] = self.failover("failover")
        else:
            result["outages"]["outage-1"] = self.outage("outage-1", 6)

        victim = self.replicas[REPLICAS - 1]
        self.say(f"SIGKILL replica {victim.index} (pid {victim.proc.pid})")  # type: ignore[union-attr]
        with self.tally.lock:
            self.tally.phase = "kill"
        victim.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        victim.proc.wait(timeout=30)  # type: ignore[union-attr]
        t0 = time.monotonic()
        self.start(victim)
        result["restart_s"] = round(time.monotonic() - t0, 2)

        store = open_store(self.url)
        try:
            with store.lease("trainer", holder_name("bench.failover publisher")):
                published = publish_tiny(self.registry, self.work / "build")
        finally:
            store.close()
        t0 = time.monotonic()
        with self.tally.lock:
            self.tally.phase = "publish"
            self.tally.versions.clear()
        version = str(published.version)
        result["converge_s"] = round(
            self.wait_until(
                f"every replica to serve version {version}",
                lambda: all(self.tally.versions.get(r.index) == version for r in self.replicas),
            ),
            2,
        )
        self.say(
            f"version {version} published; every replica served it after {result['converge_s']} s"
        )
        if self.replicated:
            result["rejoin"] = self.rejoin_and_switch(result["failover"]["old_primary"])
        else:
            result["outages"]["outage-2"] = self.outage("outage-2", 6)

        self.wait_until(
            "every spool to be written to the store",
            lambda: all(not list(r.spool.glob("*.record.json")) for r in self.replicas),
        )
        self.give_up = time.monotonic() + 60
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)
        result.update(self.check())
        result["duration_s"] = round(time.monotonic() - began, 1)
        result["starts"] = [r.starts for r in self.replicas]
        result["still_running"] = [
            r.proc is not None and r.proc.poll() is None for r in self.replicas
        ]
        return result

    def check(self) -> dict[str, Any]:
        """What the database holds against what the clients were told."""
        t = self.tally
        store = open_store(self.url)
        try:
            by_key = {e.idempotency_key: e for e in store.labels.events()}
            lost = [
                key
                for key, (cid, label) in t.corrections.items()
                if key not in by_key
                or by_key[key].candidate_id != cid
                or by_key[key].label_after != label
            ]
            missing = []
            for request_id, candidate_ids in t.records:
                try:
                    stored = [c.candidate.candidate_id for c in store.candidates_of(request_id)]
                except Exception:  # noqa: BLE001  whatever the call raised is what the scenario records
                    stored = []
                if sorted(stored) != sorted(candidate_ids):
                    missing.append(request_id)
            by_replica = Counter(t.replica_of[r] for r in missing)
            answered = Counter(t.replica_of[r] for r, _ in t.records)
            images = store._query("SELECT COUNT(*) FROM images")[0][0]
        finally:
            store.close()
        return {
            "classifications_answered": t.answered["Classify:total"]
            + t.answered["ClassifyStream:total"],
            "corrections_acknowledged": len(t.corrections),
            "corrections_lost": len(lost),
            "records_acknowledged": len(t.records),
            "records_missing": len(missing),
            "records_missing_by_replica": [by_replica[r.index] for r in self.replicas],
            "records_by_replica": [answered[r.index] for r in self.replicas],
            "record_sync_by_replica": [r.env["CAD_RECORD_SYNC"] for r in self.replicas],
            "classify_p50_p95_ms_by_replica": [
                [round(1000 * q, 1) for q in percentiles(t.latency[r.index])] for r in self.replicas
            ],
            "images_in_store": int(images),
            "errors": dict(sorted(t.errors.items())),
            "internal_errors": sum(n for k, n in t.errors.items() if k.endswith(":INTERNAL")),
            "spool_peak": [t.spool_peak[r.index] for r in self.replicas],
        }

    def close(self) -> None:
        self.stop.set()
        for channel in self.channels.values():
            channel.close()
        self.exits.close()
        if self.pg is not None:
            self.pg.stop()
        if self.cluster is not None:
            self.cluster.stop()


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def run(work: Path, say: Callable[[str], None] = print, replicated: bool = False) -> dict[str, Any]:
    scenario = Scenario(work, say, replicated)
    try:
        return scenario.run()
    finally:
        scenario.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument(
        "--replicated",
        action="store_true",
        help="a pg_auto_failover formation whose primary dies, rejoins, and switches over",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        result = run(Path(tmp), replicated=args.replicated)
    result["machine"] = f"{os.cpu_count()} CPUs"
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
