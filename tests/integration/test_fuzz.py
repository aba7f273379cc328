"""Property-based fuzzing of every request the server takes, sent to a real in-process server.

The property, for every example: the call is answered within a deadline with OK or a status a
client can act on (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND; ALREADY_EXISTS for a reused
idempotency key), its message is under 1 KB, and the server is still SERVING afterwards.

Inputs: real DICOM files of every transfer syntax the tests have (byte flips, truncations,
header values replaced by raw bytes), PNG and JPEG files (flips, truncations), raw pixel
buffers, and every field of the inference and review requests.

Profiles (``tests/conftest.py``): ``ci`` (the default: derandomised, so CI runs the same
examples every time; a few hundred in all) and ``long`` (thousands, random), run by hand:

    .venv/bin/python -m pytest -m fuzz --hypothesis-profile=long tests/integration/test_fuzz.py
"""

from __future__ import annotations

import functools
import io
import string
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, with_raw
from tests.conftest import Stubs, limited_server

pytestmark = pytest.mark.fuzz

DEADLINE_S = 30.0
ACTIONABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}
REVIEW_ACTIONABLE = ACTIONABLE | {
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,  # settled, or nothing to settle
    grpc.StatusCode.PERMISSION_DENIED,  # another reviewer's event
}

# One small real file per transfer syntax and photometric kind the bundled data has.
DICOM_BASES = [
    "CT_small.dcm",  # Explicit VR Little Endian, MONOCHROME2, 16-bit signed, rescaled
    "rtdose_1frame.dcm",  # Implicit VR Little Endian
    "rtdose_expb_1frame.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "MR_small_RLE.dcm",  # RLE Lossless (pylibjpeg-rle, Rust)
    "SC_rgb_rle.dcm",  # RLE Lossless, RGB
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (openjpeg)
    "SC_rgb_gdcm_KY.dcm",  # JPEG 2000, RGB
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (libjpeg)
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS near-lossless
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",  # JPEG baseline, YBR_FULL
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, process 14
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "OBXXXX1A.dcm",  # PALETTE COLOR
]
HEADER_KEYWORDS = [
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PlanarConfiguration",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Modality",
]
HEADER_TEXT = [
    "abc", "NaN", "inf", "-inf", "1e308", "-1e308", "-1", "0", "", " ", "1\\2", "\u0663",
    "99999999999", "PALETTE COLOR", "MONOCHROME1", "RGB", "YBR_FULL_422", "SMITH^JOHN",
]  # fmt: skip


def _image_file(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16))
    else:
        shape = (48, 48, 3) if mode == "RGB" else (48, 48)
        image = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


ENCODED_BASES = [
    _image_file("PNG", "RGB"),
    _image_file("PNG", "L"),
    _image_file("PNG", "I;16"),
    _image_file("JPEG", "RGB"),
    _image_file("JPEG", "L"),
]
DICOM_BYTES = {name: dicom_bytes(name) for name in DICOM_BASES}

safe_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
any_text = st.one_of(
    safe_text,
    st.text(string.printable, min_size=200, max_size=400),
    st.sampled_from(["x" * 20_000, "\x00" * 300, "\u202e" * 50]),
)
any_float32 = st.floats(width=32)
any_double = st.floats()


def mutated(data: bytes, draw: st.DrawFn) -> bytes:
    """``data`` with a few bytes flipped, or truncated (nothing left to change: as it is)."""
    if not data:  # an earlier truncation left nothing (a series upload mutates twice)
        return data
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data) - 1))
        return data[:cut]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


@st.composite
def dicom_files(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(DICOM_BASES))
    kind = draw(st.sampled_from(["bytes", "header", "both"]))
    data = DICOM_BYTES[name]
    if kind in ("header", "both"):
        values: dict[str, str | bytes] = {}
        for keyword in draw(st.lists(st.sampled_from(HEADER_KEYWORDS), min_size=1, max_size=3)):
            values[keyword] = draw(
                st.one_of(st.sampled_from(HEADER_TEXT), st.binary(max_size=6), safe_text)
            )
        data = with_raw(name, **values)
    if kind in ("bytes", "both"):
        data = mutated(data, draw)
    return data


@st.composite
def encoded_files(draw: st.DrawFn) -> bytes:
    return mutated(draw(st.sampled_from(ENCODED_BASES)), draw)


@st.composite
def raw_images(draw: st.DrawFn) -> cad_pb2.RawImage:
    height, width = draw(st.integers(0, 1200)), draw(st.integers(0, 1200))
    channels = draw(st.integers(0, 4))
    pixel_type = draw(st.integers(0, 3))
    expected = height * width * channels * (2 if pixel_type == 2 else 1)
    size = draw(st.one_of(st.just(expected), st.integers(0, 64), st.just(max(expected - 1, 0))))
    size = min(size, 3_000_000)
    return cad_pb2.RawImage(
        height=height, width=width, channels=channels, pixel_type=pixel_type, pixels=bytes(size)
    )


boxes = st.builds(cad_pb2.Box, x=any_float32, y=any_float32, width=any_float32, height=any_float32)
plain_box = cad_pb2.Box(x=2, y=2, width=6, height=6)
candidates = st.lists(
    st.builds(cad_pb2.Candidate, client_id=any_text, box=st.one_of(st.just(plain_box), boxes)),
    max_size=20,
)
recipes = st.one_of(
    st.sampled_from(["", "polyp", "single", "frame", "polyp-inside", "polyp:3", "frame:8"]),
    any_text,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with limited_server(
        tmp_path_factory.mktemp("fuzz"), max_frames=64, max_message_bytes=4 * 1024 * 1024
    ) as server:
        yield server


@pytest.fixture(scope="module")
def known(inference: cad_pb2_grpc.CadInferenceStub) -> cad_pb2.ClassifyResponse:
    """A classified request, so that review examples can name real ids."""
    request = cad_pb2.ClassifyRequest(
        dicom=DICOM_BYTES["CT_small.dcm"], candidates=[cad_pb2.Candidate(box=plain_box)] * 3
    )
    return inference.Classify(request, timeout=DEADLINE_S)


def answered(
    channel: grpc.Channel, call: object, request: object, allowed: set = ACTIONABLE
) -> grpc.StatusCode:
    """The property: an actionable status within the deadline, a short message, and a server
    that is still SERVING."""
    try:
        result = call(request, timeout=DEADLINE_S)  # type: ignore[operator]
        if hasattr(result, "__next__"):
            list(result)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    event(f"status {code.name}")  # shown by --hypothesis-show-statistics
    assert code in allowed, (code, details)
    assert len(details.encode()) < 1024, details[:200]
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    return code


@given(data=dicom_files(), frame=st.integers(0, 3), recipe=recipes)
def test_mutated_dicom_files(
    stubs: Stubs,
    inference: cad_pb2_grpc.CadInferenceStub,
    data: bytes,
    frame: int,
    recipe: str,
) -> None:
    request = cad_pb2.ClassifyRequest(
        dicom=data, frame_index=frame, recipe=recipe, candidates=[cad_pb2.Candidate(box=plain_box)]
    )
    answered(stubs.channel, inference.Classify, request)


@given(data=encoded_files())
def test_mutated_png_and_jpeg_files(
    stubs: Stubs, inference: cad_pb2_grpc.CadInferenceStub, data: bytes
) -> None:
    request = cad_pb2.ClassifyRequest(encoded=data, candidates=[cad_pb2.Candidate(box=plain_box)])
    answered(stubs.channel, inference.Classify, request)


@given(raw=raw_images())
def test_raw_buffers(
    stubs: Stubs, inference: cad_pb2_grpc.CadInferenceStub, raw: cad_pb2.RawImage
) -> None:
    request = cad_pb2.ClassifyRequest(raw=raw, candidates=[cad_pb2.Candidate(box=plain_box)])
    answered(stubs.channel, inference.Classify, request)


@given(
    cands=candidates,
    recipe=recipes,
    source_id=any_text,
    window=st.one_of(st.none(), st.builds(cad_pb2.Window, center=any_double, width=any_double)),
    frame=st.integers(0, 2**32 - 1),
)
def test_classify_request_fields(
    stubs: Stubs,
    inference: cad_pb2_grpc.CadInferenceStub,
    cands: list,
    recipe: str,
    source_id: str,
    window: cad_pb2.Window | None,
    frame: int,
) -> None:
    request = cad_pb2.ClassifyRequest(
        dicom=DICOM_BYTES["CT_small.dcm"],
        candidates=cands,
        recipe=recipe,
        source_id=source_id,
        frame_index=frame,
    )
    if window is not None:
        request.window.CopyFrom(window)
    answered(stubs.channel, inference.Classify, request)


@given(frames=st.lists(st.one_of(dicom_files(), st.just(b"")), min_size=1, max_size=4))
def test_streams_of_mutated_frames(
    stubs: Stubs, inference: cad_pb2_grpc.CadInferenceStub, frames: list[bytes]
) -> None:
    requests = [
        cad_pb2.ClassifyRequest(dicom=data, candidates=[cad_pb2.Candidate(box=plain_box)])
        for data in frames
    ]
    answered(stubs.channel, inference.ClassifyStream, iter(requests))


@given(
    which=st.sampled_from(["known", "text"]),
    candidate_id=any_text,
    verdict=st.integers(-1, 3),
    reviewer=any_text,
    key=any_text,
    note=st.one_of(safe_text, st.just("n" * 3000)),
)
def test_correction_fields(
    stubs: Stubs,
    review: cad_pb2_grpc.CadReviewStub,
    known: cad_pb2.ClassifyResponse,
    which: str,
    candidate_id: str,
    verdict: int,
    reviewer: str,
    key: str,
    note: str,
) -> None:
    if which == "known":
        candidate_id = known.results[0].candidate_id
    request = cad_pb2.Correction(
        candidate_id=candidate_id,
        verdict=verdict,
        reviewer=reviewer,
        idempotency_key=key,
        note=note,
    )
    answered(stubs.channel, review.SubmitCorrection, request, REVIEW_ACTIONABLE)


@given(
    which=st.sampled_from(["known", "text"]),
    request_id=any_text,
    b=st.one_of(st.none(), boxes),
    reviewer=any_text,
    key=any_text,
)
def test_missed_finding_fields(
    stubs: Stubs,
    review: cad_pb2_grpc.CadReviewStub,
    known: cad_pb2.ClassifyResponse,
    which: str,
    request_id: str,
    b: cad_pb2.Box | None,
    reviewer: str,
    key: str,
) -> None:
    request = cad_pb2.MissedFinding(
        request_id=known.request_id if which == "known" else request_id,
        reviewer=reviewer,
        idempotency_key=key,
    )
    if b is not None:
        request.box.CopyFrom(b)
    answered(stubs.channel, review.AddMissedFinding, request, REVIEW_ACTIONABLE)


@given(
    limit=st.integers(0, 2**32 - 1),
    variant=st.one_of(
        st.sampled_from(["", "entropy", "diversity_alpha", "entropy_diversity_alpha", "random"]),
        any_text,
    ),
    seed=st.integers(0, 2**64 - 1),
    omega=any_double,
    extra=st.dictionaries(st.sampled_from(["alpha", "lambda1", "lambda2"]), any_double),
)
def test_queue_fields(
    stubs: Stubs,
    review: cad_pb2_grpc.CadReviewStub,
    known: cad_pb2.ClassifyResponse,
    limit: int,
    variant: str,
    seed: int,
    omega: float,
    extra: dict[str, float],
) -> None:
    request = cad_pb2.QueueRequest(limit=limit, variant=variant, seed=seed, omega=omega, **extra)
    answered(stubs.channel, review.GetAnnotationQueue, request)


@given(
    since=st.one_of(any_text, st.sampled_from(["2026-01-01", "2026-01-01T00:00:00Z", "Z"])),
    action=any_text,
    version=any_text,
)
def test_export_audit_and_version_fields(
    stubs: Stubs,
    review: cad_pb2_grpc.CadReviewStub,
    since: str,
    action: str,
    version: str,
) -> None:
    admin = cad_pb2_grpc.ModelAdminStub(stubs.channel)
    answered(stubs.channel, review.ExportLabels, cad_pb2.ExportRequest(since=since))
    answered(stubs.channel, admin.GetAuditTrail, cad_pb2.AuditRequest(since=since, action=action))
    answered(stubs.channel, admin.GetVersion, cad_pb2.GetVersionRequest(version=version))
    image = cad_pb2.ReviewImageRequest(request_id=version)
    answered(stubs.channel, review.GetReviewImage, image)


@functools.cache
def _series() -> tuple[bytes, ...]:
    from tests.ct import real_ct_series

    return tuple(real_ct_series(4, series_uid="1.2.826.0.1.3680043.8.498.77"))


points = st.builds(cad_pb2.Point3D, x=any_double, y=any_double, z=any_double)
plain_point = cad_pb2.Point3D(x=64, y=64, z=1.5)


@st.composite
def volume_candidates(draw: st.DrawFn) -> cad_pb2.VolumeCandidate:
    c = cad_pb2.VolumeCandidate(client_id=draw(any_text))
    where = draw(st.sampled_from(["voxel", "patient_mm", "none"]))
    point = draw(st.one_of(st.just(plain_point), points))
    if where == "voxel":
        c.voxel.CopyFrom(point)
    elif where == "patient_mm":
        c.patient_mm.CopyFrom(point)
    if draw(st.booleans()):
        c.vessel_direction.CopyFrom(draw(points))
    return c


@st.composite
def series_uploads(draw: st.DrawFn) -> list[cad_pb2.VolumeChunk]:
    """A real CT series (CT_small as 4 slices) with instances mutated, dropped, repeated,
    reordered or replaced by other DICOM files, split over messages, with any header fields."""
    instances = list(_series())
    for _ in range(draw(st.integers(0, 3))):
        if not instances:
            break
        action = draw(st.sampled_from(["mutate", "drop", "repeat", "foreign"]))
        i = draw(st.integers(0, len(instances) - 1))
        if action == "mutate":
            instances[i] = mutated(instances[i], draw)
        elif action == "drop":
            instances.pop(i)
        elif action == "repeat":
            instances.append(instances[i])
        else:
            instances[i] = draw(dicom_files())
    instances = draw(st.permutations(instances)) if instances else []
    header = cad_pb2.VolumeHeader(
        candidates=draw(st.lists(volume_candidates(), max_size=4)),
        recipe=draw(st.one_of(st.sampled_from(["", "pe", "pe:9", "pe:54", "polyp"]), any_text)),
        source_id=draw(any_text),
    )
    if draw(st.booleans()):
        header.window.CopyFrom(cad_pb2.Window(center=draw(any_double), width=draw(any_double)))
    split = draw(st.integers(1, 4))
    chunks = [cad_pb2.VolumeChunk(header=header, instances=instances[:split])]
    chunks += [
        cad_pb2.VolumeChunk(instances=instances[s : s + split])
        for s in range(split, len(instances), split)
    ]
    order = draw(st.sampled_from(["as is", "no header", "header twice", "empty"]))
    if order == "no header":
        chunks[0].ClearField("header")
    elif order == "header twice":
        chunks.append(cad_pb2.VolumeChunk(header=header))
    elif order == "empty":
        chunks = []
    return chunks


@given(upload=series_uploads())
def test_series_uploads(
    stubs: Stubs, inference: cad_pb2_grpc.CadInferenceStub, upload: list[cad_pb2.VolumeChunk]
) -> None:
    answered(
        stubs.channel,
        lambda chunks, timeout: inference.ClassifyVolume(iter(chunks), timeout=timeout),
        upload,
    )
