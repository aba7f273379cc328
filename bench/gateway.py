"""Receipt-to-SR time of the DICOM gateway: ``--images`` CT slices (CT_small.dcm, each a new
instance) sent by C-STORE to the gateway one after another, classified through a real CAD
server, each SR stored into a real Orthanc; the time from the gateway's receipt of an image to
the destination's acceptance of its SR, p50/p95/max, and the whole run's rate.

    python -m bench.gateway --images 100 --out docs/bench/gateway-cpu.json

The model is the tests' tiny one (32-px patches, ``frame`` recipe): the figures are the
gateway's own path (durable queues, Classify over gRPC, the SR built and sent), not a network's
inference time, which ``bench.serving`` measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from support.orthanc import Orthanc, c_store, free_port


def run(images: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp_name:
        tmp = Path(tmp_name)
        publish_tiny(tmp / "registry", tmp / "build", recipe="frame")
        gateway_port = free_port()
        orthanc = Orthanc(tmp / "orthanc", gateway_port).start()
        try:
            with ServerThread(make_settings(tmp / "registry")) as server:
                server.refresh_models()
                settings = GatewaySettings(
                    port=gateway_port,
                    server=server.address,
                    destination=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                    spool_dir=tmp / "gateway",
                    retry_max_s=1.0,
                    metrics_port=-1,
                    sr_grouping="image",  # each image's receipt-to-SR, not its series'
                )
                with Gateway(settings) as gateway:
                    ct = dcmread(get_testdata_file("CT_small.dcm"))
                    t0 = time.perf_counter()
                    for _ in range(images):
                        ct.SOPInstanceUID = generate_uid()
                        ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
                        assert c_store(gateway.port, ct) == 0
                    deadline = time.monotonic() + 600
                    while gateway.stats.sent < images and time.monotonic() < deadline:
                        time.sleep(0.05)
                    elapsed = time.perf_counter() - t0
                    times = np.asarray(gateway.stats.receipt_to_sent_s) * 1000
                    stored = len(orthanc.reports())
        finally:
            orthanc.stop()
    return {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "images": images,
        "srs_sent": int(len(times)),
        "srs_in_orthanc": stored,
        "receipt_to_sr_ms": {
            "p50": round(float(np.percentile(times, 50)), 1),
            "p95": round(float(np.percentile(times, 95)), 1),
            "max": round(float(times.max()), 1),
        },
        "images_per_s": round(images / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--out")
    args = parser.parse_args()
    result = run(args.images)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
