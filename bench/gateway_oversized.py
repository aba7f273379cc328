"""One oversized object in the gateway's queue, and the images behind it (issue 37, point 2),
against a baseline revision in the same run.

pydicom's 120-frame ultrasound cine, decompressed as a PACS that transcodes sends it (110 MB,
over the CAD server's 64 MB message limit as one file), is sent by C-STORE to a real
``cad dicom-gateway`` process, then ``--behind`` CT slices (pydicom's CT_small, new instances).
For each revision (this checkout, and ``--baseline-ref`` as a git worktree) the gateway runs
as a child process of its own against a real in-process CAD server (the tests' tiny model, frame
recipe); its SRs stay in its outbox, one per image. Measured: when each CT slice's SR appears
(seconds after the last C-STORE; not within ``--timeout`` counts as missing), when the cine's
does, and the gateway process's RSS and peak (VmHWM).

    .venv/bin/python -m bench.gateway_oversized --out docs/bench/gateway-oversized-cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context

from bench.launch import ROOT, emit, revision_tree
from bench.memory import memory_mb
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from support.orthanc import free_port

CALLER = "MODALITY"


def key(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def objects(behind: int) -> tuple[Any, list[Any]]:
    cine = dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
    cine.decompress()  # what a transcoding PACS sends: 110 MB of native RGB
    cine.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    slices = []
    for _ in range(behind):
        ct = dcmread(get_testdata_file("CT_small.dcm"))
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        slices.append(ct)
    return cine, slices


def store(port: int, datasets: list[Any]) -> None:
    ae = AE(ae_title=CALLER)
    ae.requested_contexts = [
        build_context(ds.SOPClassUID, ExplicitVRLittleEndian)
        for ds in {ds.SOPClassUID: ds for ds in datasets}.values()
    ]
    assoc = ae.associate("127.0.0.1", port, ae_title="CADGW")
    assert assoc.is_established, "the gateway did not accept the association"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert int(status.Status) == 0, f"C-STORE status 0x{int(status.Status):04X}"
    finally:
        assoc.release()


def run_tree(tree: Path, work: Path, address: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    spool = work / "spool"
    env = {
        **os.environ,
        "CAD_GATEWAY_PORT": str(port),
        "CAD_GATEWAY_SERVER": address,
        "CAD_GATEWAY_SPOOL_DIR": str(spool),
        "CAD_GATEWAY_METRICS_PORT": "-1",
        "CAD_GATEWAY_RETRY_MAX_S": "2",
        "CAD_GATEWAY_SR_GROUPING": "image",
    }
    log = (work / "gateway.log").open("ab")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "cadcli.main", "dicom-gateway"],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # until it answers an association
            ae = AE(ae_title=CALLER)
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="CADGW")
            if assoc.is_established:
                assoc.release()
                break
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        cine, behind = objects(args.behind)
        start = time.monotonic()
        store(port, [cine, *behind])
        stored = time.monotonic() - start
        wanted = {key(ds.SOPInstanceUID): None for ds in [cine, *behind]}
        seen_at: dict[str, float] = {}
        peak = 0.0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and len(seen_at) < len(wanted):
            for path in (spool / "outbox").glob("*.dcm"):
                name = path.stem.split("-", 1)[1]
                if name in wanted and name not in seen_at:
                    seen_at[name] = time.monotonic() - start
            peak = max(peak, memory_mb(gateway.pid)["rss_mb"])
            time.sleep(0.05)
        memory = memory_mb(gateway.pid)
        ct_times = sorted(
            seen_at[key(ds.SOPInstanceUID)] for ds in behind if key(ds.SOPInstanceUID) in seen_at
        )
        return {
            "c_store_s": round(stored, 2),
            "ct_srs_within_timeout": f"{len(ct_times)} of {len(behind)}",
            "ct_sr_s_after_first_c_store": {
                "first": round(ct_times[0], 2) if ct_times else None,
                "last": round(ct_times[-1], 2) if ct_times else None,
            },
            "cine_sr_s": round(seen_at[key(cine.SOPInstanceUID)], 2)
            if key(cine.SOPInstanceUID) in seen_at
            else None,
            "gateway_rss_mb": round(memory["rss_mb"], 1),
            "gateway_peak_rss_mb": round(max(peak, memory["peak_mb"]), 1),
        }
    finally:
        gateway.kill()
        gateway.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", default="2447632")
    parser.add_argument("--behind", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cad-bench-oversized-") as tmp:
        work = Path(tmp)
        publish_tiny(work / "registry", work / "build", recipe="frame")
        results: dict[str, Any] = {}
        with (
            revision_tree(args.baseline_ref, work / "baseline-tree") as baseline,
            ServerThread(make_settings(work / "registry")) as server,
        ):
            server.refresh_models()
            for name, tree in (("baseline", baseline), ("current", ROOT)):
                (work / name).mkdir()
                results[name] = run_tree(tree, work / name, server.address, args)
                print(name, json.dumps(results[name]), file=sys.stderr)
    report = {
        "machine": f"{os.cpu_count()} CPUs",
        "baseline_ref": args.baseline_ref,
        "workload": f"a 120-frame US cine sent decompressed (110 MB), then {args.behind} CT "
        f"slices; SRs watched for {args.timeout:.0f} s",
        **results,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
