"""Classification domain: which model serves, and image + candidates -> per-candidate results.

Synchronous and free of protobuf and asyncio: the transport runs
:meth:`Classifier.classify` in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cad.aift import Box, candidate_stats, parse_recipe, validate_box
from cad.aift.patches import (
    PatchBuffers,
    extract_many,
    patch_affines,
    require_image_recipe,
)
from cad.encoded import decode_encoded, decode_raw
from cad.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    LimitExceeded,
)
from cad.imaging import DecodedImage, ImageLimits, Window, decode_dicom
from cad.metrics import ServiceMetrics
from cad.models.manager import ModelManager
from cad.models.model import LoadedModel
from cad.models.sampler import ImagePatches

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, kw_only=True)
class RequestOptions:
    """What any classification request adds to its image or series (keywords only): the patch
    recipe, a window, where it comes from, and when its client stops waiting."""

    recipe: str = ""
    window: Window | None = None
    source_id: str = ""
    deadline: float | None = None
    """The client's deadline as a :func:`time.monotonic` time (None: no deadline)."""
    cancelled: threading.Event | None = None
    """Set when the client cancels: the work stops at its next check (:func:`still_wanted`)."""


@dataclass(frozen=True)
class ClassifyInput(RequestOptions):
    image: ImageInput
    frame_index: int
    candidates: Sequence[CandidateInput]
    request_id: str = ""
    """Given (from an idempotency key): a retry is answered and recorded under the same id;
    empty: a new one."""


@dataclass(frozen=True, kw_only=True)
class CandidateScores:
    """What the model says of one candidate (keywords only; :func:`scored` makes them): the
    probability of a finding, over how many patches, and the AIFT scores."""

    probability: float
    patches: int
    entropy: float
    diversity: float
    score: float


@dataclass(frozen=True)
class CandidateResult(CandidateScores):
    candidate_id: str
    client_id: str
    box: Box


@dataclass(frozen=True)
class ClassifyOutcome:
    request_id: str
    model_version: int
    frame_index: int
    recipe: str
    image: DecodedImage
    results: list[CandidateResult]
    source_id: str = ""


def scored(
    metrics: ServiceMetrics, chunks: list[npt.NDArray[np.float32]], count: int, per_candidate: int
) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]]]:
    """The model's answers for ``count`` candidates of ``per_candidate`` patches each (in chunks,
    in order): all patch probabilities, and each candidate's AIFT scores as a result's fields
    (probability, patches, entropy, diversity, score); counted in the metrics. The one scoring
    of an image's candidates and of a CT volume's."""
    all_probs = np.concatenate(chunks).reshape(count, per_candidate, -1)
    stats = candidate_stats(all_probs)
    metrics.candidates.inc(count)
    metrics.patches.inc(count * per_candidate)
    scores = [
        {
            "probability": float(stats.probability[i]),
            "patches": per_candidate,
            "entropy": float(stats.entropy[i]),
            "diversity": float(stats.diversity[i]),
            "score": float(stats.score[i]),
        }
        for i in range(count)
    ]
    return all_probs, scores


def still_wanted(deadline: float | None, cancelled: threading.Event | None) -> None:
    """Between stages of a request's work: stop when its client cancelled it or its deadline
    passed (a cancelled request no longer burns CPU-seconds for nobody)."""
    if cancelled is not None and cancelled.is_set():
        raise Cancelled("the client cancelled the request; its work was stopped")
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("the request's deadline passed while it was being worked on")


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
    """What the classifier runs its patches through (:mod:`cad.models.batcher`)."""

    @property
    def max_batch(self) -> int: ...

    def predict(
        self,
        model: LoadedModel,
        patches: npt.NDArray[np.float32] | ImagePatches,
        deadline: float | None = None,
    ) -> npt.NDArray[np.float32]: ...


class ClassificationRecorder(Protocol):
    """Where a classification is kept (:class:`cad.labels.review.Recorder`)."""

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
        self.buffers = PatchBuffers(2 * batch)
        """Each worker thread cuts its patches into its own reused array (no fresh 43 MB per request);
        it blocks until the model has run on them, so the array is free again when it asks next."""

    def admit(self, count: int, deadline: float | None, what: str) -> int:
        """The checks every classification passes before any work: the deadline not yet passed,
        1 to ``max_candidates`` candidates (``what`` names one in the message). Returns count."""
        if deadline is not None and time.monotonic() >= deadline:
            self.metrics.batch_refused.labels("deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before it was started")
        if count == 0:
            raise InvalidInput(
                f"the request has no candidates; send at least one {what} to classify"
            )
        if count > self.max_candidates:
            raise LimitExceeded(
                f"{count} candidates is over the limit of {self.max_candidates} per request "
                "(setting CAD_MAX_CANDIDATES)"
            )
        return count

    def classify(self, request: ClassifyInput) -> ClassifyOutcome:
        """Classify every candidate of one image.

        Raises:
            ModelUnavailable: no model is loaded.
            InvalidInput / LimitExceeded: the request is malformed or too large; nothing ran.
        """
        model = self.models.require()
        count = self.admit(len(request.candidates), request.deadline, "box")
        recipe = parse_recipe(request.recipe, model.default_recipe)
        require_image_recipe(recipe)
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
            still_wanted(request.deadline, request.cancelled)
            chunk = boxes[start : start + per_chunk]
            patches: npt.NDArray[np.float32] | ImagePatches
            if model.samples_on_device:  # the image and an affine map per patch, cut there
                h, w = image.height, image.width
                affines = np.concatenate([patch_affines(h, w, b, recipe) for b in chunk])
                patches = ImagePatches(image.pixels, affines)
            else:
                out = self.buffers.get(len(chunk) * recipe.count, model.input_size)
                patches = extract_many(image.pixels, chunk, recipe, model.input_size, out=out)
            probs.append(self.batcher.predict(model, patches, request.deadline))
        all_probs, scores = scored(self.metrics, probs, count, recipe.count)
        request_id = request.request_id or uuid.uuid4().hex
        results = [
            CandidateResult(f"{request_id}-{i}", cand.client_id, cand.box, **scores[i])
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
