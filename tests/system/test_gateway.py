"""The DICOM gateway: results as TID 1500 SRs that highdicom reads back, and the whole loop
against a real Orthanc (Debian's ``orthanc``): Orthanc routes an image to the gateway, the
gateway classifies it through a real CAD server and stores an SR back into the study."""

from __future__ import annotations

import io
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from gateway.sr import Finding, build_sr, read_findings
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from support.orthanc import (
    ORTHANC,
    ROUTE,
    ROUTE_WITH_REPORTS,
    Orthanc,
    c_echo,
    c_store,
    free_port,
)
from tests.review_world import TOKENS, token_file
from tests.srcheck import sr_problems

needs_orthanc = pytest.mark.skipif(
    ORTHANC is None and not os.environ.get("CI"),
    reason="needs Debian's orthanc (.ci/run installs it)",
)


def roundtrip(ds: object) -> object:
    buffer = io.BytesIO()
    ds.save_as(buffer)  # type: ignore[attr-defined]
    buffer.seek(0)
    return dcmread(buffer)


def test_an_sr_reads_back_with_its_regions_probabilities_frames_and_references() -> None:
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    sr = roundtrip(
        build_sr(
            ct,
            [Finding(0, 10, 20, 30, 40, 0.73), Finding(0, 50.5, 60, 20, 20, 0.125)],
            "3",
            "1.2.3",
        )
    )
    assert sr.Modality == "SR" and sr.StudyInstanceUID == ct.StudyInstanceUID  # the same study
    assert sr.SeriesInstanceUID != ct.SeriesInstanceUID  # a new series
    assert sr.PatientID == ct.PatientID  # as DICOM requires, and nowhere else
    found = read_findings(sr)
    assert [(uid, frame, p, version) for uid, frame, _, p, version in found] == [
        (ct.SOPInstanceUID, None, 0.73, "3"),
        (ct.SOPInstanceUID, None, 0.125, "3"),
    ]
    np.testing.assert_allclose(
        found[1][2], [[50.5, 60], [70.5, 60], [70.5, 80], [50.5, 80], [50.5, 60]]
    )
    video = dcmread(get_testdata_file("emri_small.dcm"))  # multi-frame: regions name their frame
    frames = roundtrip(build_sr(video, [Finding(i, 0, 0, 64, 64, 0.5) for i in (0, 3)], "3", "1.2"))
    assert [frame for _, frame, _, _, _ in read_findings(frames)] == [1, 4]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.1)


@dataclass
class Loop:
    server: ServerThread
    gateway: Gateway
    orthanc: Orthanc


@contextmanager
def loop(
    tmp: Path,
    start_orthanc: bool = True,
    route: str = ROUTE,
    stow: bool = False,
    server: dict[str, object] | None = None,
    **gateway: object,
) -> Iterator[Loop]:
    """A real CAD server (a tiny frame model; ``server``: its settings overridden), the gateway
    and a real Orthanc as its destination and source."""
    publish_tiny(tmp / "registry", tmp / "build", recipe="frame")
    settings = make_settings(
        tmp / "registry", auth_tokens_file=token_file(tmp / "tokens.json"), **(server or {})
    )
    (tmp / "gateway-token").write_text(TOKENS["tower-3"])
    gateway_port = free_port()
    orthanc = Orthanc(tmp / "orthanc", gateway_port, route=route, dicomweb=True)
    with ServerThread(settings) as cad:
        cad.refresh_models()
        values: dict[str, object] = {
            "port": gateway_port,
            "server": cad.address,
            "token_file": tmp / "gateway-token",
            "destination": f"{orthanc.url}/dicom-web"
            if stow
            else f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "spool_dir": tmp / "gateway",
            "retry_max_s": 1.0,
            "metrics_port": 0,
            "series_quiet_s": 0.5,  # a series' SR soon after its last image
        }
        gw = Gateway(GatewaySettings(**{**values, **gateway}))  # type: ignore[arg-type]
        try:
            if start_orthanc:
                orthanc.start()
            with gw:
                yield Loop(cad, gw, orthanc)
            check_srs(tmp / "checked", orthanc, gw)
        finally:
            orthanc.stop()


def check_srs(folder: Path, orthanc: Orthanc, gateway: Gateway) -> None:
    """Every SR the test produced, in the PACS and still in the outbox, through dciodvfy, dsrdump
    and pixelmed's DicomSRValidator: an error in the gateway's own content fails the test."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(gateway.outbox.glob("*.dcm"))
    if orthanc.process is not None and orthanc.process.poll() is None:
        for i, data in enumerate(orthanc.reports()):
            (folder / f"pacs-{i}.dcm").write_bytes(data)
            paths.append(folder / f"pacs-{i}.dcm")
    problems = sr_problems(paths)
    assert not problems, "\n".join(problems)


def classify_whole_frames(
    address: str, data: bytes, frames: int, size: tuple[int, int]
) -> list[float]:
    """What the CAD server answers for each whole frame, asked directly."""
    rows, cols = size
    with grpc.insecure_channel(address) as channel:
        stub = cad_pb2_grpc.CadInferenceStub(channel)
        return [
            stub.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=data,
                    frame_index=f,
                    recipe="frame",
                    candidates=[
                        cad_pb2.Candidate(box=cad_pb2.Box(x=0, y=0, width=cols, height=rows))
                    ],
                ),
                timeout=60,
                metadata=[("authorization", f"Bearer {TOKENS['tower-3']}")],
            )
            .results[0]
            .probability
            for f in range(frames)
        ]


@pytest.mark.slow
@needs_orthanc
def test_orthanc_routes_an_image_and_gets_the_sr_back_in_its_study(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    ct_bytes = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    video_bytes = Path(get_testdata_file("emri_small.dcm")).read_bytes()
    with loop(tmp_path) as w:
        w.orthanc.post("/instances", ct_bytes)
        wait_for(lambda: len(w.orthanc.reports()) == 1, "the CT slice's SR in Orthanc")
        (report,) = [dcmread(io.BytesIO(f)) for f in w.orthanc.reports()]
        ct = dcmread(io.BytesIO(ct_bytes))
        assert report.StudyInstanceUID == ct.StudyInstanceUID
        ((uid, frame, region, probability, version),) = read_findings(report)
        assert (uid, frame, version) == (ct.SOPInstanceUID, None, "1")
        np.testing.assert_allclose(region[2], [ct.Columns, ct.Rows])
        (direct,) = classify_whole_frames(w.server.address, ct_bytes, 1, (ct.Rows, ct.Columns))
        assert probability == pytest.approx(direct, abs=1e-6)

        # the same instance again, the gateway's own SR, another CAD's SR from a whole-frame
        # caller: all acknowledged, none classified
        assert c_store(w.gateway.port, ct) == 0x0000
        assert c_store(w.gateway.port, report) == 0x0000  # its own: known, never input
        assert (w.gateway.stats.duplicates, w.gateway.stats.reports_ignored) == (2, 0)
        other = roundtrip(
            build_sr(ct, [Finding(0, 1, 1, 9, 9, 0.5)], "9", "1.2.9", manufacturer="x")
        )
        assert c_store(w.gateway.port, other) == 0x0000
        assert w.gateway.stats.reports_ignored == 1 and w.gateway.stats.classified == 1

        # whole-frame mode on a multi-frame image: one region per frame, each naming its frame
        w.orthanc.post("/instances", video_bytes)
        wait_for(lambda: len(w.orthanc.reports()) == 2, "the multi-frame image's SR")
        video = dcmread(io.BytesIO(video_bytes))
        frames = int(video.NumberOfFrames)
        mine = [
            dcmread(io.BytesIO(f))
            for f in w.orthanc.reports()
            if dcmread(io.BytesIO(f)).StudyInstanceUID == video.StudyInstanceUID
        ]
        found = read_findings(mine[0])
        assert [f[1] for f in found] == list(range(1, frames + 1))
        assert len(w.orthanc.qido(f"/studies/{video.StudyInstanceUID}/series?Modality=SR")) == 1
        direct = classify_whole_frames(
            w.server.address, video_bytes, frames, (video.Rows, video.Columns)
        )
        np.testing.assert_allclose([f[3] for f in found], direct, atol=1e-6)
        assert w.gateway.stats.classified == 2 and w.gateway.stats.failed == 0
        wait_for(lambda: w.gateway.stats.sent == 2, "both SRs counted as sent")
        with urllib.request.urlopen(f"http://127.0.0.1:{w.gateway.metrics_port}/metrics") as r:
            metrics = r.read().decode()
        assert "cad_gateway_images_received_total 2.0" in metrics
        assert "cad_gateway_srs_sent_total 2.0" in metrics
        assert "cad_gateway_duplicates_total 2.0" in metrics
        assert 'cad_gateway_queue_depth{queue="outbox"} 0.0' in metrics
        assert "cad_gateway_receipt_to_sr_seconds_count 2.0" in metrics
    # the gateway's log names no patient, study, series or instance
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    logged += metrics
    assert "classified an image" in logged
    for ds in (ct, video):
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = str(ds.get(keyword, "") or "")
            assert not value or value not in logged, keyword
        assert ds.SOPInstanceUID not in logged


@pytest.mark.slow
@needs_orthanc
def test_an_sr_the_pacs_could_not_take_is_delivered_once_it_is_back(tmp_path: Path) -> None:
    """Orthanc stopped when the SR is ready: the gateway keeps it and retries; the gateway
    itself restarts; once Orthanc is started again it holds exactly one SR. A modality sends the
    image straight to the gateway."""
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    with loop(tmp_path) as w:
        w.orthanc.stop()  # the PACS goes down
        assert c_echo(w.gateway.port) == 0x0000  # the gateway answers a verification
        assert c_store(w.gateway.port, ct) == 0x0000
        wait_for(lambda: w.gateway.stats.send_failures >= 2, "failed sends while Orthanc is down")
        assert w.gateway.stats.classified == 1 and w.gateway.stats.sent == 0
        w.gateway.stop()  # the gateway restarts too: the SR waits in its outbox on disk
        assert len(list(w.gateway.outbox.glob("*.dcm"))) == 1
        with Gateway(w.gateway.settings) as again:
            w.orthanc.start()
            wait_for(lambda: again.stats.sent == 1, "the SR delivered after both restarts")
            (report,) = w.orthanc.reports()
            assert dcmread(io.BytesIO(report)).StudyInstanceUID == ct.StudyInstanceUID
            assert not list(again.outbox.glob("*.dcm"))  # nothing left to send
            assert again.stats.classified == 0  # not classified again


def classify_boxes(address: str, data: bytes, boxes: list[tuple[float, ...]]) -> list[float]:
    """The CAD server's answer for boxes on frame 0, with the model's own recipe."""
    with grpc.insecure_channel(address) as channel:
        reply = cad_pb2_grpc.CadInferenceStub(channel).Classify(
            cad_pb2.ClassifyRequest(
                dicom=data,
                candidates=[
                    cad_pb2.Candidate(box=cad_pb2.Box(x=x, y=y, width=w, height=h))
                    for x, y, w, h in boxes
                ],
            ),
            timeout=60,
            metadata=[("authorization", f"Bearer {TOKENS['tower-3']}")],
        )
    return [r.probability for r in reply.results]


@pytest.mark.slow
@needs_orthanc
def test_an_upstream_cads_sr_names_the_candidates_whichever_arrives_first(tmp_path: Path) -> None:
    """A caller whose candidates come from an upstream CAD's SR: the gateway pairs each image
    with the SR that references it, the SR first (CT) or the image first (MR), and its SR
    carries one region group per upstream region, with the CAD server's probabilities."""
    ct_bytes = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    mr_bytes = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    ct, mr = dcmread(io.BytesIO(ct_bytes)), dcmread(io.BytesIO(mr_bytes))
    boxes = {
        "ct": [(10.0, 20.0, 30.0, 40.0), (60.0, 60.0, 24.0, 24.0)],
        "mr": [(8.0, 8.0, 32.0, 32.0)],
    }

    def upstream(ds: object, found: list[tuple[float, ...]]) -> bytes:
        sr = build_sr(
            ds,  # type: ignore[arg-type]
            [Finding(0, *b, 0.5) for b in found],
            "7",
            "1.2.826.0.1.3680043.10.9999",
            device_name="upstream-cad",
            manufacturer="upstream-cad",
        )
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    with loop(tmp_path, route=ROUTE_WITH_REPORTS, sr_callers="ORTHANC") as w:
        w.orthanc.post("/instances", upstream(ct, boxes["ct"]))  # the SR first
        wait_for(lambda: w.gateway.stats.upstream_reports == 1, "the CT's upstream SR")
        w.orthanc.post("/instances", ct_bytes)
        w.orthanc.post("/instances", mr_bytes)  # the image first
        wait_for(lambda: w.gateway.stats.received == 2, "both images received")
        wait_for(lambda: w.gateway.stats.classified == 1, "the CT classified")
        assert len(list(w.gateway.inbox.glob("*.dcm"))) == 1  # the MR waits for its SR
        w.orthanc.post("/instances", upstream(mr, boxes["mr"]))
        wait_for(lambda: w.gateway.stats.sent == 2, "both SRs stored in Orthanc")
        ours = [
            dcmread(io.BytesIO(f))
            for f in w.orthanc.reports()
            if dcmread(io.BytesIO(f)).Manufacturer == "cad-aift"
        ]
        assert len(ours) == 2
        for name, ds, data in (("ct", ct, ct_bytes), ("mr", mr, mr_bytes)):
            # found as a PACS client would: QIDO-RS, the study's SR series (ours and upstream)
            found_series = w.orthanc.qido(f"/studies/{ds.StudyInstanceUID}/series?Modality=SR")
            assert len(found_series) == 2
            (report,) = [r for r in ours if r.StudyInstanceUID == ds.StudyInstanceUID]
            found = read_findings(report)
            assert [f[0] for f in found] == [ds.SOPInstanceUID] * len(boxes[name])
            got = [(f[2][:, 0].min(), f[2][:, 1].min()) for f in found]
            assert got == [(b[0], b[1]) for b in boxes[name]]
            direct = classify_boxes(w.server.address, data, boxes[name])
            np.testing.assert_allclose([f[3] for f in found], direct, atol=1e-6)
        assert w.gateway.stats.unpaired == 0 and w.gateway.stats.reports_ignored == 0


@pytest.mark.slow
@needs_orthanc
def test_srs_go_by_stow_rs_and_are_found_by_qido_rs(tmp_path: Path) -> None:
    """A DICOMweb destination (Orthanc's DICOMweb plugin): the SR is stored by STOW-RS and a
    QIDO-RS search of the study finds it, an SR series beside the image's."""
    ct_bytes = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ct = dcmread(io.BytesIO(ct_bytes))
    with loop(tmp_path, stow=True) as w:
        w.orthanc.post("/instances", ct_bytes)  # routed to the gateway by C-STORE, as before
        wait_for(lambda: w.gateway.stats.sent == 1, "the SR stored by STOW-RS")
        series = w.orthanc.qido(f"/studies/{ct.StudyInstanceUID}/series?Modality=SR")
        assert len(series) == 1 and series[0]["00080060"]["Value"] == ["SR"]
        (report,) = w.orthanc.reports()
        ((uid, _, _, probability, version),) = read_findings(dcmread(io.BytesIO(report)))
        assert (uid, version) == (ct.SOPInstanceUID, "1") and 0 <= probability <= 1


def test_the_orthanc_example_points_at_the_gateway_as_it_starts() -> None:
    """deploy/orthanc/orthanc.json names the gateway with its default AE title and port, loads
    the routing script the tests run, and serves DICOMweb (what STOW-RS needs)."""
    import json

    from support.orthanc import EXAMPLE

    config = json.loads((EXAMPLE / "orthanc.json").read_text())
    defaults = GatewaySettings()
    ae_title, _, port = config["DicomModalities"]["cadgw"]
    assert (ae_title, port) == (defaults.ae_title, defaults.port)
    assert [Path(p).name for p in config["LuaScripts"]] == ["route.lua"]
    assert config["DicomWeb"]["Enable"] and "SendToModality" in (EXAMPLE / "route.lua").read_text()


@pytest.mark.slow
@needs_orthanc
def test_a_ctpa_series_and_its_upstream_points_get_one_sr_with_a_probability_per_point(
    tmp_path: Path,
) -> None:
    """A CT series and an upstream CAD's SR naming 3D points (SCOORD3D, PE candidates) in its
    frame of reference, routed by the PACS: the gateway waits for the whole series, classifies
    it as one volume and sends one SR, each point with the CAD server's probability."""
    from pydicom.uid import generate_uid

    from gateway.sr import Finding3D, Point3D, build_volume_sr, read_points
    from support.ctpa import series_bytes, tube_volume

    aff = np.diag([0.7, 0.7, 1.5, 1.0])
    hu, centre, direction = tube_volume((12, 40, 40), aff, [20, 20, 6], (0.3, -0.5, 0.81))
    frame_of_reference = generate_uid()
    data = series_bytes(hu, aff, generate_uid(), frame_of_reference)
    slices = [dcmread(io.BytesIO(b)) for b in data]
    points = [Point3D(frame_of_reference, *p) for p in (centre, centre + 5 * direction)]
    upstream = build_volume_sr(
        slices,
        [Finding3D(p, 0.5) for p in points],
        "7",
        "1.2.826.0.1.3680043.10.9999",
        device_name="upstream-cad",
        manufacturer="upstream-cad",
    )
    buffer = io.BytesIO()
    upstream.save_as(buffer, enforce_file_format=True)
    with loop(tmp_path, route=ROUTE_WITH_REPORTS, sr_callers="ORTHANC", series_quiet_s=1.0) as w:
        for blob in data[::-1]:
            w.orthanc.post("/instances", blob)
        # every slice in before the points: the series is whole when it is classified, however
        # slowly the PACS forwards (the quiet period only guards a series still arriving)
        wait_for(lambda: w.gateway.stats.received == len(data), "the series received")
        assert w.gateway.stats.classified == 0  # the slices wait for the SR naming the points
        w.orthanc.post("/instances", buffer.getvalue())
        wait_for(lambda: w.gateway.stats.sent == 1, "the series' SR stored in Orthanc")
        ours = [
            dcmread(io.BytesIO(f))
            for f in w.orthanc.reports()
            if dcmread(io.BytesIO(f)).Manufacturer == "cad-aift"
        ]
        assert len(ours) == 1 and ours[0].StudyInstanceUID == slices[0].StudyInstanceUID
        found = read_points(ours[0])
        assert [p for p, _, _ in found] == [
            Point3D(frame_of_reference, *np.float32([p.x, p.y, p.z]).tolist()) for p in points
        ]
        with grpc.insecure_channel(w.server.address) as channel:
            direct = cad_pb2_grpc.CadInferenceStub(channel).ClassifyVolume(
                iter(
                    [
                        cad_pb2.VolumeChunk(
                            header=cad_pb2.VolumeHeader(
                                candidates=[
                                    cad_pb2.VolumeCandidate(
                                        patient_mm=cad_pb2.Point3D(x=p.x, y=p.y, z=p.z)
                                    )
                                    for p in points
                                ]
                            ),
                            instances=data,
                        )
                    ]
                ),
                timeout=60,
                metadata=[("authorization", f"Bearer {TOKENS['tower-3']}")],
            )
        np.testing.assert_allclose(
            [prob for _, prob, _ in found], [r.probability for r in direct.results], atol=1e-4
        )
        assert w.gateway.stats.classified == 1 and w.gateway.stats.unpaired == 0
        assert not list(w.gateway.inbox.glob("*.dcm"))  # every slice went with its series
