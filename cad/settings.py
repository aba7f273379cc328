"""Settings: the groups several processes share (registry, store, client of the CAD server)
and the one way flags become settings. Each process reads its class
once in ``main`` from ``CAD_*`` environment variables (its own prefix where it has one)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def from_flags(
    cls: type[S],
    args: argparse.Namespace,
    flags: Mapping[str, str] | Iterable[str],
    **given: Any,
) -> S:
    """Settings of ``cls`` from the environment, with the command line on top: the one way
    every process of the product turns its flags into settings.

    ``flags`` names the argparse destinations that override a setting, as a mapping from
    destination to setting name where they differ (an iterable: the same names). A flag
    overrides only when given: None (not on the command line), False (a ``store_true`` flag
    left off) and "" are skipped; 0 counts. ``given``: further settings, None skipped.
    """
    renames = flags if isinstance(flags, Mapping) else {name: name for name in flags}
    overrides = {k: v for k, v in given.items() if v is not None}
    for dest, setting in renames.items():
        value = getattr(args, dest, None)
        if value is None or value is False or value == "":
            continue
        overrides[setting] = value
    return cls(**overrides)


class RegistrySettings(BaseSettings):
    """Where published models are: every process that serves, trains or pins one."""

    registry_root: Path = Field(Path("registry"), description="Model registry root folder.")
    model_name: str = Field("cad", description="Model name, a folder under the registry.")


class StoreSettings(BaseSettings):
    """The label store and the image archive beside it: the server writes them, the trainer
    reads them; both must name the same ones."""

    store_url: str = Field(
        "sqlite:///data/labels.sqlite3",
        description="Label store: sqlite:///path (embedded, WAL) or postgresql://user@host/db.",
    )
    archive_root: Path = Field(
        Path("data/archive"), description="Content-addressed image archive folder."
    )


class ClientSettings(BaseSettings):
    """How a process reaches the CAD server over gRPC (the review page, the DICOM gateway)."""

    server: str = Field(
        "127.0.0.1:50051", description="gRPC address (host:port) of the CAD server it calls."
    )
    tls_ca: Path | None = Field(
        None, description="PEM CA that signed the CAD server's certificate: connect with TLS."
    )
    tls_server_name: str | None = Field(
        None, description="Name in the CAD server's certificate, when not the host."
    )
