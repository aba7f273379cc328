"""Fixtures: a real in-process gRPC server on free ports over a real registry on disk."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from service.api.cad.v1 import cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from support.pg import TempPostgres

CI_FUZZ_EXAMPLES = 300
"""Examples per fuzz test in CI (9 tests: 2,700 examples, about a minute)."""
LONG_FUZZ_EXAMPLES = 2000


# Fuzz profiles (tests/integration/test_fuzz.py). "ci", the default, is derandomised and keeps no example
# database, so every CI run sends the same examples; "long" is for a run by hand:
#   .venv/bin/python -m pytest -m fuzz --hypothesis-profile=long
_FUZZ = {
    "deadline": None,  # the property has its own deadline: each call's gRPC timeout
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
hypothesis_settings.register_profile(
    "ci", max_examples=CI_FUZZ_EXAMPLES, derandomize=True, database=None, **_FUZZ
)
hypothesis_settings.register_profile("long", max_examples=LONG_FUZZ_EXAMPLES, **_FUZZ)
hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A real PostgreSQL server for the session; CI installs it (skip elsewhere if absent)."""
    try:
        server = TempPostgres().start()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}: .ci/run installs the Debian package postgresql")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests against both label store backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()


@contextmanager
def limited_server(tmp: Path, **overrides: object) -> Iterator[ServerThread]:
    """A real server over a tiny model in ``tmp``, with small limits (a module's own, for the
    malformed-input and fuzz tests: one server for many requests)."""
    publish_tiny(tmp / "registry", tmp / "build")
    limits: dict[str, object] = {"max_image_pixels": 1_000_000, "max_candidates": 16}
    with ServerThread(make_settings(tmp / "registry", **{**limits, **overrides})) as server:
        server.refresh_models()
        yield server
    shutil.rmtree(tmp, ignore_errors=True)


class Stubs:
    """The three service stubs over one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.inference = cad_pb2_grpc.CadInferenceStub(channel)
        self.review = cad_pb2_grpc.CadReviewStub(channel)
        self.admin = cad_pb2_grpc.ModelAdminStub(channel)


@pytest.fixture(scope="module")
def stubs(served: ServerThread) -> Iterator[Stubs]:
    """Stubs to the module's own ``served`` server (a module fixture of the modules using it)."""
    with grpc.insecure_channel(served.address) as channel:
        yield Stubs(channel)


@pytest.fixture(scope="module")
def inference(stubs: Stubs) -> cad_pb2_grpc.CadInferenceStub:
    return stubs.inference


@pytest.fixture(scope="module")
def review(stubs: Stubs) -> cad_pb2_grpc.CadReviewStub:
    return stubs.review


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    publish_tiny(root, tmp_path / "build")
    return root


@pytest.fixture
def server(registry_root: Path) -> Iterator[ServerThread]:
    with ServerThread(make_settings(registry_root)) as running:
        running.refresh_models()
        yield running


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> cad_pb2_grpc.CadInferenceStub:
    return cad_pb2_grpc.CadInferenceStub(channel)
