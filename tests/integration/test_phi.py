"""No patient-identifying DICOM attribute ever leaves the request: the whole loop (classify, review,
export, a training round, a hot swap, a metrics scrape, a broken file) on real DICOM files carrying
distinctive identifying values, then every log line, stored row, archived file, registry file,
metric and error message is searched for them; UIDs are stored only hashed."""

from __future__ import annotations

import io
import logging
import sqlite3
import time
from pathlib import Path

import grpc
import pydicom
import pytest
from prometheus_client import generate_latest

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_path, make_settings

pytestmark = pytest.mark.slow

FILES = ["CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "emri_small.dcm"]

# DICOM PS3.15 basic application-level confidentiality profile attributes, with values that
# cannot occur by chance anywhere else.
PHI = {
    "PatientName": "Qzvorak^Elspeth^Mirande",
    "PatientID": "PIDX-7731-QZV",
    "PatientBirthDate": "19020317",
    "PatientAddress": "17 Quillon Lane, Vexmoor",
    "PatientTelephoneNumbers": "555-0199-4471",
    "OtherPatientIDs": "OPIDX-99120",
    "AccessionNumber": "ACCX88127",
    "InstitutionName": "Saint Orvalle Infirmary",
    "InstitutionAddress": "3 Brannock Row, Vexmoor",
    "ReferringPhysicianName": "Trelawney^Ozymandias",
    "PerformingPhysicianName": "Fennimore^Quaxley",
    "OperatorsName": "Wimbrel^Tosk",
    "StudyID": "STDX4471",
    "StationName": "VEXMOOR-CT9",
    "DeviceSerialNumber": "SNX-00918273",
}


def with_phi(name: str, n: int) -> tuple[bytes, dict[str, str]]:
    ds = pydicom.dcmread(dicom_path(name))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value if keyword == "PatientBirthDate" else f"{value}")
    uids = {
        k: f"1.2.826.0.1.3680043.9.7731.{n}.{i}"
        for i, k in enumerate(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    }
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), uids


def everything_written(tmp: Path, settings, server: ServerThread) -> str:
    parts = []
    db = sqlite3.connect(str(settings.store_url.removeprefix("sqlite:///")))
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        for row in db.execute(f"SELECT * FROM {table}"):
            parts.append(repr(row))
    db.close()
    for root in (Path(settings.archive_root), Path(settings.registry_root)):
        for path in root.rglob("*"):
            if path.is_file():
                parts.append(path.read_bytes().decode("latin-1"))
    parts.append(generate_latest(server.server.metrics.registry).decode())
    return "\n".join(parts)


def test_no_identifying_value_is_logged_stored_or_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from trainer.bootstrap import init_model
    from trainer.round import run_round
    from trainer.settings import TrainerSettings

    caplog.set_level(logging.DEBUG)
    root = tmp_path / "registry"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
        init_model(TrainerSettings(registry_root=root, input_size=64, recipe="polyp:4"))
    key = tmp_path / "uid.key"
    key.write_bytes(b"0123456789abcdef-test-only-key")
    settings = make_settings(root, hash_uids=True, uid_hash_key_file=key)
    uids: list[str] = []
    echoed = []
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        infer, review = cad_pb2_grpc.CadInferenceStub(ch), cad_pb2_grpc.CadReviewStub(ch)
        first = None
        for n, name in enumerate(FILES):
            data, file_uids = with_phi(name, n)
            uids += file_uids.values()
            r = infer.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=data,
                    candidates=[
                        cad_pb2.Candidate(
                            client_id=c,
                            box=cad_pb2.Box(x=4 + 9 * i, y=6 + 7 * i, width=20, height=20),
                        )
                        for i, c in enumerate("abcd")
                    ],
                ),
                timeout=60,
            )
            echoed.append(str(r))
            first = first or r
            for res in r.results:
                verdict = cad_pb2.TRUE_POSITIVE if res.client_id in "bd" else cad_pb2.FALSE_POSITIVE
                echoed.append(
                    str(
                        review.SubmitCorrection(
                            cad_pb2.Correction(
                                candidate_id=res.candidate_id, verdict=verdict, reviewer="dr.t"
                            ),
                            timeout=30,
                        )
                    )
                )
        echoed.append(
            str(
                review.AddMissedFinding(
                    cad_pb2.MissedFinding(
                        request_id=first.request_id,
                        box=cad_pb2.Box(x=30, y=30, width=12, height=12),
                        reviewer="dr.t",
                    ),
                    timeout=30,
                )
            )
        )
        echoed.append(str(review.GetAnnotationQueue(cad_pb2.QueueRequest(limit=10), timeout=30)))
        echoed += [str(x) for x in review.ExportLabels(cad_pb2.ExportRequest(), timeout=30)]
        # A damaged file carrying the same values: the error must not quote them.
        data, _ = with_phi("CT_small.dcm", 99)
        broken = data.replace(PHI["PatientBirthDate"].encode(), b"19XX0317")[: len(data) // 2]
        with pytest.raises(grpc.RpcError) as err:
            infer.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=broken,
                    candidates=[
                        cad_pb2.Candidate(
                            client_id="x", box=cad_pb2.Box(x=1, y=1, width=5, height=5)
                        )
                    ],
                ),
                timeout=30,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        echoed.append(err.value.details() or "")
        report = run_round(
            TrainerSettings(
                registry_root=root,
                store_url=settings.store_url,
                archive_root=settings.archive_root,
                val_fraction=0.0,
                allow_unvalidated=True,
                train_batch_size=16,
                seed=0,
            ),
            progress=False,
        )
        assert report.outcome == "published"
        assert server.refresh_models()  # the trained version is swapped in
        stored = everything_written(tmp_path, settings, server)
    out, err_text = capfd.readouterr()
    logs = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    haystacks = {"logs": logs + out + err_text, "stored": stored, "responses": "\n".join(echoed)}
    assert len(caplog.records) > 10 and "hash" not in PHI  # the search has something to look at
    for where, text in haystacks.items():
        for keyword, value in PHI.items():
            for needle in {value, value.replace("^", " "), *value.split("^")}:
                assert needle.lower() not in text.lower(), f"{keyword} ({needle}) found in {where}"
    for uid in uids:  # UIDs are stored hashed, and never logged
        assert uid not in stored and uid not in haystacks["logs"], uid
    assert "h:" in stored  # the hashed UIDs are there instead


def test_the_dicom_gateway_logs_and_counts_no_identifying_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same files, with the same identifying values, sent to the DICOM gateway by C-STORE:
    its log, its metrics and its bookkeeping (what it has seen, the regions it keeps) name none
    of them. The SRs it writes carry the patient and study as DICOM requires, and go nowhere
    else."""
    from prometheus_client import generate_latest
    from pynetdicom import AE, StoragePresentationContexts

    from gateway.app import Gateway
    from gateway.settings import GatewaySettings
    from support.helpers import publish_tiny

    caplog.set_level(logging.DEBUG)
    publish_tiny(tmp_path / "registry", tmp_path / "build", recipe="frame")
    sent: list[dict[str, str]] = []
    with ServerThread(make_settings(tmp_path / "registry")) as server:
        server.refresh_models()
        settings = GatewaySettings(
            port=0,
            server=server.address,
            spool_dir=tmp_path / "gateway",
            metrics_port=-1,
            series_quiet_s=0.5,
        )
        with Gateway(settings) as gateway:
            ae = AE(ae_title="PHISCU")
            ae.requested_contexts = StoragePresentationContexts
            assoc = ae.associate("127.0.0.1", gateway.port, ae_title="CADGW")
            assert assoc.is_established
            for n, name in enumerate(FILES):
                data, uids = with_phi(name, n)
                sent.append(uids)
                assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status == 0
            assoc.release()
            deadline = time.monotonic() + 120
            while gateway.stats.classified + gateway.stats.failed < len(FILES):
                assert time.monotonic() < deadline, "the gateway did not finish"
                time.sleep(0.05)
            assert gateway.stats.classified >= 3
            while any(gateway.results.iterdir()) or not any(gateway.outbox.glob("*.dcm")):
                assert time.monotonic() < deadline, "no SR: the series never completed"
                time.sleep(0.05)  # each series' SR once it has been quiet a moment
            written = [generate_latest(gateway.metrics.registry).decode()]
            for folder in (gateway.seen, gateway.regions):
                for path in folder.rglob("*"):
                    written.append(path.name + path.read_text())
            (ours,) = {p.read_bytes() for p in list(gateway.outbox.glob("*.dcm"))[:1]}
    # the gateway's own log and its libraries' (pynetdicom, highdicom) at INFO and above
    logged = "\n".join(
        f"{r.name} {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith(("gateway", "pynetdicom", "highdicom")) and r.levelno >= logging.INFO
    )
    haystack = logged + "\n".join(written)
    assert "classified an image" in logged
    for keyword, value in PHI.items():
        assert value not in haystack, keyword
    for uids in sent:
        for keyword, uid in uids.items():
            assert uid not in haystack, keyword
    assert PHI["PatientName"].encode() in ours  # the SR itself: as DICOM requires
