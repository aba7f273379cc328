"""Every malformed input gets a clear status and message, and the server keeps serving."""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pydicom
import pytest
from PIL import Image

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, dicom_path
from tests import conftest

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def box(x: float = 10, y: float = 10, w: float = 20, h: float = 20) -> cad_pb2.Box:
    return cad_pb2.Box(x=x, y=y, width=w, height=h)


def one(b: cad_pb2.Box | None = None) -> list[cad_pb2.Candidate]:
    return [cad_pb2.Candidate(client_id="c", box=b or box())]


def _with_transfer_syntax(uid: str) -> bytes:
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([ds.PixelData])  # as a real MPEG stream would be stored
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _png(shape: tuple[int, ...] = (40, 40, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw(h: int, w: int, c: int = 1, nbytes: int | None = None) -> cad_pb2.RawImage:
    size = h * w * c if nbytes is None else nbytes
    return cad_pb2.RawImage(
        height=h, width=w, channels=c, pixel_type=cad_pb2.RawImage.UINT8, pixels=bytes(size)
    )


CT = dicom_bytes("CT_small.dcm")

CASES = {
    "non-DICOM bytes": (
        cad_pb2.ClassifyRequest(dicom=b"hello, I am not a DICOM file" * 10, candidates=one()),
        INVALID,
        "not a DICOM Part 10 file",
    ),
    "truncated DICOM": (
        cad_pb2.ClassifyRequest(dicom=CT[: len(CT) // 2], candidates=one()),
        INVALID,
        "DICOM",
    ),
    "DICOM without pixel data": (
        cad_pb2.ClassifyRequest(dicom=dicom_bytes("test-SR.dcm"), candidates=one()),
        INVALID,
        "no pixel data",
    ),
    "unsupported transfer syntax": (
        cad_pb2.ClassifyRequest(
            dicom=_with_transfer_syntax("1.2.840.10008.1.2.4.100"), candidates=one()
        ),
        INVALID,
        "MPEG2",
    ),
    "frame index out of range": (
        cad_pb2.ClassifyRequest(dicom=CT, frame_index=1, candidates=one()),
        INVALID,
        "frame_index 1 is out of range",
    ),
    "undecodable PNG": (
        cad_pb2.ClassifyRequest(encoded=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, candidates=one()),
        INVALID,
        "PNG",
    ),
    "truncated PNG": (
        cad_pb2.ClassifyRequest(encoded=_png()[:60], candidates=one()),
        INVALID,
        "PNG",
    ),
    "random bytes as encoded image": (
        cad_pb2.ClassifyRequest(encoded=b"GIF89a-no", candidates=one()),
        INVALID,
        "neither a PNG nor a JPEG",
    ),
    "raw buffer of the wrong length": (
        cad_pb2.ClassifyRequest(raw=_raw(10, 10, nbytes=99), candidates=one()),
        INVALID,
        "raw pixel buffer has 99 bytes",
    ),
    "raw with 2 channels": (
        cad_pb2.ClassifyRequest(raw=_raw(10, 10, c=2), candidates=one()),
        INVALID,
        "channels must be 1 or 3",
    ),
    "raw without pixel type": (
        cad_pb2.ClassifyRequest(
            raw=cad_pb2.RawImage(height=2, width=2, channels=1, pixels=bytes(4)), candidates=one()
        ),
        INVALID,
        "UINT8 or UINT16",
    ),
    "no image": (cad_pb2.ClassifyRequest(candidates=one()), INVALID, "no image"),
    "no candidates": (cad_pb2.ClassifyRequest(dicom=CT), INVALID, "no candidates"),
    "box of zero width": (
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one(box(w=0))),
        INVALID,
        "must be positive",
    ),
    "box of negative height": (
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one(box(h=-5))),
        INVALID,
        "must be positive",
    ),
    "box with NaN": (
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one(box(x=float("nan")))),
        INVALID,
        "non-finite",
    ),
    "box entirely outside the image": (
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one(box(x=500, y=10))),
        INVALID,
        "entirely outside",
    ),
    "NaN window width": (
        cad_pb2.ClassifyRequest(
            dicom=CT, window=cad_pb2.Window(center=40, width=float("nan")), candidates=one()
        ),
        INVALID,
        "window width",
    ),
    "non-positive window width": (
        cad_pb2.ClassifyRequest(
            dicom=CT, window=cad_pb2.Window(center=40, width=0), candidates=one()
        ),
        INVALID,
        "window width",
    ),
    "unknown recipe": (
        cad_pb2.ClassifyRequest(dicom=CT, recipe="banana", candidates=one()),
        INVALID,
        "unknown recipe 'banana'",
    ),
    "image over the pixel limit": (
        cad_pb2.ClassifyRequest(raw=_raw(1100, 1000), candidates=one()),
        EXHAUSTED,
        "CAD_MAX_IMAGE_PIXELS",
    ),
    "DICOM over the pixel limit": (
        cad_pb2.ClassifyRequest(dicom=dicom_bytes("RG3_J2KR.dcm"), candidates=one()),
        EXHAUSTED,
        "over the limit",
    ),
    "too many candidates": (
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one() * 17),
        EXHAUSTED,
        "CAD_MAX_CANDIDATES",
    ),
    "message over the size limit": (
        cad_pb2.ClassifyRequest(encoded=b"\x00" * (3 * 1024 * 1024), candidates=one()),
        EXHAUSTED,
        "",
    ),
}


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("bad-input")
    with conftest.limited_server(tmp, max_message_bytes=2 * 1024 * 1024) as server:
        yield server


@pytest.fixture(scope="module")
def limited(limited_server: ServerThread) -> Iterator[cad_pb2_grpc.CadInferenceStub]:
    with grpc.insecure_channel(limited_server.address) as channel:
        yield cad_pb2_grpc.CadInferenceStub(channel)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_status(limited: cad_pb2_grpc.CadInferenceStub, case: str) -> None:
    request, code, fragment = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        limited.Classify(request, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert fragment in (err.value.details() or "")
    # ... and the server keeps serving.
    ok = limited.Classify(cad_pb2.ClassifyRequest(dicom=CT, candidates=one()), timeout=30)
    assert ok.results[0].patches == 24


def test_partly_outside_box_is_padded_not_refused(limited: cad_pb2_grpc.CadInferenceStub) -> None:
    response = limited.Classify(
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one(box(x=100, y=100, w=60, h=60))), timeout=30
    )
    assert 0 < response.results[0].probability < 1


def test_bad_frame_in_a_stream_names_the_frame(limited: cad_pb2_grpc.CadInferenceStub) -> None:
    def frames():
        yield cad_pb2.ClassifyRequest(dicom=CT, candidates=one())
        yield cad_pb2.ClassifyRequest(dicom=CT, candidates=one(box(w=-1)))

    with pytest.raises(grpc.RpcError) as err:
        list(limited.ClassifyStream(frames(), timeout=30))
    assert err.value.code() == INVALID and "stream frame 1" in err.value.details()


def test_no_internal_errors_were_counted(limited_server: ServerThread) -> None:
    # Every case above ran on this server (module scope); none became INTERNAL or UNKNOWN.
    registry = limited_server.server.metrics.registry
    codes = {
        sample.labels["code"]: sample.value
        for metric in registry.collect()
        if metric.name == "cad_grpc_requests"
        for sample in metric.samples
        if sample.name == "cad_grpc_requests_total" and sample.labels["method"] == "Classify"
    }
    assert codes.get("INVALID_ARGUMENT", 0) >= 20 and codes.get("OK", 0) >= 20
    assert "INTERNAL" not in codes and "UNKNOWN" not in codes
