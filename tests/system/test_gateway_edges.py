"""The DICOM gateway at a hospital's edges (issue 37): compressed studies get their results,
one oversized or refused object never holds up the others, only classifiable SOP classes are
classified, only known callers may send, a crash never records an image twice, and an SR goes
soon after its destination is back. Against a real CAD server and a real Orthanc."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, StoragePresentationContexts, build_context

from gateway.app import Gateway
from gateway.frames import frame_count, frame_file, read_header
from gateway.settings import GatewaySettings
from gateway.sr import Finding, model_device_uid, read_findings
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from support.orthanc import free_port
from tests.system.test_gateway import classify_whole_frames, loop, needs_orthanc, wait_for

CINE = "color3d_jpeg_baseline.dcm"
"""pydicom's 120-frame ultrasound cine, JPEG baseline: 6.1 MB compressed, 110 MB decoded."""


def ct_series(count: int, syntax: object | None = None) -> list[Dataset]:
    """``count`` slices of one new CT series (pydicom's CT_small, new UIDs), compressed with
    ``syntax`` when given."""
    study, series = generate_uid(), generate_uid()
    slices = []
    for i in range(count):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        if syntax is not None:
            ds.compress(syntax)
        slices.append(ds)
    return slices


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def associate(port: int, calling: str = "TESTSCU", called: str = "CADGW", contexts=None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.requested_contexts = contexts or StoragePresentationContexts
    return ae.associate("127.0.0.1", port, ae_title=called)


def store_all(port: int, datasets: list[Dataset], calling: str = "TESTSCU") -> list[int]:
    """C-STORE each dataset in one association, proposing its own transfer syntax."""
    contexts = []
    for ds in datasets:
        cx = (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        if cx not in contexts:
            contexts.append(cx)
    assoc = associate(port, calling, contexts=[build_context(a, [t]) for a, t in contexts])
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def image_rows(server: ServerThread) -> int:
    url = server.server.settings.store_url
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return int(db.execute("SELECT count(*) FROM images").fetchone()[0])


# ---------------------------------------------------------------- frames cut from the file


@pytest.mark.parametrize(
    "name",
    ["emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm", "emri_small.dcm", CINE],
)
def test_a_frame_is_cut_from_the_file_as_a_dicom_file_of_its_own_with_the_same_pixels(
    name: str,
) -> None:
    from pydicom.pixels import pixel_array

    path = Path(get_testdata_file(name))
    header = read_header(path)
    whole = dcmread(path)
    frames = frame_count(header)
    for index in (0, frames // 2, frames - 1):
        one = dcmread(io.BytesIO(frame_file(path, header, index)))
        assert int(one.NumberOfFrames) == 1
        assert one.file_meta.TransferSyntaxUID == whole.file_meta.TransferSyntaxUID  # still packed
        np.testing.assert_array_equal(pixel_array(one), pixel_array(whole, index=index))
    cut = len(frame_file(path, header, frames - 1))
    assert cut < 2 * path.stat().st_size / frames + 64 * 1024  # one frame, not the object


# ---------------------------------------------------------------- compressed studies


@pytest.mark.slow
@needs_orthanc
def test_a_compressed_series_routed_by_orthanc_gets_one_sr_per_image_with_the_servers_answers(
    tmp_path: Path,
) -> None:
    series = (
        ct_series(3, JPEG2000Lossless) + ct_series(2, JPEGLSLossless) + ct_series(2, RLELossless)
    )
    with loop(tmp_path) as world:
        for ds in series:
            world.orthanc.post("/instances", part10(ds))
        wait_for(lambda: len(world.orthanc.reports()) == 3, "an SR for each of the 3 series")
        reports = [dcmread(io.BytesIO(b)) for b in world.orthanc.reports()]
        by_source = {}
        for sr in reports:  # one result object per series, each image's finding in it
            found = read_findings(sr)
            series_of = {ds.SOPInstanceUID: ds.SeriesInstanceUID for ds in series}
            (one_series,) = {series_of[uid] for uid, *_ in found}
            assert len(found) == sum(ds.SeriesInstanceUID == one_series for ds in series)
            for uid, _, _, p, _ in found:
                by_source[uid] = p
            assert sr.SeriesDescription == "CAD results, cad-aift model v1"
            (algorithm,) = [
                e for e in sr.ContributingEquipmentSequence if e.ManufacturerModelName == "cad-aift"
            ]
            assert algorithm.DeviceUID == model_device_uid("1")
            assert algorithm.SoftwareVersions == "model v1"
        assert sorted(by_source) == sorted(ds.SOPInstanceUID for ds in series)  # one each
        uncompressed = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        (expected,) = classify_whole_frames(world.server.address, uncompressed, 1, (128, 128))
        for p in by_source.values():  # lossless: the same pixels, the same answer
            assert p == pytest.approx(expected, abs=1e-6)
        assert world.gateway.stats.set_aside == {}


# ---------------------------------------------------------------- no head-of-line blocking


@pytest.mark.slow
def test_a_long_cine_is_sent_frame_by_frame_and_the_images_behind_it_are_not_held_up(
    tmp_path: Path,
) -> None:
    cine = dcmread(get_testdata_file(CINE))
    behind = ct_series(10)
    # a message limit below the cine's 6 MB: sending the whole file with each frame is refused
    with loop(
        tmp_path,
        start_orthanc=False,
        server={"max_message_bytes": 4 * 1024 * 1024},
        destination="",
        frames_per_turn=8,
        sr_grouping="image",  # an SR per image: when each was classified shows in the outbox
    ) as world:
        assert store_all(world.gateway.port, [cine, *behind]) == [0] * 11
        outbox = world.gateway.outbox

        def cine_done() -> bool:
            return not any(world.gateway.inbox.glob("*.dcm"))

        wait_for(lambda: len(list(outbox.glob("*.dcm"))) >= 10 or cine_done(), "CT SRs")
        assert not cine_done(), "the ten CT slices waited for the whole cine"
        wait_for(cine_done, "the cine's SR", timeout_s=300)
        wait_for(lambda: len(list(outbox.glob("*.dcm"))) == 11, "11 SRs")
        found = [f for p in outbox.glob("*.dcm") for f in read_findings(dcmread(p))]
        on_cine = [frame for uid, frame, _, _, _ in found if uid == cine.SOPInstanceUID]
        assert sorted(on_cine) == list(range(1, 121))  # every frame classified, each once
        assert world.gateway.stats.set_aside == {}


@pytest.mark.slow
def test_an_object_the_server_refuses_is_set_aside_at_once_with_its_reason_and_counted(
    tmp_path: Path,
) -> None:
    cine = dcmread(get_testdata_file(CINE))  # 640 x 480 frames: over this server's pixel limit
    behind = ct_series(3)
    with loop(
        tmp_path,
        start_orthanc=False,
        server={"max_image_pixels": 200 * 200},
        destination="",
    ) as world:
        assert store_all(world.gateway.port, [cine, *behind]) == [0] * 4
        wait_for(lambda: len(list(world.gateway.outbox.glob("*.dcm"))) == 1, "the CT SR")
        (sr,) = [dcmread(p) for p in world.gateway.outbox.glob("*.dcm")]
        assert sorted(uid for uid, *_ in read_findings(sr)) == sorted(
            ds.SOPInstanceUID for ds in behind
        )
        wait_for(lambda: world.gateway.stats.set_aside, "the cine set aside")
        assert world.gateway.stats.set_aside == {"resource_exhausted": 1}
        assert world.gateway.stats.retries == 0  # refused for good: never retried
        (kept,) = world.gateway.failed.glob("*.dcm")
        assert kept.with_suffix(".reason").read_text() == "resource_exhausted"
        metrics = world.gateway.metrics.registry.get_sample_value(
            "cad_gateway_set_aside_total", {"reason": "resource_exhausted"}
        )
        assert metrics == 1


def test_set_aside_objects_are_deleted_after_their_retention(tmp_path: Path) -> None:
    gateway = Gateway(
        GatewaySettings(spool_dir=tmp_path, failed_retention_days=1.0, metrics_port=-1)
    )
    old, new = gateway.failed / "old.dcm", gateway.failed / "new.dcm"
    for path in (old, new, old.with_suffix(".reason")):
        path.write_bytes(b"x")
    two_days_ago = old.stat().st_mtime - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(old.with_suffix(".reason"), (two_days_ago, two_days_ago))
    gateway.classifier.purge_set_aside()
    assert sorted(p.name for p in gateway.failed.iterdir()) == ["new.dcm"]
    gateway.channel.close()


# ---------------------------------------------------------------- what is classified


def other_objects() -> list[Dataset]:
    """Objects a PACS routes that are not images the server classifies: RT Dose and ECG from
    pydicom's files; a Segmentation, a presentation state and an encapsulated PDF made here."""
    objects = [
        dcmread(get_testdata_file("rtdose.dcm")),
        dcmread(get_testdata_file("waveform_ecg.dcm")),
    ]
    for sop_class in (
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    ):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        objects.append(ds)
    pdf = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    pdf.SOPClassUID = pdf.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.Modality = "DOC"
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    objects.append(pdf)
    for ds in objects:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return objects


@pytest.mark.slow
def test_objects_that_are_not_classifiable_images_are_acknowledged_ignored_and_counted(
    tmp_path: Path,
) -> None:
    objects = other_objects()
    with loop(tmp_path, start_orthanc=False, destination="") as world:
        image = ct_series(1)
        assert store_all(world.gateway.port, [*objects, *image]) == [0] * (len(objects) + 1)
        wait_for(lambda: len(list(world.gateway.outbox.glob("*.dcm"))) == 1, "the image's SR")
        assert world.gateway.stats.ignored == len(objects) == 5
        assert world.gateway.stats.received == 1 and world.gateway.stats.failed == 0
        assert not any(world.gateway.failed.iterdir())  # no patient data left behind
        assert image_rows(world.server) == 1  # only the image reached the label store
        count = world.gateway.metrics.registry.get_sample_value(
            "cad_gateway_ignored_total", {"reason": "sop_class"}
        )
        assert count == 5


# ---------------------------------------------------------------- who may send


def test_only_allowed_callers_calling_the_gateways_own_title_may_associate(
    tmp_path: Path,
) -> None:
    settings = GatewaySettings(
        port=0,
        spool_dir=tmp_path,
        calling_aes="ORTHANC, MODALITY1",
        metrics_port=-1,
        server="127.0.0.1:1",
    )
    with Gateway(settings) as gateway:
        stranger = associate(gateway.port, calling="TESTSCU")
        assert stranger.is_rejected
        wrong_title = associate(gateway.port, calling="ORTHANC", called="SOMEONEELSE")
        assert wrong_title.is_rejected
        allowed = associate(gateway.port, calling="MODALITY1")
        assert allowed.is_established
        allowed.release()
        wait_for(lambda: gateway.stats.refused_associations == 2, "the refusals counted")
        registry = gateway.metrics.registry
        assert (
            registry.get_sample_value(
                "cad_gateway_associations_refused_total", {"reason": "calling_ae"}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "cad_gateway_associations_refused_total", {"reason": "called_ae"}
            )
            == 1
        )


# ---------------------------------------------------------------- recorded once


def test_a_classify_retried_with_its_idempotency_key_is_answered_and_recorded_once(
    tmp_path: Path,
) -> None:
    publish_tiny(tmp_path / "registry", tmp_path / "build", recipe="frame")
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()

    def request(key: str) -> cad_pb2.ClassifyRequest:
        return cad_pb2.ClassifyRequest(
            dicom=data,
            idempotency_key=key,
            candidates=[cad_pb2.Candidate(box=cad_pb2.Box(x=0, y=0, width=128, height=128))],
        )

    with ServerThread(make_settings(tmp_path / "registry")) as server:
        server.refresh_models()
        with grpc.insecure_channel(server.address) as channel:
            stub = cad_pb2_grpc.CadInferenceStub(channel)
            first, again = stub.Classify(request("k-1")), stub.Classify(request("k-1"))
            other, plain = stub.Classify(request("k-2")), stub.Classify(request(""))
        assert first.request_id == again.request_id
        assert [r.candidate_id for r in first.results] == [r.candidate_id for r in again.results]
        assert len({first.request_id, other.request_id, plain.request_id}) == 3
        assert image_rows(server) == 3  # k-1 once, k-2, and the request without a key


class Crash(BaseException):
    """The gateway process dying between the server's answer and its SR (kill -9)."""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_image_classified_again_after_a_gateway_crash_is_recorded_once(tmp_path: Path) -> None:
    with loop(tmp_path, start_orthanc=False, destination="") as world:
        gateway = world.gateway
        real = gateway.stub.Classify
        crashed = threading.Event()

        def classify_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
            real(*args, **kwargs)  # the server has classified and recorded it
            crashed.set()
            raise Crash

        gateway.stub.Classify = classify_then_die  # type: ignore[method-assign]
        assert store_all(gateway.port, ct_series(1)) == [0]
        wait_for(crashed.is_set, "the classification before the crash")
        for thread in gateway._threads:
            thread.join(30)  # the classifying thread died with the "crash"
        assert image_rows(world.server) == 1 and not any(gateway.outbox.iterdir())
        gateway.stop()  # what was left of the process
        restarted = Gateway(gateway.settings)  # the same folders, as after a restart
        with restarted:
            wait_for(lambda: restarted.stats.classified == 1, "the image classified again")
            wait_for(lambda: any(restarted.outbox.glob("*.dcm")), "its SR")
        assert image_rows(world.server) == 1  # recorded once, not twice
        assert len(list(restarted.outbox.glob("*.dcm"))) == 1


# ---------------------------------------------------------------- SRs go soon after an outage


def test_an_sr_is_retried_within_seconds_however_long_the_destination_was_away(
    tmp_path: Path,
) -> None:
    gateway = Gateway(
        GatewaySettings(
            spool_dir=tmp_path,
            destination=f"PACS@127.0.0.1:{free_port()}",  # nothing listens there
            retry_max_s=60.0,
            send_retry_max_s=5.0,
            metrics_port=-1,
        )
    )
    (gateway.outbox / "1-sr.dcm").write_bytes(part10(ct_series(1)[0]))
    waits: list[float] = []

    def record(seconds: float) -> None:  # the waits the sender plans, without waiting
        waits.append(seconds)
        if len(waits) >= 12:
            gateway.spool.stop.set()

    gateway.spool.wait = record  # type: ignore[method-assign]
    gateway.sender.loop()
    assert gateway.stats.send_failures == 12
    assert max(waits) == 5.0  # never a minute: the first SR goes within 5 s of the return
    gateway.channel.close()


# ---------------------------------------------------------------- stored while the gateway was down


@pytest.mark.slow
@needs_orthanc
def test_every_image_stored_in_the_pacs_gets_exactly_one_sr_across_a_kill_9_mid_burst(
    tmp_path: Path,
) -> None:
    """A real ``cad dicom-gateway`` process, killed with SIGKILL after a third of a 30-image burst
    routed by Orthanc's shipped route.lua; the rest of the burst is stored while it is down, then
    it is started again: it catches up through Orthanc's change log."""
    import signal
    import subprocess
    import sys

    from support.orthanc import Orthanc
    from tests.review_world import TOKENS, token_file

    publish_tiny(tmp_path / "registry", tmp_path / "build", recipe="frame")
    settings = make_settings(
        tmp_path / "registry", auth_tokens_file=token_file(tmp_path / "tokens.json")
    )
    (tmp_path / "gateway-token").write_text(TOKENS["tower-3"])
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", port)
    spool = tmp_path / "gateway"
    burst = ct_series(30)
    log = (tmp_path / "gateway.log").open("ab")

    with ServerThread(settings) as server:
        server.refresh_models()
        env = {
            **os.environ,
            "CAD_GATEWAY_PORT": str(port),
            "CAD_GATEWAY_SERVER": server.address,
            "CAD_GATEWAY_TOKEN_FILE": str(tmp_path / "gateway-token"),
            "CAD_GATEWAY_DESTINATION": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "CAD_GATEWAY_SPOOL_DIR": str(spool),
            "CAD_GATEWAY_METRICS_PORT": "-1",
            "CAD_GATEWAY_CALLING_AES": "ORTHANC",
            "CAD_GATEWAY_CATCH_UP": orthanc.url,
            "CAD_GATEWAY_CATCH_UP_INTERVAL_S": "1",
            "CAD_GATEWAY_CATCH_UP_DELAY_S": "2",
            "CAD_GATEWAY_RETRY_MAX_S": "1",
            "CAD_GATEWAY_SEND_RETRY_MAX_S": "1",
            "CAD_GATEWAY_SERIES_QUIET_S": "1",
        }

        def start_gateway() -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                [sys.executable, "-m", "cadcli.main", "dicom-gateway"],
                env=env,
                stdout=log,
                stderr=log,
            )

            def answers() -> bool:
                assert process.poll() is None, (tmp_path / "gateway.log").read_text()[-2000:]
                assoc = associate(port, calling="ORTHANC")
                if assoc.is_established:
                    assoc.release()
                    return True
                return False

            wait_for(answers, "the gateway answering")
            return process

        try:
            orthanc.start()
            gateway = start_gateway()
            wait_for((spool / "catchup-cursor").exists, "the catch-up's cursor at the log's end")
            for ds in burst[:10]:
                orthanc.post("/instances", part10(ds))
            wait_for(
                lambda: len(list((spool / "results").glob("*/*.json"))) >= 3,
                "the first images classified",
            )
            gateway.send_signal(signal.SIGKILL)  # mid-burst: some classified, some not
            gateway.wait(30)
            for ds in burst[10:]:  # stored while the gateway is down: route.lua's push fails
                orthanc.post("/instances", part10(ds))
            gateway = start_gateway()

            def sources() -> list[str]:
                reports = [dcmread(io.BytesIO(b)) for b in orthanc.reports()]
                return [uid for sr in reports for uid, _, _, _, _ in read_findings(sr)]

            wait_for(lambda: len(sources()) >= 30, "an SR for every image", 180)
            reports = [dcmread(io.BytesIO(b)) for b in orthanc.reports()]
            assert sorted(sources()) == sorted(ds.SOPInstanceUID for ds in burst)  # one each
            assert image_rows(server) == 30  # and each recorded once in the label store
            assert len({sr.SeriesInstanceUID for sr in reports}) == 1  # one results series
            caught = (tmp_path / "gateway.log").read_text().count("caught up with an instance")
            assert caught >= 1  # what route.lua's push lost came through the change log
            print(f"kill -9 mid-burst: 30/30 images, {len(reports)} SR(s), {caught} caught up")
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(30)
        finally:
            if "gateway" in locals() and gateway.poll() is None:
                gateway.kill()
            orthanc.stop()


def test_a_series_whose_sr_cannot_be_built_is_set_aside_and_the_others_get_theirs(
    tmp_path: Path,
) -> None:
    gateway = Gateway(GatewaySettings(spool_dir=tmp_path, series_quiet_s=0.01, metrics_port=-1))
    ct = Path(get_testdata_file("CT_small.dcm"))
    gateway.classifier.keep_result(ct, "4", 1.0, [Finding(0, 0, 0, 128, 128, 0.25)])
    broken = gateway.results / "broken"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"not DICOM")
    (broken / "x.json").write_text(
        '{"series": "9.9", "version": "4", "received": 1.0, "findings": [[0, 0, 0, 8, 8, 0.5]]}'
    )
    for path in gateway.results.glob("*/*"):
        os.utime(path, (1.0, 1.0))  # long quiet
    assert gateway.classifier.flush_results()
    (sr,) = [dcmread(p) for p in gateway.outbox.glob("*.dcm")]
    assert [uid for uid, *_ in read_findings(sr)] == [dcmread(ct).SOPInstanceUID]
    assert gateway.stats.set_aside == {"sr": 1}
    assert (gateway.failed / "results-broken.reason").read_text() == "sr"
    assert not any(gateway.results.iterdir())
    gateway.channel.close()
