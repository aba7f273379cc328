"""The one place protobuf meets the domain: messages -> domain objects and back."""

from __future__ import annotations

from service.aift import Box
from service.api.cad.v1 import cad_pb2
from service.errors import InvalidInput
from service.imaging import Window
from service.inference import (
    CandidateInput,
    ClassifyInput,
    ClassifyOutcome,
    DicomImage,
    EncodedImage,
    ImageInput,
    RawPixels,
)
from service.model import LoadedModel

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


def classify_input(request: cad_pb2.ClassifyRequest) -> ClassifyInput:
    """ClassifyRequest -> ClassifyInput (no decoding here; that runs in a worker)."""
    window = (
        Window(request.window.center, request.window.width) if request.HasField("window") else None
    )
    if window is not None:
        window.validate()
    candidates = [
        CandidateInput(c.client_id, Box(c.box.x, c.box.y, c.box.width, c.box.height))
        for c in request.candidates
    ]
    return ClassifyInput(
        image=_image(request),
        frame_index=request.frame_index,
        candidates=candidates,
        recipe=request.recipe,
        window=window,
        source_id=request.source_id,
    )


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


def model_info(model: LoadedModel, manifest_json: str) -> cad_pb2.ModelInfo:
    return cad_pb2.ModelInfo(
        model_name=model.name,
        version=str(model.version),
        manifest_json=manifest_json,
        execution_provider=model.provider,
        input_size=model.input_size,
        default_recipe=model.default_recipe,
    )
