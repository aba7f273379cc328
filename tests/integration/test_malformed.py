"""Regression tests for the malformed inputs of issue 16: each case below answered INTERNAL, OK
on garbage, a status the client never received, or no status at all, before the boundary
validation and the contained decoder stages existed.

All of them run against one real in-process server (module scope); the last test checks that
the server counted exactly what its clients received and never INTERNAL or UNKNOWN."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import grpc
import numpy as np
import pydicom
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cad.imaging import decode_dicom, scrub
from cad.validation import MAX_ID_CHARS, MAX_STATUS_CHARS, parse_time, quote
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, dicom_path, with_raw
from tests.conftest import Stubs, limited_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
CT = dicom_bytes("CT_small.dcm")
SECRET = "SMITH^JOHN-1961"  # stands for whatever a modality wrote: it must never be echoed


def box(x: float = 10, y: float = 10, w: float = 20, h: float = 20) -> cad_pb2.Box:
    return cad_pb2.Box(x=x, y=y, width=w, height=h)


def one(b: cad_pb2.Box | None = None, client_id: str = "c") -> list[cad_pb2.Candidate]:
    return [cad_pb2.Candidate(client_id=client_id, box=b or box())]


def with_empty_modality_lut_item() -> bytes:
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    ds.ModalityLUTSequence = Sequence([Dataset()])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def corrupted_rle() -> bytes:
    """pydicom's MR_small_RLE.dcm with one bit of an RLE segment flipped: pylibjpeg-rle's
    Rust decoder indexes past its buffer and panics (pyo3_runtime.PanicException, a
    BaseException)."""
    data = bytearray(dicom_bytes("MR_small_RLE.dcm"))
    data[4134] ^= 4
    return bytes(data)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with limited_server(tmp_path_factory.mktemp("malformed")) as server:
        yield server


@pytest.fixture(scope="module")
def candidate(inference: cad_pb2_grpc.CadInferenceStub) -> cad_pb2.ClassifyResponse:
    return inference.Classify(cad_pb2.ClassifyRequest(dicom=CT, candidates=one()), timeout=30)


def refused(call: object, request: object, code: grpc.StatusCode = INVALID) -> str:
    """Call and require the status ``code`` within 30 s; its message, checked to be short."""
    with pytest.raises(grpc.RpcError) as err:
        result = call(request, timeout=30)  # type: ignore[operator]
        if hasattr(result, "__next__"):
            list(result)  # a streaming answer
    assert err.value.code() == code, err.value.details()
    details = err.value.details() or ""
    assert len(details) <= MAX_STATUS_CHARS
    return details


# --------------------------------------------------------------------------- 1. decoder panics


def test_a_decoder_panic_is_answered_with_the_stage_and_transfer_syntax(
    inference: cad_pb2_grpc.CadInferenceStub,
) -> None:
    details = refused(
        inference.Classify, cad_pb2.ClassifyRequest(dicom=corrupted_rle(), candidates=one())
    )
    assert "decode the DICOM pixel data" in details and "RLE Lossless" in details
    assert "lib.rs" not in details and "Traceback" not in details


def test_a_decoder_panic_in_a_stream_names_the_frame_and_the_stream_goes_on_answering(
    inference: cad_pb2_grpc.CadInferenceStub,
) -> None:
    frames = [
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one()),
        cad_pb2.ClassifyRequest(dicom=corrupted_rle(), candidates=one()),
    ]
    answers = []
    with pytest.raises(grpc.RpcError) as err:
        for answer in inference.ClassifyStream(iter(frames), timeout=30):
            answers.append(answer)
    assert len(answers) == 1
    assert err.value.code() == INVALID
    assert (err.value.details() or "").startswith("stream frame 1: could not decode")


class NativePanic(BaseException):
    """Stands for pyo3_runtime.PanicException: not an Exception subclass."""


def test_a_handler_raising_a_base_exception_is_answered_and_counted(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server of its own (conftest's), so that the module server never counts INTERNAL.
    def panic(request: object) -> None:
        raise NativePanic("index out of bounds")

    monkeypatch.setattr(server.server.classifier, "classify", panic)
    request = cad_pb2.ClassifyRequest(dicom=CT, candidates=one())
    with grpc.insecure_channel(server.address) as own:
        stub = cad_pb2_grpc.CadInferenceStub(own)
        details = refused(stub.Classify, request, grpc.StatusCode.INTERNAL)
        refused(stub.ClassifyStream, iter([request]), grpc.StatusCode.INTERNAL)
    assert "internal error (ref " in details and "index out of bounds" not in details
    assert counts(server, "Classify") == {"INTERNAL": 1}
    assert counts(server, "ClassifyStream") == {"INTERNAL": 1}


# --------------------------------------------------------------------------- 2-3. header values


HEADER_CASES = {
    "RescaleSlope not a number": ({"RescaleSlope": SECRET}, "RescaleSlope (0028,1053)"),
    "RescaleIntercept not a number": ({"RescaleIntercept": "x1"}, "RescaleIntercept"),
    "WindowWidth not a number": ({"WindowWidth": SECRET}, "WindowWidth (0028,1051)"),
    "WindowCenter not a number": ({"WindowCenter": "abc"}, "WindowCenter (0028,1050)"),
    "RescaleSlope NaN": ({"RescaleSlope": "NaN"}, "not a finite number"),
    "RescaleSlope inf": ({"RescaleSlope": "inf"}, "not a finite number"),
    "RescaleSlope 1e308": ({"RescaleSlope": "1e308"}, "outside the accepted range"),
    "RescaleSlope zero": ({"RescaleSlope": "0"}, "RescaleSlope (0028,1053) is zero"),
    "PALETTE COLOR without a palette": (
        {"PhotometricInterpretation": "PALETTE COLOR"},
        "no complete palette",
    ),
    "Rows missing": ({"Rows": b""}, "no Rows attribute"),
    "NumberOfFrames -1": (
        {"NumberOfFrames": "-1"},
        "NumberOfFrames (0028,0008) must be at least 1",
    ),
    "NumberOfFrames not an integer": ({"NumberOfFrames": SECRET}, "is not an integer"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_a_malformed_header_value_is_invalid_argument_naming_the_attribute_not_its_value(
    inference: cad_pb2_grpc.CadInferenceStub, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    values, fragment = HEADER_CASES[case]
    caplog.set_level(logging.DEBUG)
    details = refused(
        inference.Classify,
        cad_pb2.ClassifyRequest(dicom=with_raw("CT_small.dcm", **values), candidates=one()),
    )
    assert fragment in details
    assert SECRET not in details and "'abc'" not in details and "x1" not in details
    assert SECRET not in caplog.text


def test_an_empty_modality_lut_item_is_invalid_argument(
    inference: cad_pb2_grpc.CadInferenceStub,
) -> None:
    details = refused(
        inference.Classify,
        cad_pb2.ClassifyRequest(dicom=with_empty_modality_lut_item(), candidates=one()),
    )
    assert "ModalityLUTSequence has an item without LUTDescriptor" in details


def test_a_request_window_makes_the_header_window_irrelevant(
    inference: cad_pb2_grpc.CadInferenceStub,
) -> None:
    data = with_raw("CT_small.dcm", WindowWidth="abc")
    answer = inference.Classify(
        cad_pb2.ClassifyRequest(
            dicom=data, window=cad_pb2.Window(center=40, width=400), candidates=one()
        ),
        timeout=30,
    )
    assert 0 < answer.results[0].probability < 1


@pytest.mark.parametrize(
    "b",
    [box(0, 0, 1e38, 1e38), box(-2e6, 10, 20, 20), box(10, 10, float("inf"), 20)],
    ids=["huge", "far-left", "infinite"],
)
def test_boxes_beyond_any_image_are_refused(
    inference: cad_pb2_grpc.CadInferenceStub, b: cad_pb2.Box
) -> None:
    details = refused(inference.Classify, cad_pb2.ClassifyRequest(dicom=CT, candidates=one(b)))
    assert "box" in details


def test_a_missed_finding_box_beyond_any_image_is_refused(
    review: cad_pb2_grpc.CadReviewStub, candidate: cad_pb2.ClassifyResponse
) -> None:
    refused(
        review.AddMissedFinding,
        cad_pb2.MissedFinding(
            request_id=candidate.request_id, box=box(0, 0, 1e38, 1e38), reviewer="dr-a"
        ),
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"omega": float("nan")},
        {"omega": float("inf")},
        {"omega": 1e308},
        {"lambda1": float("nan")},
        {"lambda2": float("-inf")},
        {"lambda1": -1.0},
        {"alpha": float("nan")},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_queue_parameters_must_be_finite_and_in_range(
    review: cad_pb2_grpc.CadReviewStub, candidate: cad_pb2.ClassifyResponse, fields: dict
) -> None:
    details = refused(review.GetAnnotationQueue, cad_pb2.QueueRequest(**fields))
    assert next(iter(fields)) in details


# --------------------------------------------------------------------------- 4. echoes, lengths


LONG = "x" * 20_000


def test_long_strings_are_refused_with_a_short_message(
    inference: cad_pb2_grpc.CadInferenceStub,
    review: cad_pb2_grpc.CadReviewStub,
    candidate: cad_pb2.ClassifyResponse,
) -> None:
    cases = [
        (inference.Classify, cad_pb2.ClassifyRequest(dicom=CT, recipe=LONG, candidates=one())),
        (inference.Classify, cad_pb2.ClassifyRequest(dicom=CT, candidates=one(client_id=LONG))),
        (inference.Classify, cad_pb2.ClassifyRequest(dicom=CT, source_id="s" * 100_000,
                                                     candidates=one())),
        (review.SubmitCorrection, cad_pb2.Correction(candidate_id=LONG, reviewer="dr-a",
                                                     verdict=cad_pb2.TRUE_POSITIVE)),
        (review.SubmitCorrection, cad_pb2.Correction(
            candidate_id=candidate.results[0].candidate_id, reviewer="r" * 100_000,
            verdict=cad_pb2.TRUE_POSITIVE)),
        (review.SubmitCorrection, cad_pb2.Correction(
            candidate_id=candidate.results[0].candidate_id, reviewer="dr-a",
            idempotency_key="k" * 1_000_000, verdict=cad_pb2.TRUE_POSITIVE)),
        (review.AddMissedFinding, cad_pb2.MissedFinding(request_id=LONG, box=box(),
                                                        reviewer="dr-a")),
        (review.GetAnnotationQueue, cad_pb2.QueueRequest(variant=LONG)),
    ]  # fmt: skip
    for call, request in cases:
        details = refused(call, request)
        assert "over the limit of" in details and len(details) < 200, details


def test_nothing_over_a_limit_was_stored(
    served: ServerThread, review: cad_pb2_grpc.CadReviewStub
) -> None:
    # The correction attempts above were all refused: no label from them exists.
    labeled = list(review.ExportLabels(cad_pb2.ExportRequest(), timeout=30))
    assert all(len(item.candidate_id) <= MAX_ID_CHARS for item in labeled)
    assert all(len(e.actor) <= 128 for e in served.server.store.fleet.audit(limit=10_000))


def test_messages_quote_at_most_a_short_sanitised_prefix() -> None:
    assert quote("a" * 5) == "'aaaaa'"
    long = quote("\x00\u0663" + "z" * 100)
    assert long.startswith("'\\x00\\u0663zz") and long.endswith("(102 characters)")
    assert len(long) < 80


# --------------------------------------------------------------------------- 5. strict parsing


@pytest.mark.parametrize("recipe", [" polyp", "polyp ", "polyp:", "polyp:\u0663", "polyp:+3"])
def test_recipe_specs_are_parsed_strictly(
    inference: cad_pb2_grpc.CadInferenceStub, recipe: str
) -> None:
    refused(inference.Classify, cad_pb2.ClassifyRequest(dicom=CT, recipe=recipe, candidates=one()))


def test_export_since_is_parsed_strictly(
    review: cad_pb2_grpc.CadReviewStub, candidate: cad_pb2.ClassifyResponse
) -> None:
    for bad in ["not-a-time", "2026-13-01", "yesterday", "\u0662\u0660\u0662\u0666-01-01"]:
        details = refused(review.ExportLabels, cad_pb2.ExportRequest(since=bad))
        assert "ISO 8601" in details
    review.SubmitCorrection(
        cad_pb2.Correction(
            candidate_id=candidate.results[0].candidate_id,
            verdict=cad_pb2.TRUE_POSITIVE,
            reviewer="dr-a",
            idempotency_key="since-test",
        ),
        timeout=30,
    )
    assert len(list(review.ExportLabels(cad_pb2.ExportRequest(since="2000-01-01")))) >= 1
    assert list(review.ExportLabels(cad_pb2.ExportRequest(since="2999-01-01T00:00:00Z"))) == []


def test_audit_since_is_parsed_strictly(stubs: Stubs) -> None:
    admin = cad_pb2_grpc.ModelAdminStub(stubs.channel)
    refused(admin.GetAuditTrail, cad_pb2.AuditRequest(since="not-a-time"))
    refused(admin.GetVersion, cad_pb2.GetVersionRequest(version=LONG))


def test_parse_time_normalises_to_the_store_format() -> None:
    assert parse_time("") == ""
    assert parse_time("2026-12-01") == "2026-12-01T00:00:00.000000+00:00"
    assert parse_time("2026-12-01T10:00:00+02:00") == "2026-12-01T08:00:00.000000+00:00"
    assert parse_time("2026-12-01T08:00:00Z") == "2026-12-01T08:00:00.000000+00:00"


# --------------------------------------------------------------------------- 6. smaller


def test_a_stream_limit_error_names_the_frame(inference: cad_pb2_grpc.CadInferenceStub) -> None:
    frames = [
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one()),
        cad_pb2.ClassifyRequest(dicom=CT, candidates=one() * 17),
    ]
    details = refused(inference.ClassifyStream, iter(frames), EXHAUSTED)
    assert details.startswith("stream frame 1: ")


def test_a_big_endian_palette_file_renders_like_its_little_endian_twin() -> None:
    little = decode_dicom(dicom_bytes("OBXXXX1A.dcm")).pixels
    big = decode_dicom(dicom_bytes("OBXXXX1A_expb.dcm")).pixels
    assert len(np.unique(big.reshape(-1, 3), axis=0)) > 150  # was 4
    assert np.abs(little.astype(int) - big.astype(int)).max() <= 1


def test_scrub_keeps_keywords_tags_and_numbers_and_hides_values() -> None:
    message = (
        "Invalid value 'SMITH^JOHN' for PhotometricInterpretation (0028,0004): "
        "expected 'MONOCHROME2' in 512 bytes at 'ReferencedImageSequence'"
    )
    cleaned = scrub(message)
    assert "SMITH" not in cleaned
    assert "PhotometricInterpretation" in cleaned and "(0028,0004)" in cleaned
    assert "512" in cleaned and "'ReferencedImageSequence'" in cleaned
    assert "\n" not in scrub("first line\nsecond line: a plugin chain")


def test_the_server_is_serving_and_never_answered_internal(served: ServerThread) -> None:
    with grpc.insecure_channel(served.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    # Every case of this module ran on this server: none became INTERNAL or UNKNOWN.
    for method in ("Classify", "ClassifyStream", "GetAnnotationQueue", "SubmitCorrection",
                   "AddMissedFinding", "ExportLabels", "GetAuditTrail", "GetVersion"):  # fmt: skip
        codes = counts(served, method)
        assert "INTERNAL" not in codes and "UNKNOWN" not in codes, (method, codes)


def counts(served: ServerThread, method: str) -> dict[str, float]:
    return {
        sample.labels["code"]: sample.value
        for metric in served.server.metrics.registry.collect()
        if metric.name == "cad_grpc_requests"
        for sample in metric.samples
        if sample.name == "cad_grpc_requests_total" and sample.labels["method"] == method
    }


def test_an_unknown_photometric_interpretation_is_not_echoed(
    inference: cad_pb2_grpc.CadInferenceStub,
) -> None:
    data = with_raw("SC_rgb_small_odd.dcm", PhotometricInterpretation=SECRET)
    request = cad_pb2.ClassifyRequest(dicom=data, candidates=one(box(0, 0, 2, 2)))
    with pytest.raises(grpc.RpcError) as err:
        inference.Classify(request, timeout=30)
    assert err.value.code() == INVALID and SECRET not in (err.value.details() or "")
