"""``cad demo``: the whole loop on embedded defaults, end to end over real gRPC.

1. bootstrap the model (AlexNet -> ONNX -> registry version 1),
2. start the server in-process on free ports,
3. classify candidates on a real CT slice that ships inside pydicom,
4. stream a short video (frames of a real multi-frame ultrasound, as PNG),
5. act as a reviewer: take the AIFT annotation queue, dismiss and confirm
   candidates, add a missed finding, print the resulting labels,
6. run one AIFT training round on those labels; the running server swaps the
   new version in without a restart and its responses say so,
7. print a few lines of /metrics, and shut down cleanly.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc

from cad.logs import configure_logging
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from service.settings import ServerSettings

CT_FILE = "CT_small.dcm"
VIDEO_FILE = "examples_ybr_color.dcm"
VIDEO_FRAMES = 8


def sample_dicom(name: str) -> Path:
    """A real DICOM file bundled with pydicom or the pydicom-data package, by file name.

    Looks only at installed files: never triggers pydicom's network download.
    """
    import pydicom

    candidates = [Path(pydicom.__file__).parent / "data" / "test_files" / name]
    try:
        import data_store  # the pydicom-data package

        candidates.append(Path(data_store.__file__).parent / "data" / name)
    except ImportError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} is installed neither with pydicom nor with pydicom-data")


def _print_results(title: str, response: cad_pb2.ClassifyResponse) -> None:
    print(
        f"\n{title}: model v{response.model_version}, recipe {response.recipe}, "
        f"image {response.image_width}x{response.image_height}, frame {response.frame_index}"
    )
    print(
        f"  {'client_id':<12} {'candidate_id':<36} {'P(finding)':>10} {'patches':>7} "
        f"{'entropy':>8} {'diversity':>10} {'score':>7}"
    )
    for r in response.results:
        print(
            f"  {r.client_id:<12} {r.candidate_id:<36} {r.probability:>10.4f} {r.patches:>7} "
            f"{r.entropy:>8.3f} {r.diversity:>10.3f} {r.score:>7.3f}"
        )


def _video_frames() -> Iterator[cad_pb2.ClassifyRequest]:
    from PIL import Image

    from cad.imaging import decode_dicom

    data = sample_dicom(VIDEO_FILE).read_bytes()
    for index in range(VIDEO_FRAMES):
        frame = decode_dicom(data, index).pixels
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        h, w = frame.shape[:2]
        yield cad_pb2.ClassifyRequest(
            encoded=buffer.getvalue(),
            frame_index=index,
            source_id="demo-video-1",
            candidates=[
                cad_pb2.Candidate(
                    client_id=f"f{index}-c0",
                    box=cad_pb2.Box(x=w * 0.4, y=h * 0.35, width=w * 0.2, height=h * 0.25),
                )
            ],
        )


def _review(channel: grpc.Channel, ct: cad_pb2.ClassifyResponse) -> None:
    """Act as a reviewer on the annotation queue, then show the labels the trainer will get."""
    review = cad_pb2_grpc.CadReviewStub(channel)
    queue = review.GetAnnotationQueue(cad_pb2.QueueRequest(limit=4), timeout=30)
    print(
        f"[5/7] reviewer: annotation queue ({queue.variant}), {queue.unlabeled} unlabeled candidates"
    )
    for item in queue.items:
        print(
            f"      {item.candidate_id}  score={item.score:.3f}  P={item.probability:.4f}  "
            f"source={item.source_id or '-'} frame={item.frame_index}"
        )
    verdicts = [cad_pb2.FALSE_POSITIVE, cad_pb2.TRUE_POSITIVE, cad_pb2.FALSE_POSITIVE]
    for item, verdict in zip(queue.items, verdicts, strict=False):  # the queue may be shorter
        receipt = review.SubmitCorrection(
            cad_pb2.Correction(
                candidate_id=item.candidate_id,
                verdict=verdict,
                reviewer="dr.demo",
                idempotency_key=f"demo-{item.candidate_id}",
            ),
            timeout=30,
        )
        print(
            f"      {cad_pb2.Verdict.Name(verdict):<14} {item.candidate_id} -> "
            f"{cad_pb2.LabelState.Name(receipt.label)} (event {receipt.event_id})"
        )
    missed = review.AddMissedFinding(
        cad_pb2.MissedFinding(
            request_id=ct.request_id,
            box=cad_pb2.Box(x=50, y=20, width=20, height=20),
            reviewer="dr.demo",
            idempotency_key="demo-missed-1",
            note="missed lesion",
        ),
        timeout=30,
    )
    print(
        f"      MISSED FINDING on the CT slice -> {missed.candidate_id} "
        f"{cad_pb2.LabelState.Name(missed.label)}"
    )
    print("      labels now in the store (what the trainer exports):")
    for labeled in review.ExportLabels(cad_pb2.ExportRequest(), timeout=30):
        print(
            f"        {labeled.candidate_id:<40} {cad_pb2.LabelState.Name(labeled.label):<8} "
            f"origin={labeled.origin:<6} image={labeled.image_sha256[:12]}... "
            f"({labeled.image_width}x{labeled.image_height})"
        )


def _train_and_swap(
    channel: grpc.Channel,
    root: Path,
    settings: ServerSettings,
    ct_request: cad_pb2.ClassifyRequest,
    ct: cad_pb2.ClassifyResponse,
    preset: str,
) -> None:
    """One AIFT round on the reviewer's labels; the running server picks the new version up."""
    from trainer.round import run_round
    from trainer.settings import TrainerSettings

    print("[6/7] training round on the reviewer's labels (continuous fine-tuning of v1)")
    print("      demo only: with 4 labels there is no validation split, so the round publishes an")
    print("      UNVALIDATED model; a production round refuses to (allow_unvalidated is off).")
    report = run_round(
        TrainerSettings(
            registry_root=root,
            store_url=settings.store_url,
            archive_root=settings.archive_root,
            val_fraction=0.0,
            allow_unvalidated=True,
            preset=preset,
        ),
        progress=False,
    )
    print(f"      {report.summary()}")
    admin = cad_pb2_grpc.ModelAdminStub(channel)
    deadline = time.monotonic() + 120
    while admin.GetModel(cad_pb2.GetModelRequest(), timeout=30).version != str(report.version):
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not pick up the new version")
    again = cad_pb2_grpc.CadInferenceStub(channel).Classify(ct_request, timeout=120)
    print(
        f"      the server swapped without a restart: the same CT request is now answered by "
        f"model v{again.model_version}"
    )
    for before, after in zip(ct.results, again.results, strict=True):
        print(
            f"        {after.client_id:<8} P(finding) v1 {before.probability:.4f} -> "
            f"v{again.model_version} {after.probability:.4f}"
        )


def _print_metrics(port: int) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    wanted = (
        "cad_grpc_requests_total",
        "cad_candidates_total",
        "cad_patches_total",
        "cad_model_info",
        "cad_model_inference_duration_seconds_count",
        "cad_model_batch_patches_sum",
        "cad_corrections_total",
        "cad_missed_findings_total",
        "cad_annotation_queue_depth",
        "cad_model_live_precision",
    )
    print("\n/metrics (excerpt):")
    for line in text.splitlines():
        if line.startswith(wanted):
            print("  " + line)


def demo_start() -> tuple[str, str, str]:
    """(architecture, learning preset, why): ImageNet AlexNet where torchvision's weights are on
    this machine (the torch hub cache), else the ImageNet SqueezeNet v1.0 the package ships, so
    the demo's probabilities, entropy and diversity differ between candidates and the queue's
    order means something. Nothing is downloaded."""
    from trainer.weights import WeightsUnavailable, resolve

    try:
        found = resolve("alexnet", "imagenet")
    except WeightsUnavailable:
        return (
            "squeezenet1_0",
            "polyp-squeezenet",
            "ImageNet SqueezeNet v1.0, shipped with the package (no ImageNet AlexNet weights on "
            "this machine)",
        )
    assert found is not None  # noqa: S101  an invariant, not input checking
    return "alexnet", "polyp", f"ImageNet AlexNet ({found.found}: {found.path})"


# long: the demo's script, step by step as the user reads its output, top to bottom
def run_demo(workdir: str | None = None, log_level: str = "WARNING") -> int:
    """Run the demo; returns the process exit code."""
    from trainer.bootstrap import init_model
    from trainer.settings import TrainerSettings

    configure_logging(log_level)
    logging.getLogger("trainer.network").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="cad-demo-") as tmp:
        root = Path(workdir or tmp) / "registry"
        architecture, preset, why = demo_start()
        print(f"[1/7] bootstrapping the model into {root}: {why}")
        t0 = time.perf_counter()
        info = init_model(
            TrainerSettings(
                registry_root=root, architecture=architecture, weights="imagenet", preset=preset
            ),
            force=True,
        )
        parity = info.manifest.export.parity_max_abs_diff if info.manifest.export else float("nan")
        print(
            f"      version {info.version}, pretrained: {info.manifest.pretrained.source}, "
            f"ONNX/torch max |dp| {parity:.1e} "
            f"({time.perf_counter() - t0:.1f}s)"
        )

        settings = ServerSettings(
            registry_root=root,
            host="127.0.0.1",
            port=0,
            metrics_host="127.0.0.1",
            metrics_port=0,
            poll_interval_s=0.5,
            store_url=f"sqlite:///{root.parent / 'labels.sqlite3'}",
            archive_root=root.parent / "archive",
        )
        with ServerThread(settings) as server:
            server.refresh_models()
            print(f"[2/7] server on {server.address}, metrics on :{server.metrics_port}")
            with grpc.insecure_channel(server.address) as channel:
                admin = cad_pb2_grpc.ModelAdminStub(channel)
                model = admin.GetModel(cad_pb2.GetModelRequest(), timeout=30)
                manifest = json.loads(model.manifest_json)
                print(
                    f"      serving {model.model_name} v{model.version} on "
                    f"{model.execution_provider}, input {model.input_size}px, "
                    f"default recipe {model.default_recipe}, sha256 {manifest['sha256'][:12]}..."
                )

                stub = cad_pb2_grpc.CadInferenceStub(channel)
                print(f"[3/7] classifying 3 candidates on the CT slice {CT_FILE} (pydicom)")
                ct_request = cad_pb2.ClassifyRequest(
                    dicom=sample_dicom(CT_FILE).read_bytes(),
                    window=cad_pb2.Window(center=40, width=400),
                    candidates=[
                        cad_pb2.Candidate(
                            client_id="ct-a", box=cad_pb2.Box(x=30, y=40, width=24, height=24)
                        ),
                        cad_pb2.Candidate(
                            client_id="ct-b", box=cad_pb2.Box(x=70, y=60, width=32, height=28)
                        ),
                        cad_pb2.Candidate(
                            client_id="ct-edge", box=cad_pb2.Box(x=110, y=110, width=30, height=30)
                        ),
                    ],
                )
                ct = stub.Classify(ct_request, timeout=120)
                _print_results("CT slice", ct)

                print(f"[4/7] streaming {VIDEO_FRAMES} video frames (PNG) through ClassifyStream")
                t0 = time.perf_counter()
                frames = list(stub.ClassifyStream(_video_frames(), timeout=300))
                elapsed = time.perf_counter() - t0
                for response in frames:
                    r = response.results[0]
                    print(
                        f"      frame {response.frame_index}: {r.client_id} "
                        f"P(finding)={r.probability:.4f} score={r.score:.3f} "
                        f"(model v{response.model_version})"
                    )
                print(f"      {len(frames)} frames in {elapsed:.2f}s")
                _review(channel, ct)
                _train_and_swap(channel, root, settings, ct_request, ct, preset)
            print("[7/7] metrics")
            _print_metrics(server.metrics_port)
        print("\nserver stopped cleanly; demo done.")
    print(
        "\nReviewers do step 5 in the browser: start a server with a token file\n"
        "(CAD_AUTH_TOKENS_FILE, one review token per reviewer), then\n"
        "  cad review-ui --server 127.0.0.1:50051 --port 8080\n"
        "and open http://127.0.0.1:8080/ to sign in with your own token (README: The reviewers' page)."
    )
    return 0
