"""What happens around a model swap, as listeners of :class:`cad.models.inference.ModelManager`.

The manager only loads, checks, swaps and pins; everything that reacts to that (metrics, the
audit trail, health, memory trimming) is a listener registered at start-up, the way MLServer's
model registry announces loads to its handlers. A listener that fails is logged and skipped:
the swap has happened, and the other listeners still hear of it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from cad.metrics import ServiceMetrics
from cad.models.model import LoadedModel, release_memory

log = logging.getLogger(__name__)


class ModelListener:
    """Hooks of the model lifecycle; each does nothing unless overridden."""

    def on_swap(
        self, name: str, previous: int | None, model: LoadedModel, pinned: int | None
    ) -> None:
        """``model`` now serves (``previous``: the version it replaced, if any)."""

    def on_refused(self, name: str, version: int, reason: str) -> None:
        """``version`` failed its load checks and will not be served."""

    def on_pin(
        self, name: str, version: int, actor: str, reason: str, previous: int | None
    ) -> None:
        """``actor`` pinned ``version`` (``previous``: the pin it replaced)."""

    def on_unpin(self, name: str, actor: str) -> None:
        """``actor`` removed the pin: the newest acceptable version serves again."""


class MetricsListener(ModelListener):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def on_swap(
        self, name: str, previous: int | None, model: LoadedModel, pinned: int | None
    ) -> None:
        self.metrics.model.info(
            {
                "model": name,
                "version": str(model.version),
                "provider": model.provider,
                "precision": model.precision,
            }
        )
        self.metrics.model_loaded.set(1)
        self.metrics.model_version.set(model.version)
        self.metrics.model_followed.set(pinned if pinned is not None else model.version)

    def on_refused(self, name: str, version: int, reason: str) -> None:
        self.metrics.model_load_failures.inc()


class AuditListener(ModelListener):
    """Swaps, pins and unpins in the audit trail (``sink(action, actor, target, detail)``)."""

    def __init__(
        self,
        sink: Callable[[str, str, str, dict[str, Any]], object],
        actor: str = "",
        swaps: bool = True,
    ) -> None:
        self.sink = sink
        self.actor = actor or f"server:{socket.gethostname()}"
        """Who swaps versions (this server process); pins carry their own actor."""
        self.swaps = swaps
        """False where the manager is not serving (``cad model rollback`` loads only to check)."""

    def on_swap(
        self, name: str, previous: int | None, model: LoadedModel, pinned: int | None
    ) -> None:
        if not self.swaps:
            return
        detail = {
            "previous": previous,
            "precision": model.precision,
            "provider": model.provider,
            "pinned": pinned,
        }
        self.sink("swap", self.actor, f"{name}/v{model.version}", detail)

    def on_pin(
        self, name: str, version: int, actor: str, reason: str, previous: int | None
    ) -> None:
        self.sink("pin", actor, f"{name}/v{version}", {"reason": reason, "previous_pin": previous})

    def on_unpin(self, name: str, actor: str) -> None:
        self.sink("unpin", actor, name, {})


class MemoryTrimListener(ModelListener):
    """After a swap, hand the replaced session's freed pages back to the system."""

    def on_swap(
        self, name: str, previous: int | None, model: LoadedModel, pinned: int | None
    ) -> None:
        release_memory()


class CallbackListener(ModelListener):
    """``on_swap`` as a plain callable (for example: the server marks itself SERVING)."""

    def __init__(self, swapped: Callable[[LoadedModel], None]) -> None:
        self.swapped = swapped

    def on_swap(
        self, name: str, previous: int | None, model: LoadedModel, pinned: int | None
    ) -> None:
        self.swapped(model)


def announce(listeners: list[ModelListener], hook: str, *args: Any) -> None:
    """Call ``hook`` on every listener; one that raises is logged and the rest still run."""
    for listener in listeners:
        try:
            getattr(listener, hook)(*args)
        except Exception:
            log.exception("model listener %s failed in %s", type(listener).__name__, hook)
