"""ONNX Runtime tuning options: graph optimisation levels, the optimised-graph cache, I/O binding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model import SessionOptions, load_model
from service.registry import ModelRegistry
from tests.helpers import publish_tiny


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
            model = load_model(info, SessionOptions(graph_optimization=level, io_binding=binding,
                                                    spinning=False))
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
    assert info.manifest["sha256"][:32] in files[0].name and not list(cache.glob("*.tmp"))
    second = load_model(info, options)
    assert second.optimized_from_cache
    np.testing.assert_allclose(second.run(batch()), first.run(batch()), rtol=1e-6)
    files[0].write_bytes(b"not a model")  # a damaged cache entry is rebuilt, not fatal
    third = load_model(info, options)
    assert not third.optimized_from_cache and files[0].stat().st_size > 100
    np.testing.assert_allclose(third.run(batch()), first.run(batch()), rtol=1e-6)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="graph optimisation"):
        SessionOptions(graph_optimization="max")
    with pytest.raises(ValueError, match="io_binding"):
        SessionOptions(io_binding="sometimes")
