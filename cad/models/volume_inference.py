"""CT series + 3D candidates -> per-candidate results, on the current model (pulmonary embolism).

The volume counterpart of :class:`cad.models.inference.Classifier`: the series is assembled
by its geometry (:mod:`cad.volumes`), each candidate's vessel axis is taken from the request
or estimated (:func:`cad.aift.vessel.vessel_axis`), its ``pe`` patches are cut
(:func:`cad.aift.vessel.extract_pe_patches`) and run through the same batcher, and the same
AIFT statistics come back. Synchronous and free of protobuf: the transport runs it in a worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cad.aift import parse_recipe
from cad.aift.patches import require_volume_recipe
from cad.aift.vessel import PE_WINDOW, VesselAxis, extract_pe_patches, unit, vessel_axis
from cad.errors import InvalidInput
from cad.models.inference import (
    CandidateScores,
    Classifier,
    RequestOptions,
    scored,
    still_wanted,
)
from cad.series import assemble_series
from cad.volumes import Volume, VolumeLimits

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class VolumeCandidateInput:
    client_id: str
    patient_mm: Vec3 | None = None
    voxel: Vec3 | None = None
    """(i column, j row, k slice) of the assembled volume; exactly one of the two is set."""
    direction: Vec3 | None = None


@dataclass(frozen=True)
class VolumeInput(RequestOptions):
    instances: Sequence[bytes]
    candidates: Sequence[VolumeCandidateInput]


@dataclass(frozen=True)
class VolumeCandidateResult(CandidateScores):
    candidate_id: str
    client_id: str
    patient_mm: Vec3
    voxel: Vec3
    axis: VesselAxis


@dataclass(frozen=True)
class VolumeOutcome:
    request_id: str
    model_version: int
    recipe: str
    volume: Volume
    results: list[VolumeCandidateResult]
    source_id: str = ""
    window: tuple[float, float] = PE_WINDOW


def _vec(v: npt.ArrayLike) -> Vec3:
    a = np.asarray(v, dtype=np.float64)
    return float(a[0]), float(a[1]), float(a[2])


def locate(volume: Volume, candidate: VolumeCandidateInput, index: int) -> tuple[Vec3, Vec3]:
    """(patient mm, voxel) of a candidate; InvalidInput when it lies outside the volume."""
    name = f"candidate {index} ({candidate.client_id or 'no client_id'})"
    if (candidate.patient_mm is None) == (candidate.voxel is None):
        raise InvalidInput(f"{name}: give its location as patient_mm or as voxel (one of them)")
    given = candidate.patient_mm if candidate.patient_mm is not None else candidate.voxel
    if not all(np.isfinite(given)):  # type: ignore[arg-type]
        raise InvalidInput(f"{name}: the location must be finite numbers")
    if candidate.patient_mm is not None:
        mm = np.asarray(candidate.patient_mm, dtype=np.float64)
        ijk = volume.to_voxel(mm)
    else:
        ijk = np.asarray(candidate.voxel, dtype=np.float64)
        mm = volume.to_patient(ijk)
    if not volume.contains(ijk):
        k, j, i = volume.shape
        raise InvalidInput(
            f"{name} lies outside the volume: voxel ({ijk[0]:.1f}, {ijk[1]:.1f}, {ijk[2]:.1f}) "
            f"of {i} x {j} x {k} (columns x rows x slices)"
        )
    return _vec(mm), _vec(ijk)


class VolumeRecorder(Protocol):
    """Where a volume classification is kept (:class:`cad.labels.review.Recorder`)."""

    def record_volume(
        self, outcome: VolumeOutcome, patch_probs: npt.NDArray[np.float32]
    ) -> None: ...


class VolumeClassifier:
    """CT series + 3D candidates -> probability and AIFT scores per candidate."""

    def __init__(
        self,
        classifier: Classifier,
        limits: VolumeLimits | None = None,
        recorder: VolumeRecorder | None = None,
    ) -> None:
        self.classifier = classifier
        self.limits = limits or VolumeLimits()
        self.recorder = recorder
        """Optional; keeps every candidate for review before the answer is sent."""

    def classify(self, request: VolumeInput) -> VolumeOutcome:
        """Raises ModelUnavailable, InvalidInput, UnsupportedImage, LimitExceeded or
        DeadlineExceeded; nothing is run on the model before the whole request is checked."""
        c = self.classifier
        model = c.models.require()
        count = c.admit(len(request.candidates), request.deadline, "3D point")
        served = model.default_recipe  # a PE model's own (pe:9, say), else the full pe recipe
        default = served if served and parse_recipe(served).vessel else "pe"
        recipe = parse_recipe(request.recipe, default)
        require_volume_recipe(recipe)
        window = PE_WINDOW
        if request.window is not None:
            request.window.validate()
            window = (request.window.center, request.window.width)
        going = lambda: still_wanted(request.deadline, request.cancelled)  # noqa: E731
        volume = assemble_series(request.instances, self.limits)
        going()
        located = [locate(volume, cand, i) for i, cand in enumerate(request.candidates)]
        axes = []
        for i, (cand, (mm, _)) in enumerate(zip(request.candidates, located, strict=True)):
            going()  # each axis is a Hessian at three scales: check between them
            if cand.direction is None:
                axes.append(vessel_axis(volume, mm))
                continue
            try:
                axes.append(VesselAxis(_vec(unit(cand.direction)), 0.0, False))
            except InvalidInput as exc:
                raise InvalidInput(f"candidate {i}: {exc}") from None
        per_chunk = max(1, c.chunk_patches // recipe.count)
        probs = []
        for start in range(0, count, per_chunk):
            chunk = range(start, min(count, start + per_chunk))
            out = c.buffers.get(len(chunk) * recipe.count, model.input_size)
            for n, k in enumerate(chunk):
                going()
                extract_pe_patches(
                    volume,
                    located[k][0],
                    axes[k].direction,
                    recipe.count,
                    model.input_size,
                    window,
                    out=out[n * recipe.count : (n + 1) * recipe.count],
                )
            probs.append(c.batcher.predict(model, out, request.deadline))
        all_probs, scores = scored(c.metrics, probs, count, recipe.count)
        request_id = uuid.uuid4().hex
        results = [
            VolumeCandidateResult(
                f"{request_id}-{i}",
                cand.client_id,
                located[i][0],
                located[i][1],
                axes[i],
                **scores[i],
            )
            for i, cand in enumerate(request.candidates)
        ]
        outcome = VolumeOutcome(
            request_id, model.version, recipe.spec, volume, results, request.source_id, window
        )
        if self.recorder is not None:
            self.recorder.record_volume(outcome, all_probs)  # durable before the answer
        return outcome
