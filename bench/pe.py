"""What a pulmonary embolism candidate costs to serve, against a polyp candidate, on this machine.

    .venv/bin/python -m bench.pe [--size 224] [--repeats 5] [--out FILE]

Both through the production classifiers in-process (no transport), on one model (AlexNet at
``--size`` px, the serving benchmark's), with a serial batcher:

- polyp: a 384 x 288 frame with 3 candidate boxes, ``polyp`` recipe (24 patches each);
- PE: a synthetic CTPA series (64 slices of 256 x 256 at 0.7 x 0.7 x 1.0 mm, an oblique
  contrast-filled vessel with a clot) sent as DICOM, 3 candidate points on the vessel, ``pe``
  recipe (54 vessel-aligned patches each), with the axis estimated (the default) and given.

Per candidate: the median over ``--repeats`` calls of the whole request divided by its
candidates; the PE request's share spent assembling the series, estimating the axis and cutting
patches is timed apart. Prints the ratios PE / polyp per candidate and per patch; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import build_model, log


def _classifiers(work: Path, size: int) -> tuple[Any, Any]:
    from prometheus_client import CollectorRegistry

    from cad.imaging import ImageLimits
    from cad.metrics import ServiceMetrics
    from cad.models.batcher import SerialBatcher
    from cad.models.inference import Classifier, ModelManager
    from cad.models.providers import SessionOptions
    from cad.models.volume_inference import VolumeClassifier

    if size == 224:
        registry = build_model(work)
    else:  # a smaller model for quick runs (tests)
        from trainer.bootstrap import init_model
        from trainer.settings import TrainerSettings

        init_model(TrainerSettings(registry_root=work / "registry", input_size=size))
        from cad.models.registry import ModelRegistry

        registry = ModelRegistry(work / "registry", "cad")
    metrics = ServiceMetrics(CollectorRegistry())
    models = ModelManager(registry, SessionOptions(), metrics)
    models.refresh()
    classifier = Classifier(models, metrics, ImageLimits(), 64, SerialBatcher(64, metrics))
    return classifier, VolumeClassifier(classifier)


def _ctpa_series() -> tuple[list[bytes], list[np.ndarray], np.ndarray]:
    from support.ctpa import series_bytes, tube_volume

    aff = np.diag([0.7, 0.7, 1.0, 1.0])
    aff[:3, 3] = (-90.0, -90.0, -32.0)
    shape = (64, 256, 256)
    hu, centre, direction = tube_volume(shape, aff, [128, 128, 32], (0.3, -0.5, 0.81))
    points = [centre + t * direction for t in (-8.0, 0.0, 8.0)]
    return series_bytes(hu, aff), points, direction


def _median_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench-pe.json")
    args = parser.parse_args(argv)

    from cad.aift import Box
    from cad.aift.vessel import extract_pe_patches, vessel_axis
    from cad.models.inference import CandidateInput, ClassifyInput, EncodedImage
    from cad.models.volume_inference import VolumeCandidateInput, VolumeInput
    from cad.series import assemble_series

    with tempfile.TemporaryDirectory() as tmp:
        classifier, volumes = _classifiers(Path(tmp), args.size)
        import io

        from PIL import Image

        frame = np.random.default_rng(0).integers(0, 255, (288, 384, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        boxes = [Box(40, 40, 60, 50), Box(200, 100, 80, 80), Box(300, 200, 40, 40)]
        polyp = ClassifyInput(
            EncodedImage(buf.getvalue()),
            0,
            [CandidateInput(str(i), b) for i, b in enumerate(boxes)],
            recipe="polyp",
        )
        series, points, direction = _ctpa_series()
        estimated = VolumeInput(
            series,
            [VolumeCandidateInput(str(i), tuple(p)) for i, p in enumerate(points)],  # type: ignore[arg-type]
            recipe="pe",
        )
        given = VolumeInput(
            series,
            [
                VolumeCandidateInput(str(i), tuple(p), direction=tuple(direction))  # type: ignore[arg-type]
                for i, p in enumerate(points)
            ],
            recipe="pe",
        )
        log(f"timing {args.repeats} requests of each kind at {args.size} px ...")
        t_polyp = _median_seconds(lambda: classifier.classify(polyp), args.repeats) / 3
        t_pe = _median_seconds(lambda: volumes.classify(estimated), args.repeats) / 3
        t_pe_given = _median_seconds(lambda: volumes.classify(given), args.repeats) / 3
        t_assemble = _median_seconds(lambda: assemble_series(series), args.repeats)
        volume = assemble_series(series)
        t_axis = _median_seconds(lambda: vessel_axis(volume, points[1]), args.repeats)
        t_cut = _median_seconds(
            lambda: extract_pe_patches(volume, points[1], direction, 54, args.size), args.repeats
        )
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "size": args.size,
        "polyp_s_per_candidate": t_polyp,
        "pe_s_per_candidate": t_pe,
        "pe_given_axis_s_per_candidate": t_pe_given,
        "pe_series_assembly_s": t_assemble,
        "pe_axis_s": t_axis,
        "pe_patch_cut_s": t_cut,
        "pe_vs_polyp_per_candidate": t_pe / t_polyp,
        "pe_vs_polyp_per_patch": (t_pe / 54) / (t_polyp / 24),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"per candidate at {args.size} px: polyp {1000 * t_polyp:.1f} ms (24 patches), "
        f"PE {1000 * t_pe:.1f} ms (54 patches, axis estimated; {1000 * t_pe_given:.1f} ms given)\n"
        f"  PE / polyp: {result['pe_vs_polyp_per_candidate']:.2f}x per candidate, "
        f"{result['pe_vs_polyp_per_patch']:.2f}x per patch\n"
        f"  of the PE request: series assembly {1000 * t_assemble:.0f} ms (once per series of "
        f"64 slices), axis {1000 * t_axis:.1f} ms, patch cut {1000 * t_cut:.1f} ms per candidate"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
