"""The one place protobuf meets the domain: messages -> domain objects and back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cad import validation
from cad.aift import Box
from cad.errors import InvalidInput
from cad.imaging import Window
from cad.labels.images import ReviewImage, VolumeView
from cad.labels.review import QueueResult
from cad.labels.store.records import (
    AuditEvent,
    Conflict,
    ConflictNotice,
    LabeledCandidate,
    Receipt,
)
from cad.models.inference import (
    CandidateInput,
    ClassifyInput,
    ClassifyOutcome,
    DicomImage,
    EncodedImage,
    ImageInput,
    RawPixels,
)
from cad.models.model import LoadedModel
from cad.models.registry import VersionInfo
from cad.models.volume_inference import VolumeCandidateInput, VolumeInput, VolumeOutcome
from service.api.cad.v1 import cad_pb2

_BYTES_PER_SAMPLE = {cad_pb2.RawImage.UINT8: 1, cad_pb2.RawImage.UINT16: 2}


def _image(request: cad_pb2.ClassifyRequest) -> ImageInput:
    which = request.WhichOneof("image")
    if which == "dicom":
        return DicomImage(request.dicom)
    if which == "encoded":
        return EncodedImage(request.encoded)
    if which == "raw":
        raw = request.raw
        if raw.pixel_type not in _BYTES_PER_SAMPLE:
            raise InvalidInput("raw.pixel_type must be UINT8 or UINT16")
        return RawPixels(
            raw.height, raw.width, raw.channels, _BYTES_PER_SAMPLE[raw.pixel_type], raw.pixels
        )
    raise InvalidInput("the request has no image: set one of dicom, encoded or raw")


def classify_input(
    request: cad_pb2.ClassifyRequest, deadline: float | None = None, caller: str = ""
) -> ClassifyInput:
    """ClassifyRequest -> ClassifyInput (no decoding here; that runs in a worker).

    ``deadline``: the call's deadline as a :func:`time.monotonic` time. ``caller``: the token's
    identity, which scopes an idempotency key (two callers' keys never name one request)."""
    window = (
        Window(request.window.center, request.window.width) if request.HasField("window") else None
    )
    if window is not None:
        window.validate()
    candidates = [
        CandidateInput(
            validation.bounded(c.client_id, "candidate client_id", validation.MAX_ID_CHARS),
            Box(*validation.box_values(c.box.x, c.box.y, c.box.width, c.box.height)),
        )
        for c in request.candidates
    ]
    return ClassifyInput(
        image=_image(request),
        frame_index=request.frame_index,
        candidates=candidates,
        recipe=request.recipe,  # parse_recipe checks it (length included)
        window=window,
        source_id=validation.bounded(request.source_id, "source_id", validation.MAX_ID_CHARS),
        deadline=deadline,
        request_id=keyed_request_id(caller, request.idempotency_key),
    )


def keyed_request_id(caller: str, key: str) -> str:
    """The request_id an idempotency key names for ``caller`` ("" without a key): a retry of a
    request gets its request_id and candidate_ids again, so the store keeps it once."""
    if not key:
        return ""
    validation.bounded(key, "idempotency_key", validation.MAX_ID_CHARS)
    return hashlib.sha256(f"classify\0{caller}\0{key}".encode()).hexdigest()[:32]


def classify_response(outcome: ClassifyOutcome) -> cad_pb2.ClassifyResponse:
    return cad_pb2.ClassifyResponse(
        request_id=outcome.request_id,
        model_version=str(outcome.model_version),
        frame_index=outcome.frame_index,
        recipe=outcome.recipe,
        image_height=outcome.image.height,
        image_width=outcome.image.width,
        results=[
            cad_pb2.CandidateResult(
                candidate_id=r.candidate_id,
                client_id=r.client_id,
                probability=r.probability,
                patches=r.patches,
                entropy=r.entropy,
                diversity=r.diversity,
                score=r.score,
            )
            for r in outcome.results
        ],
    )


def _point(p: cad_pb2.Point3D) -> tuple[float, float, float]:
    return (p.x, p.y, p.z)


def volume_input(
    header: cad_pb2.VolumeHeader, instances: Sequence[bytes], deadline: float | None = None
) -> VolumeInput:
    """VolumeHeader + the streamed instances -> VolumeInput (assembly runs in a worker)."""
    window = (
        Window(header.window.center, header.window.width) if header.HasField("window") else None
    )
    candidates = []
    for c in header.candidates:
        which = c.WhichOneof("location")
        candidates.append(
            VolumeCandidateInput(
                validation.bounded(c.client_id, "candidate client_id", validation.MAX_ID_CHARS),
                _point(c.patient_mm) if which == "patient_mm" else None,
                _point(c.voxel) if which == "voxel" else None,
                _point(c.vessel_direction) if c.HasField("vessel_direction") else None,
            )
        )
    return VolumeInput(
        instances=instances,
        candidates=candidates,
        recipe=header.recipe,
        window=window,
        source_id=validation.bounded(header.source_id, "source_id", validation.MAX_ID_CHARS),
        deadline=deadline,
    )


def _p3(v: Sequence[float]) -> cad_pb2.Point3D:
    return cad_pb2.Point3D(x=v[0], y=v[1], z=v[2])


def volume_response(outcome: VolumeOutcome) -> cad_pb2.ClassifyVolumeResponse:
    k, j, i = outcome.volume.shape
    return cad_pb2.ClassifyVolumeResponse(
        request_id=outcome.request_id,
        model_version=str(outcome.model_version),
        recipe=outcome.recipe,
        slices=k,
        rows=j,
        columns=i,
        spacing_mm=list(outcome.volume.spacing),
        results=[
            cad_pb2.VolumeResult(
                candidate_id=r.candidate_id,
                client_id=r.client_id,
                probability=r.probability,
                patches=r.patches,
                entropy=r.entropy,
                diversity=r.diversity,
                score=r.score,
                patient_mm=_p3(r.patient_mm),
                voxel=_p3(r.voxel),
                vessel_direction=_p3(r.axis.direction),
                direction_estimated=r.axis.estimated,
                direction_scale_mm=r.axis.scale_mm,
            )
            for r in outcome.results
        ],
    )


def model_info(info: VersionInfo, serving: LoadedModel | None) -> cad_pb2.ModelInfo:
    """A version's manifest; provider and sizes from the session when it is the one serving."""
    manifest = info.manifest
    return cad_pb2.ModelInfo(
        model_name=manifest.name,
        version=str(info.version),
        manifest_json=json.dumps(manifest.to_json(), sort_keys=True),
        execution_provider=serving.provider if serving else "",
        input_size=serving.input_size if serving else manifest.input_size,
        default_recipe=manifest.recipe,
    )


def version_number(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) < 1:
        raise InvalidInput(f"version must be a positive integer, got {validation.quote(text)}")
    return int(text)


def versions(
    infos: list[VersionInfo],
    serving: LoadedModel | None,
    pinned: int | None,
    refused: dict[int, str],
) -> cad_pb2.ListVersionsResponse:
    return cad_pb2.ListVersionsResponse(
        versions=[
            cad_pb2.VersionSummary(
                version=str(i.version),
                created=i.manifest.created,
                parent_version=str(i.manifest.parent_version or ""),
                sha256=i.manifest.sha256,
                val_auc=i.manifest.val_auc or 0.0,
                serving=serving is not None and serving.version == i.version,
                pinned=pinned == i.version,
                refused=refused.get(i.version, ""),
            )
            for i in infos
        ],
        pinned_version=str(pinned or ""),
        serving_version=str(serving.version) if serving else "",
    )


# --------------------------------------------------------------------------- review

_LABEL_STATE = {
    None: cad_pb2.UNLABELED,
    -1: cad_pb2.UNLABELED,
    1: cad_pb2.POSITIVE,
    0: cad_pb2.NEGATIVE,
}


def verdict_name(verdict: int) -> str:
    """Verdict enum -> domain verdict name ('' when unspecified or unknown)."""
    names: dict[int, str] = {
        cad_pb2.TRUE_POSITIVE: "TRUE_POSITIVE",
        cad_pb2.FALSE_POSITIVE: "FALSE_POSITIVE",
    }
    return names.get(verdict, "")


def box_of(message: cad_pb2.Box) -> Box:
    return Box(*validation.box_values(message.x, message.y, message.width, message.height))


def identifier(value: str, field: str) -> str:
    """An id field of a request (candidate, request, idempotency key), bounded in length."""
    return validation.bounded(value, field, validation.MAX_ID_CHARS)


def person(value: str, field: str) -> str:
    """A reviewer or actor name, bounded in length."""
    return validation.bounded(value, field, validation.MAX_NAME_CHARS)


def receipt(r: Receipt) -> cad_pb2.CorrectionReceipt:
    e = r.event
    return cad_pb2.CorrectionReceipt(
        event_id=e.event_id,
        candidate_id=e.candidate_id,
        label_before=_LABEL_STATE[e.label_before],
        label=_LABEL_STATE[e.label_after],
        conflict=e.conflict,
        replayed=r.replayed,
        created=e.created,
    )


def notices(items: list[ConflictNotice]) -> list[cad_pb2.ConflictNotice]:
    return [
        cad_pb2.ConflictNotice(
            candidate_id=n.candidate_id,
            request_id=n.request_id,
            your_label=_LABEL_STATE[n.your_label],
            other_reviewer=n.other_reviewer,
            their_label=_LABEL_STATE[n.their_label],
            created=n.created,
        )
        for n in items
    ]


def conflict_list(items: list[Conflict]) -> cad_pb2.ConflictList:
    return cad_pb2.ConflictList(
        conflicts=[
            cad_pb2.Conflict(
                candidate_id=c.candidate.candidate_id,
                request_id=c.candidate.request_id,
                box=cad_pb2.Box(
                    x=c.candidate.x,
                    y=c.candidate.y,
                    width=c.candidate.width,
                    height=c.candidate.height,
                ),
                verdicts=[
                    cad_pb2.ConflictVerdict(
                        reviewer=e.reviewer,
                        label=_LABEL_STATE[e.label_after],
                        created=e.created,
                        note=e.note,
                    )
                    for e in c.verdicts
                ],
            )
            for c in items
        ]
    )


def queue_response(result: QueueResult) -> cad_pb2.QueueResponse:
    return cad_pb2.QueueResponse(
        variant=result.variant,
        unlabeled=result.unlabeled,
        items=[
            cad_pb2.QueueItem(
                candidate_id=e.candidate_id,
                request_id=e.request_id,
                box=cad_pb2.Box(x=e.x, y=e.y, width=e.width, height=e.height),
                score=score,
                probability=e.probability,
                model_version=e.model_version,
                frame_index=e.frame_index,
                source_id=e.source_id,
            )
            for e, score in result.items
        ],
    )


def review_image(result: ReviewImage) -> cad_pb2.ReviewImage:
    image = result.image
    return cad_pb2.ReviewImage(
        request_id=image.request_id,
        png=result.png,
        width=image.width,
        height=image.height,
        frame_index=image.frame_index,
        model_version=image.model_version,
        recipe=image.recipe,
        candidates=[
            cad_pb2.ReviewCandidate(
                candidate_id=c.candidate.candidate_id,
                box=cad_pb2.Box(
                    x=c.candidate.x, y=c.candidate.y, width=c.candidate.width,
                    height=c.candidate.height,
                ),
                probability=c.candidate.probability,
                label=_LABEL_STATE[c.label],
                labeled_by=c.labeled_by,
                conflict=c.conflict,
                model_version=c.candidate.model_version,
                origin=c.candidate.origin,
                score=c.candidate.score or 0.0,
                entropy=c.candidate.entropy or 0.0,
                diversity=c.candidate.diversity or 0.0,
            )
            for c in result.candidates
        ],
        volume=volume_view(result.volume) if result.volume is not None else None,
    )  # fmt: skip


def volume_view(v: VolumeView) -> cad_pb2.VolumeView:
    return cad_pb2.VolumeView(
        series_uid=v.series_uid,
        slice_index=v.slice_index,
        sop_instance_uid=v.sop_instance_uid,
        point_mm=cad_pb2.Point3D(x=v.point_mm[0], y=v.point_mm[1], z=v.point_mm[2]),
        window=cad_pb2.Window(center=v.window[0], width=v.window[1]),
        candidate_window=cad_pb2.Window(center=v.candidate_window[0], width=v.candidate_window[1]),
        offset_mm=v.offset_mm,
        scroll_limit_mm=v.scroll_limit_mm,
        mm_per_pixel=v.mm_per_pixel,
        missed_reach_mm=v.missed_reach_mm,
        panel=v.panel,
    )


def labeled_candidate(item: LabeledCandidate) -> cad_pb2.LabeledCandidate:
    c, i = item.candidate, item.image
    return cad_pb2.LabeledCandidate(
        candidate_id=c.candidate_id,
        request_id=c.request_id,
        box=cad_pb2.Box(x=c.x, y=c.y, width=c.width, height=c.height),
        label=_LABEL_STATE[item.label],
        conflict=item.conflict,
        adjudicated=item.adjudicated,
        origin=c.origin,
        recipe=c.recipe,
        model_version=c.model_version,
        probability=c.probability if c.probability is not None else 0.0,
        image_sha256=i.sha256,
        image_height=i.height,
        image_width=i.width,
        frame_index=i.frame_index,
        source_id=i.source_id,
        study_uid=i.study_uid,
        series_uid=i.series_uid,
        sop_instance_uid=i.sop_instance_uid,
        last_event_id=item.last_event_id,
        labeled_at=item.labeled_at,
        events=item.events,
    )


def audit_response(events: Sequence[AuditEvent]) -> cad_pb2.AuditResponse:
    return cad_pb2.AuditResponse(
        events=[
            cad_pb2.AuditEvent(
                event_id=e.event_id,
                created=e.created,
                actor=e.actor,
                action=e.action,
                target=e.target,
                detail_json=json.dumps(e.detail, sort_keys=True, default=str),
            )
            for e in events
        ]
    )
