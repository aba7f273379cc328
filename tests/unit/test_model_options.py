"""ONNX Runtime tuning options: graph optimisation levels, the optimised-graph cache, I/O binding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cad.models.batcher import SerialBatcher
from cad.models.model import load_model
from cad.models.providers import SessionOptions, batch_buckets
from cad.models.registry import ModelRegistry
from support.helpers import publish_tiny


@pytest.fixture
def info(tmp_path: Path):
    publish_tiny(tmp_path / "registry", tmp_path / "build")
    return ModelRegistry(tmp_path / "registry", "cad").get(1)


def batch(n: int = 5) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 255, (n, 3, 32, 32)).astype(np.float32)


def test_every_level_and_io_binding_give_the_same_probabilities(info) -> None:
    reference = load_model(info, SessionOptions(graph_optimization="disable")).run(batch())
    for level in ("basic", "extended", "all"):
        for binding in ("on", "off"):
            model = load_model(
                info, SessionOptions(graph_optimization=level, io_binding=binding, spinning=False)
            )
            assert model.io_binding == (binding == "on")
            np.testing.assert_allclose(model.run(batch()), reference, rtol=1e-5, atol=1e-7)


def test_auto_io_binding_is_off_on_cpu(info) -> None:
    assert not load_model(info, SessionOptions(io_binding="auto")).io_binding


def test_optimized_graph_is_cached_and_reused(info, tmp_path: Path) -> None:
    cache = tmp_path / "ort-cache"
    options = SessionOptions(optimized_cache=cache)
    first = load_model(info, options)
    files = list(cache.glob("*.onnx"))
    assert not first.optimized_from_cache and len(files) == 1
    assert info.manifest.sha256[:32] in files[0].name and not list(cache.glob("*.tmp"))
    second = load_model(info, options)
    assert second.optimized_from_cache
    np.testing.assert_allclose(second.run(batch()), first.run(batch()), rtol=1e-6)
    files[0].write_bytes(b"not a model")  # a damaged cache entry is rebuilt, not fatal
    third = load_model(info, options)
    assert not third.optimized_from_cache and files[0].stat().st_size > 100
    np.testing.assert_allclose(third.run(batch()), first.run(batch()), rtol=1e-6)


def test_bucket_sizes_are_powers_of_two_up_to_the_max_batch() -> None:
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(1) == (1,)


class ShapeSpy:
    """Wraps a session and records the batch size of every run."""

    def __init__(self, session) -> None:
        self.session, self.sizes = session, []

    def run(self, names, feeds):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_buckets_pad_batches_without_changing_any_probability(info) -> None:
    plain = load_model(info, SessionOptions(batch_buckets="off"))
    padded = load_model(info, SessionOptions(batch_buckets="on", max_batch=8))
    assert plain.buckets == () and padded.buckets == (1, 2, 4, 8)
    spy = padded.session = ShapeSpy(padded.session)
    x = batch(11)
    serial = SerialBatcher(16)  # the batchers pad; the model runs what it is given
    for n in range(1, 12):
        out = serial.predict(padded, x[:n])
        assert out.shape == (n, 2)
        np.testing.assert_allclose(out, plain.run(x[:n]), rtol=1e-5, atol=1e-7)
    # 3 -> 4, 5..7 -> 8, 8 as is, and a batch over the largest bucket runs at its own size
    assert spy.sizes == [1, 2, 4, 4, 8, 8, 8, 8, 9, 10, 11]
    spy.sizes.clear()
    assert padded.run(x[:3]).shape == (3, 2) and spy.sizes == [3]


def test_auto_buckets_are_off_on_cpu_and_every_bucket_is_warmed_at_load(info, monkeypatch) -> None:
    assert load_model(info, SessionOptions()).buckets == ()
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession.run

    def run(self, names, feeds, *args, **kwargs):
        seen.append(len(next(iter(feeds.values()))))
        return real(self, names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    load_model(info, SessionOptions(batch_buckets="on", max_batch=16))
    assert seen == [2, 1, 2, 4, 8, 16]  # the checked warm-up, then each shape once


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="graph optimisation"):
        SessionOptions(graph_optimization="max")
    with pytest.raises(ValueError, match="io_binding"):
        SessionOptions(io_binding="sometimes")
    with pytest.raises(ValueError, match="batch_buckets"):
        SessionOptions(batch_buckets="maybe")
    with pytest.raises(ValueError, match="max_batch"):
        SessionOptions(max_batch=0)


def test_the_cpu_memory_arena_setting_reaches_the_session(info) -> None:
    from cad.models.providers import ort_session_options
    from service.settings import ServerSettings

    assert ort_session_options(SessionOptions(), "all").enable_cpu_mem_arena is True
    assert (
        ort_session_options(SessionOptions(cpu_mem_arena=False), "all").enable_cpu_mem_arena
        is False
    )
    assert ServerSettings(cpu_mem_arena="false").cpu_mem_arena is False  # CAD_CPU_MEM_ARENA
    # Without the arena the probabilities are the same.
    with_arena = load_model(info, SessionOptions()).run(batch())
    without = load_model(info, SessionOptions(cpu_mem_arena=False)).run(batch())
    np.testing.assert_allclose(without, with_arena, rtol=1e-5, atol=1e-7)
