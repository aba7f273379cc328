"""Classification domain: which model serves, and image + candidates -> per-candidate results.

Synchronous and free of protobuf and asyncio: the transport runs
:meth:`Classifier.classify` in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.aift import Box, candidate_stats, parse_recipe, validate_box
from service.aift.patches import extract_many
from service.errors import (
    InvalidInput,
    LimitExceeded,
    ModelRejected,
    ModelUnavailable,
    NotFound,
)
from service.imaging import (
    DecodedImage,
    ImageLimits,
    Window,
    decode_dicom,
    decode_encoded,
    decode_raw,
)
from service.metrics import ServiceMetrics
from service.model import LoadedModel, SessionOptions, load_model
from service.registry import ModelRegistry

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model manager


class ModelManager:
    """Holds the model being served and swaps in newer registry versions once they pass checks.

    Readers take :attr:`current` once per request, so a request started on one
    version finishes on it even if a swap happens meanwhile.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        options: SessionOptions,
        metrics: ServiceMetrics,
        on_change: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.metrics = metrics
        self.on_change = on_change
        self.current: LoadedModel | None = None
        self.refused: dict[int, str] = {}
        self._lock = threading.Lock()
        self.status = f"no model loaded yet from {registry.model_dir}"

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
                if version in self.refused:
                    continue
                try:
                    model = load_model(self.registry.get(version), self.options)
                except (ModelRejected, OSError, ValueError) as exc:
                    reason = str(exc)
                    self.refused[version] = reason
                    self.metrics.model_load_failures.inc()
                    log.error("refused model %s version %s: %s", self.registry.name, version, reason)
                    continue
                self._swap(model)
                return True
            if self.current is None:
                self.status = "no model loaded: every version was refused: " + "; ".join(
                    f"v{v}: {r}" for v, r in sorted(self.refused.items())
                )
            return False

    def _swap(self, model: LoadedModel) -> None:
        previous = self.current
        self.current = model
        self.status = f"serving {self.registry.name} version {model.version} on {model.provider}"
        self.metrics.model.info(
            {"model": self.registry.name, "version": str(model.version), "provider": model.provider}
        )
        self.metrics.model_loaded.set(1)
        log.info(
            "model %s version %s loaded on %s (previous: %s)",
            self.registry.name,
            model.version,
            model.provider,
            previous.version if previous else "none",
        )
        if self.on_change is not None:
            self.on_change(model)

    def pin(self, version: int, actor: str = "", reason: str = "") -> LoadedModel:
        """Pin a version (rollback) and serve it now; refused versions are never pinned.

        Raises:
            NotFound: no such version. ModelRejected: it fails its load checks.
        """
        if version not in self.registry.versions():
            raise NotFound(f"{self.registry.name} has no version {version}")
        if version in self.refused:
            raise ModelRejected(f"version {version} was refused: {self.refused[version]}")
        previous = self.registry.pinned()
        self.registry.pin(version, actor, reason)
        self.refresh()
        model = self.current
        if model is None or model.version != version:
            if previous is None:
                self.registry.unpin()
            else:
                self.registry.pin(previous)
            raise ModelRejected(f"version {version} was refused: {self.refused.get(version, 'unknown')}")
        log.info("model %s pinned to version %s by %s (%s)", self.registry.name, version, actor or "-", reason)
        return model

    def unpin(self, actor: str = "") -> LoadedModel | None:
        """Follow the newest acceptable version again, now."""
        if self.registry.unpin():
            log.info("model %s unpinned by %s", self.registry.name, actor or "-")
        self.refresh()
        return self.current

    def require(self) -> LoadedModel:
        model = self.current
        if model is None:
            raise ModelUnavailable(self.status)
        return model


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class DicomImage:
    data: bytes


@dataclass(frozen=True)
class EncodedImage:
    data: bytes


@dataclass(frozen=True)
class RawPixels:
    height: int
    width: int
    channels: int
    bytes_per_sample: int
    pixels: bytes


ImageInput = DicomImage | EncodedImage | RawPixels


@dataclass(frozen=True)
class CandidateInput:
    client_id: str
    box: Box


@dataclass(frozen=True)
class ClassifyInput:
    image: ImageInput
    frame_index: int
    candidates: Sequence[CandidateInput]
    recipe: str = ""
    window: Window | None = None
    source_id: str = ""


@dataclass(frozen=True)
class CandidateResult:
    candidate_id: str
    client_id: str
    box: Box
    probability: float
    patches: int
    entropy: float
    diversity: float
    score: float


@dataclass(frozen=True)
class ClassifyOutcome:
    request_id: str
    model_version: int
    frame_index: int
    recipe: str
    image: DecodedImage
    results: list[CandidateResult]
    source_id: str = ""


def decode_image(
    image: ImageInput, frame_index: int, window: Window | None, limits: ImageLimits
) -> DecodedImage:
    """Decode any supported image input to windowed RGB uint8."""
    if isinstance(image, DicomImage):
        return decode_dicom(image.data, frame_index, window, limits)
    if isinstance(image, EncodedImage):
        return decode_encoded(image.data, frame_index, window, limits)
    return decode_raw(
        image.height,
        image.width,
        image.channels,
        image.bytes_per_sample,
        image.pixels,
        frame_index,
        window,
        limits,
    )


class Classifier:
    """Image + candidates -> probability and AIFT scores per candidate, on the current model."""

    def __init__(
        self,
        models: ModelManager,
        metrics: ServiceMetrics,
        limits: ImageLimits,
        max_candidates: int,
        batch_size: int,
        recorder: Any = None,
    ) -> None:
        self.models = models
        self.recorder = recorder
        """Optional; ``recorder.record(outcome, patch_probs)`` stores what was classified."""
        self.metrics = metrics
        self.limits = limits
        self.max_candidates = max_candidates
        self.batch_size = batch_size

    def classify(self, request: ClassifyInput) -> ClassifyOutcome:
        """Classify every candidate of one image.

        Raises:
            ModelUnavailable: no model is loaded.
            InvalidInput / LimitExceeded: the request is malformed or too large; nothing ran.
        """
        model = self.models.require()
        count = len(request.candidates)
        if count == 0:
            raise InvalidInput("the request has no candidates; send at least one box to classify")
        if count > self.max_candidates:
            raise LimitExceeded(
                f"{count} candidates is over the limit of {self.max_candidates} per request "
                "(setting CAD_MAX_CANDIDATES)"
            )
        recipe = parse_recipe(request.recipe, model.default_recipe)
        image = decode_image(request.image, request.frame_index, request.window, self.limits)
        for i, cand in enumerate(request.candidates):
            try:
                validate_box(cand.box, image.height, image.width)
            except InvalidInput as exc:
                raise InvalidInput(f"candidate {i} ({cand.client_id or 'no client_id'}): {exc}") from None

        boxes = [c.box for c in request.candidates]
        per_chunk = max(1, (4 * self.batch_size) // recipe.count)
        probs = []
        for start in range(0, count, per_chunk):
            patches = extract_many(image.pixels, boxes[start : start + per_chunk], recipe, model.input_size)
            probs.append(model.predict(patches, self.batch_size, self.metrics.observe_batch))
        all_probs = np.concatenate(probs).reshape(count, recipe.count, -1)
        stats = candidate_stats(all_probs)
        self.metrics.candidates.inc(count)
        self.metrics.patches.inc(count * recipe.count)

        request_id = uuid.uuid4().hex
        results = [
            CandidateResult(
                candidate_id=f"{request_id}-{i}",
                client_id=cand.client_id,
                box=cand.box,
                probability=float(stats.probability[i]),
                patches=recipe.count,
                entropy=float(stats.entropy[i]),
                diversity=float(stats.diversity[i]),
                score=float(stats.score[i]),
            )
            for i, cand in enumerate(request.candidates)
        ]
        outcome = ClassifyOutcome(
            request_id=request_id,
            model_version=model.version,
            frame_index=request.frame_index,
            recipe=recipe.spec,
            image=image,
            results=results,
            source_id=request.source_id,
        )
        if self.recorder is not None:
            self.recorder.record(outcome, all_probs)  # durable before the response is sent
        return outcome
