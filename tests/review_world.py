"""A real CAD server with authentication, real classified DICOM and PNG images, and a real
review UI process (uvicorn) in front of it: what the review page tests run against."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import uvicorn
from PIL import Image

from reviewui.app import ReviewApp, create_app
from reviewui.settings import ReviewUiSettings
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, make_settings, publish_tiny

TOKENS = {
    "dr.jones": "jones-review-token-0123456789",
    "dr.smith": "smith-review-token-0123456789",
    "tower-3": "tower-infer-token-0123456789",
}


@dataclass
class UiProcess:
    """The review UI served by uvicorn on a loopback socket of its own."""

    review: ReviewApp
    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def review_ui(settings: ReviewUiSettings) -> Iterator[UiProcess]:
    """Serve the review UI on a free loopback port. The socket listens before the thread starts,
    so a client may connect at once (the backlog holds it until uvicorn accepts)."""
    review = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(review.app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield UiProcess(review, f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        review.close()


@dataclass
class World:
    server: ServerThread
    ui: UiProcess
    store_url: str
    dicom_request: str
    png_request: str
    candidates: list[str]


def token_file(path: Path, extra: list[dict[str, object]] | None = None) -> Path:
    entries: list[dict[str, object]] = [
        {"identity": "dr.jones", "roles": ["review"], "token": TOKENS["dr.jones"]},
        {"identity": "dr.smith", "roles": ["review"], "token": TOKENS["dr.smith"]},
        {"identity": "tower-3", "roles": ["infer"], "token": TOKENS["tower-3"]},
    ]
    path.write_text(json.dumps({"tokens": entries + (extra or [])}))
    return path


def png_bytes(height: int = 96, width: int = 128) -> bytes:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[30:60, 40:80] = (200, 80, 80)  # something to look at
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def classify_examples(address: str) -> tuple[cad_pb2.ClassifyResponse, cad_pb2.ClassifyResponse]:
    """A CT slice (DICOM, 3 candidates) and a video frame (PNG, 2 candidates), as a CAD client."""
    metadata = [("authorization", f"Bearer {TOKENS['tower-3']}")]
    with grpc.insecure_channel(address) as channel:
        stub = cad_pb2_grpc.CadInferenceStub(channel)
        ct = stub.Classify(
            cad_pb2.ClassifyRequest(
                dicom=dicom_bytes("CT_small.dcm"),
                window=cad_pb2.Window(center=40, width=400),
                candidates=[
                    cad_pb2.Candidate(
                        client_id=f"ct{i}",
                        box=cad_pb2.Box(x=10 + 35 * i, y=20, width=30, height=30),
                    )
                    for i in range(3)
                ],
            ),
            timeout=30,
            metadata=metadata,
        )
        frame = stub.Classify(
            cad_pb2.ClassifyRequest(
                encoded=png_bytes(),
                candidates=[
                    cad_pb2.Candidate(
                        client_id="f0", box=cad_pb2.Box(x=40, y=30, width=40, height=30)
                    ),
                    cad_pb2.Candidate(
                        client_id="f1", box=cad_pb2.Box(x=5, y=60, width=25, height=25)
                    ),
                ],
            ),
            timeout=30,
            metadata=metadata,
        )
    return ct, frame


def classify_frames(address: str, frames: int, per_frame: int = 3) -> dict[str, list[str]]:
    """``frames`` video frames of one source with ``per_frame`` candidates each, as a
    colonoscopy CAD sends them: request id -> its candidate ids."""
    rng = np.random.default_rng(11)
    out: dict[str, list[str]] = {}
    with grpc.insecure_channel(address) as channel:
        stub = cad_pb2_grpc.CadInferenceStub(channel)
        for f in range(frames):
            pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            reply = stub.Classify(
                cad_pb2.ClassifyRequest(
                    encoded=buf.getvalue(),
                    source_id="video-7",
                    frame_index=f,
                    candidates=[
                        cad_pb2.Candidate(
                            client_id=f"v{f}-{k}",
                            box=cad_pb2.Box(x=6 + 38 * k, y=20 + 9 * k, width=30, height=30),
                        )
                        for k in range(per_frame)
                    ],
                ),
                timeout=30,
                metadata=[("authorization", f"Bearer {TOKENS['tower-3']}")],
            )
            out[reply.request_id] = [r.candidate_id for r in reply.results]
    return out


def classify_pe(address: str) -> str:
    """A CT series (a synthetic vessel with a clot) and one PE candidate at the clot, as a CT
    workstation sends them; the candidate's id."""
    import numpy as np

    from support.ctpa import series_bytes, tube_volume

    aff = np.diag([0.7, 0.7, 1.5, 1.0])
    hu, centre, _ = tube_volume((16, 48, 48), aff, [24, 24, 8], (0.3, -0.5, 0.81))
    point = cad_pb2.Point3D(x=centre[0], y=centre[1], z=centre[2])
    header = cad_pb2.VolumeHeader(
        candidates=[cad_pb2.VolumeCandidate(client_id="pe", patient_mm=point)]
    )
    with grpc.insecure_channel(address) as channel:
        reply = cad_pb2_grpc.CadInferenceStub(channel).ClassifyVolume(
            iter([cad_pb2.VolumeChunk(header=header, instances=series_bytes(hu, aff))]),
            timeout=60,
            metadata=[("authorization", f"Bearer {TOKENS['tower-3']}")],
        )
    return str(reply.results[0].candidate_id)


@contextmanager
def review_world(
    tmp: Path,
    extra_tokens: list[dict[str, object]] | None = None,
    server_settings: dict[str, object] | None = None,
    **ui: object,
) -> Iterator[World]:
    """``server_settings``: the CAD server's beyond the defaults; ``ui``: the page's."""
    publish_tiny(tmp / "registry", tmp / "build")
    tokens = token_file(tmp / "tokens.json", extra_tokens)
    settings = make_settings(
        tmp / "registry", auth_tokens_file=tokens, workers=2, **(server_settings or {})
    )
    with ServerThread(settings) as server:
        server.refresh_models()
        ct, frame = classify_examples(server.address)
        ui_settings = ReviewUiSettings(server=server.address, **ui)  # type: ignore[arg-type]
        with review_ui(ui_settings) as process:
            yield World(
                server,
                process,
                settings.store_url,
                ct.request_id,
                frame.request_id,
                [r.candidate_id for r in (*ct.results, *frame.results)],
            )
