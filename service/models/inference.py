"""Classification domain: which model serves, and image + candidates -> per-candidate results.

Synchronous and free of protobuf and asyncio: the transport runs
:meth:`Classifier.classify` in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.aift import Box, candidate_stats, parse_recipe, validate_box
from service.aift.patches import PatchBuffers, extract_many, patch_affines
from service.errors import (
    DeadlineExceeded,
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
from service.models.lifecycle import MetricsListener, ModelListener, announce
from service.models.model import LoadedModel, SessionOptions, load_model
from service.models.registry import ModelRegistry, VersionInfo
from service.models.sampler import ImagePatches

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
        """Told of every swap, refusal, pin and unpin, in order (see :mod:`service.models.lifecycle`)."""
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
        """Load and check a version (or its int8 variant); a failure is remembered as refused.

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
    deadline: float | None = None
    """The client's deadline as a :func:`time.monotonic` time (None: no deadline)."""


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


class PatchBatcher(Protocol):
    """What the classifier runs its patches through (:mod:`service.models.batcher`)."""

    @property
    def max_batch(self) -> int: ...

    def predict(
        self,
        model: LoadedModel,
        patches: npt.NDArray[np.float32] | ImagePatches,
        deadline: float | None = None,
    ) -> npt.NDArray[np.float32]: ...


class ClassificationRecorder(Protocol):
    """Where a classification is kept (:class:`service.labels.review.Recorder`)."""

    def record(self, outcome: ClassifyOutcome, patch_probs: npt.NDArray[np.float32]) -> None: ...


class Classifier:
    """Image + candidates -> probability and AIFT scores per candidate, on the current model."""

    def __init__(
        self,
        models: ModelManager,
        metrics: ServiceMetrics,
        limits: ImageLimits,
        max_candidates: int,
        batcher: PatchBatcher,
        recorder: ClassificationRecorder | None = None,
    ) -> None:
        self.models = models
        self.recorder = recorder
        """Optional; stores what was classified before the answer is sent."""
        self.batcher = batcher
        """Runs the patches: the server's dynamic batcher, or a serial one for a single caller."""
        self.metrics = metrics
        self.limits = limits
        self.max_candidates = max_candidates
        batch = batcher.max_batch
        self.chunk_patches = 4 * batch
        """Patches cut and predicted at a time: bounds the memory of a large request."""
        self._buffers = PatchBuffers(2 * batch)
        """Each worker thread cuts its patches into its own reused array (no fresh 43 MB per request);
        it blocks until the model has run on them, so the array is free again when it asks next."""

    def classify(self, request: ClassifyInput) -> ClassifyOutcome:
        """Classify every candidate of one image.

        Raises:
            ModelUnavailable: no model is loaded.
            InvalidInput / LimitExceeded: the request is malformed or too large; nothing ran.
        """
        model = self.models.require()
        if request.deadline is not None and time.monotonic() >= request.deadline:
            self.metrics.batch_refused.labels("deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before it was started")
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
                raise InvalidInput(
                    f"candidate {i} ({cand.client_id or 'no client_id'}): {exc}"
                ) from None

        boxes = [c.box for c in request.candidates]
        per_chunk = max(1, self.chunk_patches // recipe.count)
        probs = []
        for start in range(0, count, per_chunk):
            chunk = boxes[start : start + per_chunk]
            patches: npt.NDArray[np.float32] | ImagePatches
            if model.samples_on_device:  # the image and an affine map per patch, cut there
                h, w = image.height, image.width
                affines = np.concatenate([patch_affines(h, w, b, recipe) for b in chunk])
                patches = ImagePatches(image.pixels, affines)
            else:
                out = self._buffers.get(len(chunk) * recipe.count, model.input_size)
                patches = extract_many(image.pixels, chunk, recipe, model.input_size, out=out)
            probs.append(self.batcher.predict(model, patches, request.deadline))
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
