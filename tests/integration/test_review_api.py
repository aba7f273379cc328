"""CadReview over real gRPC: corrections, missed findings, queue, export, archive, metrics."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest

from cad.aift import Box, parse_recipe
from cad.aift.patches import extract_many
from cad.imaging import Window, decode_dicom
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes


def classify(channel: grpc.Channel, n: int = 3) -> cad_pb2.ClassifyResponse:
    return cad_pb2_grpc.CadInferenceStub(channel).Classify(
        cad_pb2.ClassifyRequest(
            dicom=dicom_bytes("CT_small.dcm"),
            window=cad_pb2.Window(center=40, width=400),
            source_id="ws-7",
            candidates=[
                cad_pb2.Candidate(
                    client_id=f"c{i}", box=cad_pb2.Box(x=10 + 25 * i, y=20, width=24, height=30)
                )
                for i in range(n)
            ],
        ),
        timeout=30,
    )


def test_correction_flow_and_statuses(channel: grpc.Channel) -> None:
    response = classify(channel)
    review = cad_pb2_grpc.CadReviewStub(channel)
    cid = response.results[0].candidate_id
    correction = cad_pb2.Correction(
        candidate_id=cid, verdict=cad_pb2.FALSE_POSITIVE, reviewer="dr.a", idempotency_key="k1"
    )
    receipt = review.SubmitCorrection(correction, timeout=10)
    assert receipt.label == cad_pb2.NEGATIVE and receipt.label_before == cad_pb2.UNLABELED
    assert receipt.candidate_id == cid and receipt.event_id and not receipt.replayed
    again = review.SubmitCorrection(correction, timeout=10)
    assert again.replayed and again.event_id == receipt.event_id

    def code(request: cad_pb2.Correction) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            review.SubmitCorrection(request, timeout=10)
        return err.value.code()

    assert (
        code(cad_pb2.Correction(candidate_id="nope", verdict=cad_pb2.TRUE_POSITIVE, reviewer="a"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code(cad_pb2.Correction(candidate_id=cid, reviewer="a")) == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code(cad_pb2.Correction(candidate_id=cid, verdict=cad_pb2.TRUE_POSITIVE))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code(
            cad_pb2.Correction(
                candidate_id=cid, verdict=cad_pb2.TRUE_POSITIVE, reviewer="a", note="x" * 5000
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    changed = cad_pb2.Correction(
        candidate_id=cid, verdict=cad_pb2.TRUE_POSITIVE, reviewer="dr.a", idempotency_key="k1"
    )
    assert code(changed) == grpc.StatusCode.ALREADY_EXISTS


def test_missed_finding_queue_and_export(server: ServerThread, channel: grpc.Channel) -> None:
    response = classify(channel, n=4)
    review = cad_pb2_grpc.CadReviewStub(channel)
    missed = review.AddMissedFinding(
        cad_pb2.MissedFinding(
            request_id=response.request_id,
            box=cad_pb2.Box(x=60, y=60, width=20, height=20),
            reviewer="dr.b",
            idempotency_key="m1",
        ),
        timeout=10,
    )
    assert missed.label == cad_pb2.POSITIVE and missed.candidate_id.startswith(response.request_id)
    for bad, expected in (
        (
            cad_pb2.MissedFinding(
                request_id="nope", box=cad_pb2.Box(x=1, y=1, width=2, height=2), reviewer="a"
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            cad_pb2.MissedFinding(
                request_id=response.request_id,
                box=cad_pb2.Box(x=1, y=1, width=0, height=2),
                reviewer="a",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            cad_pb2.MissedFinding(
                request_id=response.request_id,
                box=cad_pb2.Box(x=120, y=1, width=20, height=2),
                reviewer="a",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            review.AddMissedFinding(bad, timeout=10)
        assert err.value.code() == expected

    queue = review.GetAnnotationQueue(cad_pb2.QueueRequest(limit=3), timeout=10)
    assert queue.variant == "entropy_alpha" and queue.unlabeled == 4 and len(queue.items) == 3
    by_id = {r.candidate_id: r for r in response.results}
    for item in queue.items:
        assert item.request_id == response.request_id and item.source_id == "ws-7"
        assert item.score == pytest.approx(by_id[item.candidate_id].score, rel=1e-4)
    assert [i.score for i in queue.items] == sorted((i.score for i in queue.items), reverse=True)
    top = queue.items[0].candidate_id
    review.SubmitCorrection(
        cad_pb2.Correction(candidate_id=top, verdict=cad_pb2.TRUE_POSITIVE, reviewer="dr.a"),
        timeout=10,
    )
    assert (
        review.GetAnnotationQueue(
            cad_pb2.QueueRequest(limit=10, variant="random"), timeout=10
        ).unlabeled
        == 3
    )

    exported = list(review.ExportLabels(cad_pb2.ExportRequest(), timeout=10))
    assert {e.candidate_id for e in exported} == {missed.candidate_id, top}
    origins = {e.candidate_id: e.origin for e in exported}
    assert origins[missed.candidate_id] == "missed" and origins[top] == "model"
    image = exported[0]
    assert (image.image_width, image.image_height) == (128, 128) and len(image.image_sha256) == 64

    # The archive lets the trainer regenerate exactly the patches the server saw.
    archived = server.server.archive.get(image.image_sha256)
    seen = decode_dicom(dicom_bytes("CT_small.dcm"), 0, Window(40, 400)).pixels
    np.testing.assert_array_equal(archived, seen)
    box = Box(10, 20, 24, 30)
    np.testing.assert_array_equal(
        extract_many(archived, [box], parse_recipe("polyp"), 32),
        extract_many(seen, [box], parse_recipe("polyp"), 32),
    )


def test_the_same_image_is_archived_once(server: ServerThread, channel: grpc.Channel) -> None:
    a, b = classify(channel), classify(channel)
    assert a.request_id != b.request_id
    store = server.server.store
    assert store.get_image(a.request_id).sha256 == store.get_image(b.request_id).sha256
    assert len(list(server.server.archive.root.rglob("*.png"))) == 1


def test_review_metrics_in_a_scrape(server: ServerThread, channel: grpc.Channel) -> None:
    response = classify(channel)
    review = cad_pb2_grpc.CadReviewStub(channel)
    ids = [r.candidate_id for r in response.results]
    review.SubmitCorrection(
        cad_pb2.Correction(candidate_id=ids[0], verdict=cad_pb2.TRUE_POSITIVE, reviewer="a"),
        timeout=10,
    )
    review.SubmitCorrection(
        cad_pb2.Correction(candidate_id=ids[1], verdict=cad_pb2.FALSE_POSITIVE, reviewer="a"),
        timeout=10,
    )
    review.SubmitCorrection(
        cad_pb2.Correction(candidate_id=ids[1], verdict=cad_pb2.TRUE_POSITIVE, reviewer="b"),
        timeout=10,
    )
    review.AddMissedFinding(
        cad_pb2.MissedFinding(
            request_id=response.request_id,
            box=cad_pb2.Box(x=1, y=1, width=9, height=9),
            reviewer="b",
        ),
        timeout=10,
    )
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    for needle in (
        'cad_corrections_total{verdict="true_positive"} 2.0',
        'cad_corrections_total{verdict="false_positive"} 1.0',
        "cad_missed_findings_total 1.0",
        "cad_label_conflicts_total 1.0",
        "cad_annotation_queue_depth 1.0",
        'cad_model_live_precision{version="1"} 1.0',
        'cad_model_reviewed_candidates{label="confirmed",version="1"} 2.0',
    ):
        assert needle in text, needle


def test_review_image_returns_the_archived_pixels_and_every_candidate(
    server: ServerThread, channel: grpc.Channel
) -> None:
    import io

    from PIL import Image

    response = classify(channel, n=3)
    review = cad_pb2_grpc.CadReviewStub(channel)
    first = response.results[0].candidate_id
    review.SubmitCorrection(
        cad_pb2.Correction(candidate_id=first, verdict=cad_pb2.TRUE_POSITIVE, reviewer="dr.a"),
        timeout=10,
    )
    missed = review.AddMissedFinding(
        cad_pb2.MissedFinding(
            request_id=response.request_id,
            box=cad_pb2.Box(x=60, y=60, width=20, height=20),
            reviewer="dr.b",
        ),
        timeout=10,
    )
    image = review.GetReviewImage(
        cad_pb2.ReviewImageRequest(request_id=response.request_id), timeout=10
    )
    pixels = np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"))
    expected = decode_dicom(dicom_bytes("CT_small.dcm"), 0, Window(40, 400)).pixels
    np.testing.assert_array_equal(pixels, expected)  # the windowed image the model saw
    assert (image.width, image.height) == (expected.shape[1], expected.shape[0])
    assert image.model_version == response.model_version and image.recipe == response.recipe
    by_id = {c.candidate_id: c for c in image.candidates}
    assert set(by_id) == {r.candidate_id for r in response.results} | {missed.candidate_id}
    for r in response.results:
        c = by_id[r.candidate_id]
        assert c.HasField("probability") and abs(c.probability - r.probability) < 1e-6
        # The stored AIFT terms are read back as the classifier computed them.
        assert (c.score, c.entropy, c.diversity) == pytest.approx(
            (r.score, r.entropy, r.diversity), rel=1e-6, abs=1e-7
        )
        assert c.origin == "model" and c.model_version == response.model_version
    assert by_id[first].label == cad_pb2.POSITIVE and by_id[first].labeled_by == "dr.a"
    unlabeled = by_id[response.results[1].candidate_id]
    assert unlabeled.label == cad_pb2.UNLABELED and unlabeled.labeled_by == ""
    drawn = by_id[missed.candidate_id]
    assert drawn.origin == "missed" and not drawn.HasField("probability")
    assert drawn.label == cad_pb2.POSITIVE and drawn.labeled_by == "dr.b"
    assert (drawn.box.x, drawn.box.y, drawn.box.width, drawn.box.height) == (60, 60, 20, 20)


def test_review_image_of_a_png_is_the_upload_without_its_metadata(channel: grpc.Channel) -> None:
    import io

    from PIL import Image, PngImagePlugin

    from cad.encoded import png_image_chunks

    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "SMITH^JOHN")
    buffer = io.BytesIO()
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, format="PNG", pnginfo=info)
    upload = buffer.getvalue()
    response = cad_pb2_grpc.CadInferenceStub(channel).Classify(
        cad_pb2.ClassifyRequest(
            encoded=upload,
            candidates=[cad_pb2.Candidate(box=cad_pb2.Box(x=5, y=5, width=20, height=20))],
        ),
        timeout=30,
    )
    image = cad_pb2_grpc.CadReviewStub(channel).GetReviewImage(
        cad_pb2.ReviewImageRequest(request_id=response.request_id), timeout=10
    )
    assert image.png == png_image_chunks(upload) and b"SMITH" not in image.png
    assert (image.width, image.height) == (64, 48)


def test_review_image_of_an_unknown_request_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cad_pb2_grpc.CadReviewStub(channel).GetReviewImage(
            cad_pb2.ReviewImageRequest(request_id="no-such-request"), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_review_stats_count_the_queue_and_each_versions_verdicts(channel: grpc.Channel) -> None:
    review = cad_pb2_grpc.CadReviewStub(channel)
    empty = review.GetReviewStats(cad_pb2.ReviewStatsRequest(), timeout=10)
    assert (empty.reviewer, empty.unlabeled, list(empty.versions)) == ("", 0, [])
    response = classify(channel, n=3)
    verdicts = [cad_pb2.TRUE_POSITIVE, cad_pb2.FALSE_POSITIVE]
    for result, verdict in zip(response.results, verdicts, strict=False):
        review.SubmitCorrection(
            cad_pb2.Correction(candidate_id=result.candidate_id, verdict=verdict, reviewer="dr.a"),
            timeout=10,
        )
    review.AddMissedFinding(  # a missed finding is not the model's: no precision change
        cad_pb2.MissedFinding(
            request_id=response.request_id,
            box=cad_pb2.Box(x=60, y=60, width=20, height=20),
            reviewer="dr.a",
        ),
        timeout=10,
    )
    stats = review.GetReviewStats(cad_pb2.ReviewStatsRequest(), timeout=10)
    assert stats.reviewer == "" and stats.unlabeled == 1
    (version,) = stats.versions
    assert (version.model_version, version.confirmed, version.dismissed) == ("1", 1, 1)
