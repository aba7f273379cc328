"""The dynamic batcher on real ONNX Runtime sessions, and through a real gRPC server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cad.errors import DeadlineExceeded, LimitExceeded
from cad.metrics import ServiceMetrics
from cad.models.batcher import BatchingConfig, DynamicBatcher
from cad.models.model import LoadedModel, load_model
from cad.models.providers import SessionOptions
from cad.models.registry import ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import block_model_runs, make_settings, publish_tiny


class Recorder:
    """Wraps ``model.run`` to record the batch sizes it is called with."""

    def __init__(self, model: LoadedModel) -> None:
        self.sizes: list[int] = []
        original = model.run

        def run(batch: np.ndarray) -> np.ndarray:
            self.sizes.append(len(batch))
            return original(batch)

        model.run = run  # type: ignore[method-assign]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def models(tmp_path: Path) -> tuple[LoadedModel, LoadedModel]:
    root = tmp_path / "registry"
    publish_tiny(root, tmp_path / "build")
    publish_tiny(root, tmp_path / "build", weights=np.array([[-0.05, 0.05]] * 3, dtype=np.float32))
    registry = ModelRegistry(root, "cad")
    return load_model(registry.get(1), SessionOptions()), load_model(
        registry.get(2), SessionOptions()
    )


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def patches(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, 32, 32)).astype(np.float32)


def make(
    config: BatchingConfig, clock: FakeClock | None = None
) -> tuple[DynamicBatcher, ServiceMetrics]:
    metrics = ServiceMetrics(CollectorRegistry())
    return DynamicBatcher(config, metrics, clock) if clock else DynamicBatcher(
        config, metrics
    ), metrics


def wait_queued(batcher: DynamicBatcher, n: int) -> None:
    with batcher._cond:  # the batcher's own condition: woken on every enqueue
        assert batcher._cond.wait_for(lambda: len(batcher._queue) >= n, timeout=30)


def test_concurrent_requests_share_one_model_run(models, pool) -> None:
    model, _ = models
    batcher, metrics = make(BatchingConfig(preferred_batch=24, max_batch=64, max_queue_delay_s=30))
    entered, release = block_model_runs(model)
    first = pool.submit(batcher.predict, model, patches(24, 0))
    assert entered.wait(30)  # the first request runs alone and holds the model
    sizes = Recorder(model)
    inputs = [patches(8, s) for s in (1, 2, 3)]
    waiting = [pool.submit(batcher.predict, model, x) for x in inputs]
    wait_queued(batcher, 3)
    release.set()
    for fut, x in zip(waiting, inputs, strict=True):
        np.testing.assert_allclose(fut.result(30), model.run(x), rtol=1e-6)
    assert first.result(30).shape == (24, 2)
    # 8 + 8 + 8 = 24 patches (the preferred batch) ran as ONE batch, not three; then the checks above.
    assert sizes.sizes[0] == 24
    assert metrics.registry.get_sample_value("cad_batch_queue_duration_seconds_count") == 4
    batcher.close()


def test_a_large_request_is_split_into_max_batch_runs(models) -> None:
    model, _ = models
    batcher, metrics = make(BatchingConfig(preferred_batch=16, max_batch=32, max_queue_delay_s=0))
    sizes = Recorder(model)
    x = patches(100, 7)
    out = batcher.predict(model, x)
    assert sizes.sizes == [32, 32, 32, 4]
    sizes.sizes.clear()
    np.testing.assert_allclose(out, model.run(x), rtol=1e-6)
    assert metrics.registry.get_sample_value("cad_model_batch_patches_sum") == 100
    batcher.close()


def test_batches_of_several_requests_are_assembled_in_the_runners_own_padded_array(
    models, pool
) -> None:
    model, _ = models
    bucketed = load_model(model.info, SessionOptions(batch_buckets="on", max_batch=64))
    reference = load_model(model.info, SessionOptions())
    for m in (model, bucketed):
        batcher, _ = make(BatchingConfig(preferred_batch=24, max_batch=64, max_queue_delay_s=30))
        seen: list[
            tuple[int, np.ndarray, bool]
        ] = []  # (rows, the array, rows after the 30th all zero)
        original = m.run

        def run(batch: np.ndarray, original=original, seen=seen) -> np.ndarray:
            seen.append((len(batch), batch, not batch[30:].any()))  # kept alive: memory not reused
            return original(batch)

        for round_ in range(2):
            m.run = run  # type: ignore[method-assign]
            entered, release = block_model_runs(m)
            first = pool.submit(batcher.predict, m, patches(24, 100 + round_))
            assert entered.wait(30)  # holds the model while three requests queue up
            inputs = [patches(10, 10 * round_ + s) for s in (1, 2, 3)]
            waiting = [pool.submit(batcher.predict, m, x) for x in inputs]
            wait_queued(batcher, 3)
            release.set()
            for fut, x in zip(waiting, inputs, strict=True):
                np.testing.assert_allclose(fut.result(30), reference.run(x), rtol=1e-5, atol=1e-7)
            assert first.result(30).shape == (24, 2)
        batcher.close()
        # Runs: the first request, then the three together (30 patches), twice over. Without
        # buckets the three are copied into the runner's array, the same array both times; with
        # buckets every run is padded to 32 with zero rows in that array.
        assert [rows for rows, _, _ in seen] == ([24, 30, 24, 30] if m is model else [32] * 4)
        assert np.shares_memory(seen[1][1], seen[3][1]) and all(zero for _, _, zero in seen)
        if m is bucketed:
            assert all(np.shares_memory(seen[0][1], batch) for _, batch, _ in seen)


def test_a_full_queue_is_refused_at_once(models, pool) -> None:
    model, _ = models
    batcher, metrics = make(BatchingConfig(preferred_batch=1, max_batch=8, max_queue_requests=2))
    entered, release = block_model_runs(model)
    running = pool.submit(batcher.predict, model, patches(4, 0))
    assert entered.wait(30)
    queued = [pool.submit(batcher.predict, model, patches(4, s)) for s in (1, 2)]
    wait_queued(batcher, 2)
    with pytest.raises(LimitExceeded, match="queue is full"):
        batcher.predict(model, patches(4, 3))  # answered now, not after the blocked run
    assert (
        metrics.registry.get_sample_value("cad_batch_refused_total", {"reason": "queue_full"}) == 1
    )
    release.set()
    assert running.result(30).shape == (4, 2) and all(f.result(30).shape == (4, 2) for f in queued)
    batcher.close()


def test_a_request_whose_deadline_passes_in_the_queue_never_runs(models, pool) -> None:
    model, _ = models
    clock = FakeClock()
    batcher, metrics = make(
        BatchingConfig(preferred_batch=1, max_batch=8, max_queue_delay_s=0), clock
    )
    entered, release = block_model_runs(model)
    running = pool.submit(batcher.predict, model, patches(4, 0))
    assert entered.wait(30)
    late: Future[np.ndarray] = pool.submit(batcher.predict, model, patches(4, 1), clock.now + 5.0)
    on_time = pool.submit(batcher.predict, model, patches(4, 2), clock.now + 60.0)
    wait_queued(batcher, 2)
    sizes = Recorder(model)
    clock.now += 10.0  # the first deadline passes while both wait behind the blocked run
    release.set()
    with pytest.raises(DeadlineExceeded, match="did not run"):
        late.result(30)
    assert on_time.result(30).shape == (4, 2) and running.result(30).shape == (4, 2)
    assert sizes.sizes == [4]  # only the request still in time reached the model
    assert metrics.registry.get_sample_value("cad_batch_refused_total", {"reason": "deadline"}) == 1
    with pytest.raises(DeadlineExceeded):  # already late on arrival: refused before queueing
        batcher.predict(model, patches(2, 3), clock.now - 1)
    batcher.close()


def test_requests_on_different_versions_never_share_a_run(models, pool) -> None:
    old, new = models
    batcher, _ = make(BatchingConfig(preferred_batch=64, max_batch=64, max_queue_delay_s=0))
    entered, release = block_model_runs(old)
    blocker = pool.submit(batcher.predict, old, patches(64, 0))  # a full batch: runs at once
    assert entered.wait(30)
    x_old, x_new = patches(6, 1), patches(6, 2)
    f_new = pool.submit(batcher.predict, new, x_new)
    wait_queued(batcher, 1)
    f_old = pool.submit(batcher.predict, old, x_old)
    wait_queued(batcher, 2)
    sizes_old, sizes_new = Recorder(old), Recorder(new)
    release.set()
    got_new, got_old = f_new.result(30), f_old.result(30)
    assert sizes_new.sizes == [6] and sizes_old.sizes == [6]  # two runs of 6, not one of 12
    np.testing.assert_allclose(got_new, new.run(x_new), rtol=1e-6)
    np.testing.assert_allclose(got_old, old.run(x_old), rtol=1e-6)
    assert not np.allclose(new.run(x_old), old.run(x_old))  # the versions differ
    assert blocker.result(30).shape == (64, 2)
    batcher.close()


def test_a_failing_run_fails_its_callers_and_the_batcher_goes_on(models) -> None:
    model, _ = models
    batcher, _ = make(BatchingConfig(preferred_batch=1, max_batch=8, max_queue_delay_s=0))
    original = model.run
    model.run = lambda batch: (_ for _ in ()).throw(RuntimeError("device lost"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.predict(model, patches(3, 0))
    model.run = original  # type: ignore[method-assign]
    assert batcher.predict(model, patches(3, 0)).shape == (3, 2)
    batcher.close()


def test_grpc_deadline_passed_in_the_queue_is_not_run(registry_root: Path) -> None:
    settings = make_settings(registry_root, batch_size=1, batch_max_size=64)
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        stub = cad_pb2_grpc.CadInferenceStub(ch)
        model = server.server.models.current
        frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        raw = cad_pb2.RawImage(
            height=64,
            width=64,
            channels=3,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=frame.tobytes(),
        )

        def request(cid: str) -> cad_pb2.ClassifyRequest:
            return cad_pb2.ClassifyRequest(
                raw=raw,
                recipe="single",
                candidates=[
                    cad_pb2.Candidate(client_id=cid, box=cad_pb2.Box(x=4, y=4, width=20, height=20))
                ],
            )

        entered, release = block_model_runs(model)
        first = stub.Classify.future(request("first"), timeout=60)
        assert entered.wait(30)
        late = stub.Classify.future(request("late"), timeout=0.5)
        with pytest.raises(grpc.RpcError) as err:
            late.result()  # the client gives up at its deadline while the request waits
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        assert first.result().results[0].client_id == "first"
        # A request after it in the queue: when it is answered, the late one has been dropped.
        assert stub.Classify(request("after"), timeout=60).results[0].client_id == "after"
        metrics = server.server.metrics.registry
        assert metrics.get_sample_value("cad_batch_refused_total", {"reason": "deadline"}) == 1
        assert metrics.get_sample_value("cad_model_batch_patches_sum") == 2  # first + after only
        assert metrics.get_sample_value("cad_batch_queue_duration_seconds_count") == 2


def test_concurrent_grpc_clients_are_batched(registry_root: Path) -> None:
    settings = make_settings(
        registry_root, batch_size=48, batch_max_size=64, batch_max_queue_delay_ms=60_000, workers=4
    )
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        stub = cad_pb2_grpc.CadInferenceStub(ch)
        frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        raw = cad_pb2.RawImage(
            height=64,
            width=64,
            channels=3,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=frame.tobytes(),
        )
        req = cad_pb2.ClassifyRequest(
            raw=raw,
            candidates=[  # polyp recipe: 24 patches per candidate
                cad_pb2.Candidate(client_id="a", box=cad_pb2.Box(x=4, y=4, width=20, height=20))
            ],
        )
        # Two requests of 24 patches: neither fills the preferred 48 alone, and the queue delay is a
        # minute, so they can only be answered by running together.
        calls = [stub.Classify.future(req, timeout=60) for _ in range(2)]
        probs = {c.result().results[0].probability for c in calls}
        assert len(probs) == 1
        metrics = server.server.metrics.registry
        assert metrics.get_sample_value("cad_model_batch_patches_count") == 1
        assert metrics.get_sample_value("cad_model_batch_patches_sum") == 48


def test_concurrent_grpc_requests_each_get_their_own_answers(registry_root: Path) -> None:
    # Each worker thread cuts its patches into one array it reuses request after request, and
    # runners copy several requests into theirs: no request may ever see another's patches.
    settings = make_settings(
        registry_root, batch_size=32, batch_max_size=64, batch_max_queue_delay_ms=5, workers=4
    )
    rng = np.random.default_rng(5)
    requests = []
    for i in range(12):
        frame = rng.integers(0, 256, (48 + 4 * i, 64, 3), dtype=np.uint8)
        raw = cad_pb2.RawImage(
            height=frame.shape[0],
            width=64,
            channels=3,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=frame.tobytes(),
        )
        requests.append(
            cad_pb2.ClassifyRequest(
                raw=raw,
                recipe="polyp:8",
                candidates=[
                    cad_pb2.Candidate(
                        client_id=str(k),
                        box=cad_pb2.Box(x=4 + 9 * k, y=6 + 5 * k, width=20, height=16),
                    )
                    for k in range(1 + i % 3)
                ],
            )
        )
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        stub = cad_pb2_grpc.CadInferenceStub(ch)
        alone = [
            [r.probability for r in stub.Classify(req, timeout=60).results] for req in requests
        ]
        assert len({p for probs in alone for p in probs}) > 12  # distinct answers to tell apart
        for _ in range(3):
            calls = [stub.Classify.future(req, timeout=60) for req in requests]
            for call, expected in zip(calls, alone, strict=True):
                np.testing.assert_allclose(
                    [r.probability for r in call.result().results], expected, rtol=1e-5
                )
        batches = server.server.metrics.registry.get_sample_value("cad_model_batch_patches_count")
        assert batches < 12 * 4  # concurrent requests did share model runs


def test_batching_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="preferred batch"):
        BatchingConfig(preferred_batch=65, max_batch=64)
    with pytest.raises(ValueError):
        BatchingConfig(max_queue_requests=0)


def test_threads_waiting_on_a_closed_batcher_are_released(models, pool) -> None:
    model, _ = models
    batcher, _ = make(BatchingConfig(preferred_batch=1, max_batch=8))
    entered, release = block_model_runs(model)
    running = pool.submit(batcher.predict, model, patches(2, 0))
    assert entered.wait(30)
    queued = pool.submit(batcher.predict, model, patches(2, 1))
    wait_queued(batcher, 1)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    with pytest.raises(Exception, match="shutting down"):
        queued.result(30)
    release.set()
    closer.join(30)
    assert running.result(30).shape == (2, 2)
