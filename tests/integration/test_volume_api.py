"""ClassifyVolume through a real gRPC server: a CT series streamed in, 3D candidates classified
with vessel-aligned patches, and every malformed upload answered with a status."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cad.aift.vessel import extract_pe_patches
from cad.models.registry import ModelRegistry
from cad.series import assemble_series
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.ctpa import rotation, series_bytes, tube_volume
from support.helpers import dicom_bytes, make_settings, publish_tiny
from tests.ct import edited_instance, real_ct_series

SIZE = 32
DIRECTION = (0.3, -0.5, 0.81)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("volumes")
    publish_tiny(tmp / "registry", tmp / "build", size=SIZE, spatial=True)
    return tmp / "registry"


@pytest.fixture(scope="module")
def served(registry_dir: Path) -> Iterator[ServerThread]:
    settings = make_settings(registry_dir, max_series_bytes=3_000_000, max_candidates=8)
    with ServerThread(settings) as running:
        running.refresh_models()
        yield running


@pytest.fixture(scope="module")
def stub(served: ServerThread) -> Iterator[cad_pb2_grpc.CadInferenceStub]:
    with grpc.insecure_channel(served.address) as channel:
        yield cad_pb2_grpc.CadInferenceStub(channel)


@pytest.fixture(scope="module")
def tube() -> tuple[list[bytes], np.ndarray, np.ndarray, np.ndarray]:
    aff = np.eye(4)
    aff[:3, :3] = rotation([1.0, 2.0, 3.0], 0.4) * np.array([0.6, 0.8, 2.0])
    aff[:3, 3] = (-20.0, 10.0, 5.0)
    shape = (20, 50, 67)
    hu, centre, direction = tube_volume(shape, aff, [33, 24.5, 9.5], DIRECTION)
    return series_bytes(hu, aff), centre, direction, aff


def upload(header: cad_pb2.VolumeHeader, instances: list[bytes], per_message: int = 7):
    yield cad_pb2.VolumeChunk(header=header, instances=instances[:per_message])
    for start in range(per_message, len(instances), per_message):
        yield cad_pb2.VolumeChunk(instances=instances[start : start + per_message])


def p3(v) -> cad_pb2.Point3D:
    return cad_pb2.Point3D(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def test_a_series_and_3d_candidates_come_back_classified(
    stub: cad_pb2_grpc.CadInferenceStub, registry_dir: Path, tube
) -> None:
    data, centre, direction, aff = tube
    lung = centre + 9.0 * np.cross(direction, [0.0, 0.0, 1.0])  # beside the vessel
    voxel = np.linalg.solve(aff[:3, :3], centre + 6 * direction - aff[:3, 3])
    header = cad_pb2.VolumeHeader(
        recipe="pe",
        source_id="ctpa-1",
        candidates=[
            cad_pb2.VolumeCandidate(client_id="clot", patient_mm=p3(centre)),
            cad_pb2.VolumeCandidate(
                client_id="by-voxel", voxel=p3(voxel), vessel_direction=p3(-direction)
            ),
            cad_pb2.VolumeCandidate(client_id="lung", patient_mm=p3(lung)),
        ],
    )
    reply = stub.ClassifyVolume(upload(header, data[::-1]), timeout=60)  # any file order
    assert (reply.slices, reply.rows, reply.columns) == (20, 50, 67)
    assert list(reply.spacing_mm) == pytest.approx([0.6, 0.8, 2.0], abs=1e-5)
    assert reply.recipe == "pe" and [r.client_id for r in reply.results] == [
        "clot",
        "by-voxel",
        "lung",
    ]
    clot, by_voxel, lung_result = reply.results
    assert all(r.patches == 54 for r in reply.results)
    # The axis: estimated at the clot and said so; the given one used as given (unit, sign fixed).
    est = np.array([clot.vessel_direction.x, clot.vessel_direction.y, clot.vessel_direction.z])
    assert clot.direction_estimated and clot.direction_scale_mm > 0
    assert math.degrees(math.acos(min(1.0, abs(est @ direction)))) < 3.0
    given = by_voxel.vessel_direction
    assert not by_voxel.direction_estimated
    assert [given.x, given.y, given.z] == pytest.approx(list(direction), abs=1e-6)
    # Voxel and patient coordinates agree both ways.
    assert [by_voxel.patient_mm.x, by_voxel.patient_mm.y, by_voxel.patient_mm.z] == (
        pytest.approx(list(centre + 6 * direction), abs=1e-4)
    )
    assert [clot.voxel.x, clot.voxel.y, clot.voxel.z] == pytest.approx([33, 24.5, 9.5], abs=1e-4)
    # The probability is the mean over the served model of exactly these patches.
    import onnxruntime as ort

    registry = ModelRegistry(registry_dir, "cad")
    session = ort.InferenceSession(
        str(registry.get(registry.latest()).path / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    volume = assemble_series(data)
    patches = extract_pe_patches(volume, centre, est, 54, SIZE)
    probs = session.run(None, {session.get_inputs()[0].name: patches})[0]
    assert clot.probability == pytest.approx(float(probs[:, 1].mean()), abs=1e-5)
    assert len({round(r.probability, 6) for r in reply.results}) == 3  # content matters


def test_a_series_over_the_byte_limit_is_refused_while_streaming(
    stub: cad_pb2_grpc.CadInferenceStub,
) -> None:
    data = real_ct_series(4)  # ~40 KB each: 100 of them pass the module's 3 MB
    header = cad_pb2.VolumeHeader(
        candidates=[cad_pb2.VolumeCandidate(client_id="a", voxel=p3([1, 1, 1]))]
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyVolume(upload(header, data * 25, per_message=4), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CAD_MAX_SERIES_BYTES" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("no header", grpc.StatusCode.INVALID_ARGUMENT, "first message must carry the header"),
        ("two headers", grpc.StatusCode.INVALID_ARGUMENT, "two headers"),
        ("empty", grpc.StatusCode.INVALID_ARGUMENT, "upload is empty"),
        ("no candidates", grpc.StatusCode.INVALID_ARGUMENT, "no candidates"),
        ("outside", grpc.StatusCode.INVALID_ARGUMENT, "lies outside the volume"),
        ("no location", grpc.StatusCode.INVALID_ARGUMENT, "patient_mm or as voxel"),
        ("zero direction", grpc.StatusCode.INVALID_ARGUMENT, "not all 0"),
        ("polyp recipe", grpc.StatusCode.INVALID_ARGUMENT, "volume recipe"),
        ("missing slice", grpc.StatusCode.INVALID_ARGUMENT, "missing"),
        ("mixed series", grpc.StatusCode.INVALID_ARGUMENT, "2 series"),
        ("not dicom", grpc.StatusCode.INVALID_ARGUMENT, "not a DICOM"),
        ("too many", grpc.StatusCode.RESOURCE_EXHAUSTED, "CAD_MAX_CANDIDATES"),
    ],
)
def test_every_malformed_upload_gets_a_status(
    stub: cad_pb2_grpc.CadInferenceStub, case: str, code: grpc.StatusCode, says: str
) -> None:
    data = real_ct_series(5)
    one = [cad_pb2.VolumeCandidate(client_id="a", voxel=p3([60, 60, 2]))]
    header = cad_pb2.VolumeHeader(candidates=one)
    messages: list[cad_pb2.VolumeChunk] = [cad_pb2.VolumeChunk(header=header, instances=data)]
    if case == "no header":
        messages = [cad_pb2.VolumeChunk(instances=data)]
    elif case == "two headers":
        messages.append(cad_pb2.VolumeChunk(header=header))
    elif case == "empty":
        messages = []
    elif case == "no candidates":
        messages = [cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader(), instances=data)]
    elif case == "outside":
        far = [cad_pb2.VolumeCandidate(client_id="far", patient_mm=p3([0, 0, 900]))]
        messages = [
            cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader(candidates=far), instances=data)
        ]
    elif case == "no location":
        bare = [cad_pb2.VolumeCandidate(client_id="bare")]
        messages = [
            cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader(candidates=bare), instances=data)
        ]
    elif case == "zero direction":
        zero = [
            cad_pb2.VolumeCandidate(
                client_id="z", voxel=p3([60, 60, 2]), vessel_direction=p3([0, 0, 0])
            )
        ]
        messages = [
            cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader(candidates=zero), instances=data)
        ]
    elif case == "polyp recipe":
        messages = [
            cad_pb2.VolumeChunk(
                header=cad_pb2.VolumeHeader(candidates=one, recipe="polyp"), instances=data
            )
        ]
    elif case == "missing slice":
        messages = [cad_pb2.VolumeChunk(header=header, instances=data[:2] + data[3:])]
    elif case == "mixed series":
        messages = [cad_pb2.VolumeChunk(header=header, instances=data + real_ct_series(1))]
    elif case == "not dicom":
        messages = [cad_pb2.VolumeChunk(header=header, instances=[b"\x00" * 300])]
    elif case == "too many":
        many = one * 9
        messages = [
            cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader(candidates=many), instances=data)
        ]
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyVolume(iter(messages), timeout=60)
    assert err.value.code() == code, err.value.details()
    assert says in (err.value.details() or ""), err.value.details()


def test_a_2d_request_with_the_volume_recipe_is_refused(
    stub: cad_pb2_grpc.CadInferenceStub,
) -> None:
    request = cad_pb2.ClassifyRequest(
        dicom=dicom_bytes("CT_small.dcm"),
        recipe="pe",
        candidates=[cad_pb2.Candidate(client_id="a", box=cad_pb2.Box(x=1, y=1, width=9, height=9))],
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ClassifyVolume" in (err.value.details() or "")


def test_real_ct_candidates_are_classified(stub: cad_pb2_grpc.CadInferenceStub) -> None:
    data = real_ct_series(6)
    header = cad_pb2.VolumeHeader(
        recipe="pe:9",
        candidates=[cad_pb2.VolumeCandidate(client_id="a", voxel=p3([64, 70, 2.5]))],
    )
    reply = stub.ClassifyVolume(upload(header, data), timeout=60)
    assert reply.results[0].patches == 9 and 0 < reply.results[0].probability < 1
    assert reply.results[0].direction_estimated
    assert list(reply.spacing_mm) == pytest.approx([0.661468, 0.661468, 5.0], abs=1e-5)


def test_pe_candidates_are_kept_for_review_and_training(
    served: ServerThread, stub: cad_pb2_grpc.CadInferenceStub, registry_dir: Path, tube
) -> None:
    """A classified series' candidates reach the queue; the review image is their three planes;
    a verdict becomes a label; the trainer cuts the same patches from the archived block."""
    import io

    from PIL import Image

    from cad.aift.vessel import REVIEW_PANEL, review_box
    from cad.labels.archive import ImageArchive
    from cad.labels.store import open_store
    from trainer.data import PatchSource, labeled_examples, unlabeled_examples

    data, centre, direction, _ = tube
    header = cad_pb2.VolumeHeader(
        source_id="ctpa-review",
        candidates=[
            cad_pb2.VolumeCandidate(client_id="clot", patient_mm=p3(centre)),
            cad_pb2.VolumeCandidate(
                client_id="along",
                patient_mm=p3(centre + 7 * direction),
                vessel_direction=p3(direction),
            ),
        ],
    )
    reply = stub.ClassifyVolume(upload(header, data), timeout=60)
    ids = [r.candidate_id for r in reply.results]
    with grpc.insecure_channel(served.address) as channel:
        review = cad_pb2_grpc.CadReviewStub(channel)
        queue = review.GetAnnotationQueue(cad_pb2.QueueRequest(limit=50), timeout=30)
        queued = {item.candidate_id: item for item in queue.items}
        assert set(ids) <= set(queued)
        clot = queued[ids[0]]
        assert clot.request_id == ids[0] and clot.source_id == "ctpa-review"
        shown = review.GetReviewImage(cad_pb2.ReviewImageRequest(request_id=ids[0]), timeout=30)
        picture = np.asarray(Image.open(io.BytesIO(shown.png)).convert("RGB"))
        assert picture.shape == (REVIEW_PANEL, 3 * REVIEW_PANEL, 3)
        # The cross-section: the clot (40 HU) at the centre inside the contrast ring (300 HU).
        c = REVIEW_PANEL // 2
        assert abs(int(picture[c, c, 0]) - round((40 + 250) * 255 / 700)) <= 3
        mm = REVIEW_PANEL / 30  # pixels per mm
        yy, xx = np.mgrid[:REVIEW_PANEL, :REVIEW_PANEL]
        r = np.hypot(yy - c, xx - c) / mm
        ring = picture[:, :REVIEW_PANEL, 0][(r > 2.0) & (r < 3.0)]
        assert ring.max() > picture[c, c, 0] + 50  # brighter contrast around the dark clot
        assert picture[:, :REVIEW_PANEL, 0][r > 6].max() == 0  # lung (-800 HU) below the window
        box = shown.candidates[0].box
        assert (box.x, box.y, box.width, box.height) == pytest.approx(review_box())
        receipt = review.SubmitCorrection(
            cad_pb2.Correction(
                candidate_id=ids[0], verdict=cad_pb2.TRUE_POSITIVE, reviewer="dr.lung"
            ),
            timeout=30,
        )
        assert receipt.event_id
        # A missed clot marked on the first longitudinal view, 4 mm down the vessel: a point.
        down = REVIEW_PANEL / 2 + 4 * mm
        missed = review.AddMissedFinding(
            cad_pb2.MissedFinding(
                request_id=ids[0],
                box=cad_pb2.Box(x=1.5 * REVIEW_PANEL - 5, y=down - 5, width=10, height=10),
                reviewer="dr.lung",
            ),
            timeout=30,
        )
        assert missed.candidate_id.startswith(ids[0] + "-m")
        with pytest.raises(grpc.RpcError) as err:  # 10 mm away: outside what the block holds
            review.AddMissedFinding(
                cad_pb2.MissedFinding(
                    request_id=ids[0],
                    box=cad_pb2.Box(x=c + 10 * mm - 5, y=c - 5, width=10, height=10),
                    reviewer="dr.lung",
                ),
                timeout=30,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "up to 7 mm" in (err.value.details() or "")
    # The trainer's view: the label, and the patches serving cut, again from the archive.
    settings = served.server.settings
    store = open_store(settings.store_url)
    try:
        labeled = [e for e in labeled_examples(store) if e.candidate_id == ids[0]]
        marked = [e for e in labeled_examples(store) if e.candidate_id == missed.candidate_id]
        pool = {e.candidate_id: e for e in unlabeled_examples(store)}
    finally:
        store.close()
    assert len(labeled) == 1 and labeled[0].label == 1 and labeled[0].recipe == "pe"
    assert len(marked) == 1 and marked[0].label == 1 and marked[0].geometry
    assert ids[1] in pool and pool[ids[1]].geometry
    source = PatchSource(ImageArchive(settings.archive_root), SIZE)
    volume = assemble_series(data)
    est = reply.results[0].vessel_direction
    served_patches = extract_pe_patches(volume, centre, [est.x, est.y, est.z], 54, SIZE)
    again = source.patches(labeled[0])
    assert again.shape == served_patches.shape
    assert np.abs(again - served_patches).max() < 1e-2  # 0..255 scale: the same patches
    along = source.patches(pool[ids[1]])
    assert (
        np.abs(
            along - extract_pe_patches(volume, centre + 7 * direction, direction, 54, SIZE)
        ).max()
        < 1e-2
    )
    assert source.key(labeled[0]) != source.key(pool[ids[1]])
    axis = np.array([est.x, est.y, est.z])
    assert (
        np.abs(
            source.patches(marked[0])
            - extract_pe_patches(volume, centre + 4 * axis, axis, 54, SIZE)
        ).max()
        < 1e-2
    )


def _damaged_vr(blob: bytes, tag: tuple[int, int], vr: bytes) -> bytes:
    """``blob`` with the two VR bytes of element ``tag`` replaced (explicit VR little endian)."""
    key = tag[0].to_bytes(2, "little") + tag[1].to_bytes(2, "little")
    at = blob.index(key, 132 + 12)  # past the preamble and the file meta's group length
    return blob[: at + 4] + vr + blob[at + 6 :]


ELEMENTS = {
    "Modality": (0x0008, 0x0060),
    "SeriesInstanceUID": (0x0020, 0x000E),
    "ImagePositionPatient": (0x0020, 0x0032),
    "PixelSpacing": (0x0028, 0x0030),
}


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("zero PixelSpacing", "PixelSpacing (0028,0030) that is not two positive"),
        ("negative PixelSpacing", "PixelSpacing (0028,0030) that is not two positive"),
        *[(f"VR XX in {k}", "instance 2: a header attribute could not be read") for k in ELEMENTS],
        *[(f"VR FD in {k}", "") for k in ELEMENTS],  # read as doubles: refused for what they say
        ("RescaleSlope 0", "RescaleSlope (0028,1053) is zero"),
        ("one SOPInstanceUID", "repeat another's SOPInstanceUID"),
        ("two studies", "name 2 studies"),
        ("one slice", "a volume needs at least 2"),
    ],
)
def test_a_damaged_or_inconsistent_series_is_invalid_argument_never_internal(
    stub: cad_pb2_grpc.CadInferenceStub, case: str, says: str
) -> None:
    data = real_ct_series(5)
    if case == "zero PixelSpacing":
        data[2] = edited_instance(data[2], PixelSpacing=[0, 0.66])
    elif case == "negative PixelSpacing":
        data = [edited_instance(b, PixelSpacing=[-0.66, 0.66]) for b in data]
    elif case.startswith("VR "):
        vr, keyword = case.split()[1], case.split()[-1]
        data[2] = _damaged_vr(data[2], ELEMENTS[keyword], vr.encode())
    elif case == "RescaleSlope 0":
        data[2] = edited_instance(data[2], RescaleSlope=0)
    elif case == "one SOPInstanceUID":
        data = [edited_instance(b, SOPInstanceUID="1.2.826.0.1.3680043.99.7") for b in data]
    elif case == "two studies":
        data[3] = edited_instance(data[3], StudyInstanceUID="1.2.826.0.1.3680043.99.8")
    elif case == "one slice":
        data = data[:1]
    one = [cad_pb2.VolumeCandidate(client_id="a", voxel=p3([60, 60, 0]))]
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyVolume(upload(cad_pb2.VolumeHeader(candidates=one), data), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert says in (err.value.details() or ""), err.value.details()


def test_a_cancelled_volume_request_stops_its_work_at_the_next_candidate(
    served: ServerThread, stub: cad_pb2_grpc.CadInferenceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import cad.models.volume_inference as volume_inference

    cancelled_calls = served.server.metrics.registry.get_sample_value
    before = cancelled_calls("cad_requests_cancelled_total") or 0.0
    started, finished = threading.Event(), threading.Event()
    axes: list[int] = []
    ended: list[str] = []
    real_axis = volume_inference.vessel_axis

    def axis(volume, point_mm):  # type: ignore[no-untyped-def]
        axes.append(1)
        if len(axes) == 1:  # the first of 8 candidates: the client cancels meanwhile
            started.set()
            deadline = time.monotonic() + 60
            while (cancelled_calls("cad_requests_cancelled_total") or 0.0) <= before:
                assert time.monotonic() < deadline, "the server never saw the cancellation"
                time.sleep(0.01)
        return real_axis(volume, point_mm)

    real_classify = served.server.volumes.classify

    def classify(request):  # type: ignore[no-untyped-def]
        try:
            return real_classify(request)
        except BaseException as exc:
            ended.append(type(exc).__name__)
            raise
        finally:
            finished.set()

    monkeypatch.setattr(volume_inference, "vessel_axis", axis)
    monkeypatch.setattr(served.server.volumes, "classify", classify)
    eight = [cad_pb2.VolumeCandidate(client_id=f"c{i}", voxel=p3([60, 60, 2])) for i in range(8)]
    call = stub.ClassifyVolume.future(
        upload(cad_pb2.VolumeHeader(candidates=eight), real_ct_series(5)), timeout=60
    )
    assert started.wait(60)
    call.cancel()
    assert finished.wait(60)
    assert ended == ["Cancelled"]  # stopped, not finished for nobody
    assert len(axes) == 1  # no other candidate's axis was estimated after the cancellation


def test_uploads_together_stay_within_the_servers_budget_and_release_it(
    registry_dir: Path, tmp_path: Path
) -> None:
    import threading

    series = real_ct_series(2)  # about 39 KB an instance
    whole = sum(len(blob) for blob in series)  # instances differ by a few bytes (their UIDs)
    budget = whole + whole // 4  # one whole upload and about half another
    settings = make_settings(  # a second server beside the module's: a store of its own
        registry_dir,
        max_series_bytes_in_flight=budget,
        store_url=f"sqlite:///{tmp_path / 'labels.sqlite3'}",
        archive_root=tmp_path / "archive",
    )
    one = [cad_pb2.VolumeCandidate(client_id="a", voxel=p3([60, 60, 0]))]
    go_on = threading.Event()

    def held_open():  # type: ignore[no-untyped-def]
        yield cad_pb2.VolumeChunk(header=cad_pb2.VolumeHeader(candidates=one), instances=series)
        go_on.wait(60)  # the upload stays open, its bytes held, until the other is answered

    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as channel:
        server.refresh_models()
        stub = cad_pb2_grpc.CadInferenceStub(channel)
        first = stub.ClassifyVolume.future(held_open(), timeout=60)
        uploads = server.server.servicer_uploads
        deadline = time.monotonic() + 60
        while uploads.held < whole:  # all of the first upload's bytes have arrived
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stub.ClassifyVolume(upload(cad_pb2.VolumeHeader(candidates=one), series), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "CAD_MAX_SERIES_BYTES_IN_FLIGHT" in (err.value.details() or "")
        go_on.set()
        assert len(first.result(timeout=60).results) == 1  # the first one is classified
        again = stub.ClassifyVolume(
            upload(cad_pb2.VolumeHeader(candidates=one), series), timeout=60
        )
        assert len(again.results) == 1  # once it is done, its bytes are free for the next
        assert uploads.held == 0


def test_a_candidate_on_the_volumes_outer_face_is_inside_and_beyond_it_is_refused(
    stub: cad_pb2_grpc.CadInferenceStub,
) -> None:
    """Inside means within the voxels' own extent: indices -0.5 to size - 0.5 (the proto says
    so); half a voxel beyond the outer centres is the edge, a little more is outside."""
    data = real_ct_series(5)

    def classify(voxel: list[float]) -> cad_pb2.ClassifyVolumeResponse:
        one = [cad_pb2.VolumeCandidate(client_id="edge", voxel=p3(voxel))]
        return stub.ClassifyVolume(upload(cad_pb2.VolumeHeader(candidates=one), data), timeout=60)

    assert len(classify([-0.5, 60, 2]).results) == 1
    assert len(classify([60, 60, 4.5]).results) == 1
    for beyond in ([-0.6, 60, 2], [60, 60, 4.6]):
        with pytest.raises(grpc.RpcError) as err:
            classify(beyond)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outside the volume" in (err.value.details() or "")
