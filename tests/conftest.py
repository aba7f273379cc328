"""Fixtures: a real in-process gRPC server on free ports over a real registry on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.api.cad.v1 import cad_pb2_grpc
from service.server import ServerThread
from service.settings import ServerSettings
from tests.helpers import publish_tiny


def make_settings(root: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "registry_root": root,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "providers": "auto",
        "poll_interval_s": 3600.0,  # tests refresh explicitly; no timing dependence
        "grace_s": 1.0,
        "store_url": f"sqlite:///{root}-labels.sqlite3",
        "archive_root": Path(f"{root}-archive"),
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


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
