"""The model pin every replica follows, kept in the store (servers mount the registry read-only)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cad.durable import write_atomic
from cad.errors import (
    StoreUnavailable,
)

if TYPE_CHECKING:
    from cad.labels.store.sql import SqlLabelStore

log = logging.getLogger(__name__)


class StorePins:
    """A model's pin kept in the label store, where every replica and the CLI read it: servers
    mount the registry read-only. A registry pinned by a file (``pinned.json``, before pins moved
    to the store) is honoured until the store holds a pin state of its own.

    While the store is unreachable the last pin read is used, kept in ``cache`` (a local file, so
    a server started during an outage follows the pin it last knew; with no cache it follows the
    newest version and says so). Pinning then fails as UNAVAILABLE.
    """

    def __init__(
        self,
        store: SqlLabelStore,
        model: str,
        legacy: Callable[[], int | None],
        cache: Path | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.legacy = legacy
        self.cache = cache
        self._cached: tuple[int | None] | tuple[()] = ()
        """The version last written to ``cache`` by this process (empty: none yet)."""

    def _remember(self, version: int | None) -> None:
        """Keep the pin in the cache file when it changed (servers read it every poll)."""
        if self.cache is not None and (not self._cached or self._cached[0] != version):
            write_atomic(self.cache, json.dumps({"version": version}).encode())
            self._cached = (version,)

    def pinned(self) -> int | None:
        try:
            found, version = self.store.fleet.get_pin(self.model)
        except StoreUnavailable:
            if self.cache is not None and self.cache.exists():
                try:
                    return json.loads(self.cache.read_text())["version"]
                except (ValueError, KeyError):
                    pass
            log.warning("label store unreachable and no pin known here: following the newest")
            return None
        version = version if found else self.legacy()
        self._remember(version)
        return version

    def pin(self, version: int, actor: str, reason: str) -> None:
        self.store.fleet.set_pin(self.model, version, actor, reason)
        self._remember(version)

    def unpin(self, actor: str = "") -> bool:
        was = self.store.fleet.set_pin(self.model, None, actor, "unpin")
        self._remember(None)
        return was is not None
