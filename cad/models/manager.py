"""Which model version serves: the registry's target (or the pinned version), loaded, warmed,
checked (precision variants gated by their AUC drop) and swapped in without dropping a request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cad.errors import (
    ModelRejected,
    ModelUnavailable,
    NotFound,
)
from cad.metrics import ServiceMetrics
from cad.models.lifecycle import MetricsListener, ModelListener, announce
from cad.models.model import LoadedModel, load_model
from cad.models.providers import SessionOptions
from cad.models.registry import ModelRegistry, VersionInfo

log = logging.getLogger(__name__)


class ModelManager:
    """Holds the model being served and swaps in newer registry versions once they pass checks.

    Readers take :attr:`current` once per request, so a request started on one
    version finishes on it even if a swap happens meanwhile.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        options: SessionOptions,
        metrics: ServiceMetrics | None = None,
        precision: str = "fp32",
        max_auc_drop: Mapping[str, float] | None = None,
        listeners: Sequence[ModelListener] = (),
    ) -> None:
        if precision not in ("fp32", "int8", "fp16"):
            raise ValueError(f"precision must be fp32, int8 or fp16, not {precision!r}")
        self.registry = registry
        self.options = options
        self.precision = precision
        self.max_auc_drop = {"int8": 0.005, "fp16": 0.005, **(max_auc_drop or {})}
        """Largest AUC drop of a variant that may be served, per precision."""
        self.listeners: list[ModelListener] = [
            *([MetricsListener(metrics)] if metrics is not None else []),
            *listeners,
        ]
        """Told of every swap, refusal, pin and unpin, in order (see :mod:`cad.models.lifecycle`)."""
        self.current: LoadedModel | None = None
        self.refused: dict[int, str] = {}
        self._refused_files: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._lock = threading.Lock()
        self.status = f"no model loaded yet from {registry.model_dir}"

    def add_listener(self, listener: ModelListener) -> None:
        """Register a listener (at start-up, before the first refresh)."""
        self.listeners.append(listener)

    def _announce(self, hook: str, *args: Any) -> None:
        announce(self.listeners, hook, self.registry.name, *args)

    def refresh(self) -> bool:
        """Follow the registry: the pinned version if one is pinned, else the newest acceptable
        version newer than the current one. True if it swapped."""
        with self._lock:
            current = self.current.version if self.current else 0
            pinned = self.registry.pinned()
            if pinned is not None:
                wanted = [pinned] if pinned != current else []
            else:  # never older than what is served: a rollback is an explicit pin
                wanted = [v for v in self.registry.versions() if v > current]
            if not wanted and self.current is None:
                self.status = (
                    f"no model loaded: the registry {self.registry.model_dir} has no versions; "
                    "create one with `cad model init`"
                )
                return False
            for version in reversed(wanted):
                if version in self.refused and not self._changed_since_refused(version):
                    continue
                try:
                    model = self._load(version)
                except ModelRejected:
                    continue
                self._swap(model)
                return True
            if self.current is None:
                self.status = "no model loaded: every version was refused: " + "; ".join(
                    f"v{v}: {r}" for v, r in sorted(self.refused.items())
                )
            return False

    def _changed_since_refused(self, version: int) -> bool:
        """A refused version whose files changed since (fixed in place) is tried again."""
        if self.registry.fingerprint(version) == self._refused_files.get(version):
            return False
        log.info("version %s changed since it was refused; trying it again", version)
        self.refused.pop(version, None)
        return True

    def _load(self, version: int) -> LoadedModel:
        """Load and check a version (or its int8 or fp16 variant); a failure is remembered as refused.

        Raises:
            ModelRejected: it fails its checks (announced to the listeners).
        """
        try:
            return load_model(self._choose(version), self.options)
        except (ModelRejected, OSError, ValueError) as exc:
            reason = str(exc)
            self.refused[version] = reason
            self._refused_files[version] = self.registry.fingerprint(version)
            log.error("refused model %s version %s: %s", self.registry.name, version, reason)
            self._announce("on_refused", version, reason)
            raise ModelRejected(f"version {version} was refused: {reason}") from None

    def _choose(self, version: int) -> VersionInfo:
        """The version itself, or its int8/fp16 variant where that precision is wanted and the
        variant kept the AUC."""
        info = self.registry.get(version)
        if self.precision == "fp32":
            return info
        variant = self.registry.variant(version, self.precision)
        if variant is None:
            log.warning("version %s has no %s variant; serving fp32", version, self.precision)
            return info
        quantization = variant.manifest.quantization
        drop = quantization.auc_drop if quantization else None
        allowed = self.max_auc_drop[self.precision]
        if drop is None or drop > allowed:
            log.warning(
                "%s variant of version %s not served: its AUC drop %s is over the allowed %.4f; "
                "serving fp32",
                self.precision,
                version,
                drop,
                allowed,
            )
            return info
        return variant

    def _swap(self, model: LoadedModel) -> None:
        previous = self.current.version if self.current else None
        self.current = model  # the replaced model is freed once in-flight requests finish
        self.status = (
            f"serving {self.registry.name} version {model.version} ({model.precision}) "
            f"on {model.provider}"
        )
        log.info(
            "model %s version %s (%s) loaded on %s (previous: %s)",
            self.registry.name,
            model.version,
            model.precision,
            model.provider,
            previous or "none",
        )
        self._announce("on_swap", previous, model, self.registry.pinned())

    def pin(self, version: int, actor: str = "", reason: str = "") -> LoadedModel:
        """Pin a version (rollback) and serve it now. The version is loaded and checked first,
        as a refresh would; one that fails is never pinned, not even for a moment. The RPC and
        ``cad model rollback`` both pin through here.

        Raises:
            NotFound: no such version. ModelRejected: it fails its load checks.
        """
        if version not in self.registry.versions():
            raise NotFound(f"{self.registry.name} has no version {version}")
        if version in self.refused and not self._changed_since_refused(version):
            raise ModelRejected(f"version {version} was refused: {self.refused[version]}")
        with self._lock:
            model = self.current
            if model is None or model.version != version:
                model = self._load(version)
            previous = self.registry.pinned()
            self.registry.pin(version, actor, reason)
            if model is not self.current:
                self._swap(model)
        log.info(
            "model %s pinned to version %s by %s (%s)",
            self.registry.name,
            version,
            actor or "-",
            reason,
        )
        self._announce("on_pin", version, actor, reason, previous)
        return model

    def unpin(self, actor: str = "") -> LoadedModel | None:
        """Follow the newest acceptable version again, now."""
        if self.registry.unpin(actor):
            log.info("model %s unpinned by %s", self.registry.name, actor or "-")
            self._announce("on_unpin", actor)
        self.refresh()
        return self.current

    def require(self) -> LoadedModel:
        model = self.current
        if model is None:
            raise ModelUnavailable(self.status)
        return model


# --------------------------------------------------------------------------- requests
