"""The CVC-ClinicDB data set as frames and simple CAD-like candidates: what the experiments, the
benchmarks and the tests read it with (``../shared/data/cvc-clinicdb``, research-only licence,
read where it lies, never copied). Positives are the polyp boxes with a small seeded jitter;
:func:`generate` adds ``k`` random negatives per frame inside the field of view. The experiments'
harder generator (near misses, highlights, folds) is ``experiments.cvc.pool.generate_pool``."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cad.aift import Box

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cvc-clinicdb"


@dataclass(frozen=True)
class Frame:
    frame: int
    sequence: int
    path: Path
    polyps: tuple[Box, ...]
    mask_path: Path | None = None
    """Its polyp mask; None: ``<root>/masks/<frame>.png`` (CVC-ClinicDB's layout)."""


@dataclass(frozen=True)
class GeneratedCandidate:
    frame: Frame
    box: Box
    label: int
    kind: str = ""
    """``polyp``, or how a negative was found (``near``, ``specular``, ``bump``, ``edge``, ``random``)."""


def load_frames(root: Path = DEFAULT_ROOT) -> list[Frame]:
    """Every frame with its sequence and polyp boxes (from polyp_boxes.csv, max exclusive)."""
    if not (root / "sequences.csv").is_file():
        raise FileNotFoundError(f"CVC-ClinicDB not found at {root} (expected sequences.csv there)")
    boxes: dict[int, list[Box]] = defaultdict(list)
    with (root / "polyp_boxes.csv").open() as fh:
        for row in csv.DictReader(fh):
            x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes[int(row["frame"])].append(Box(x0, y0, x1 - x0, y1 - y0))
    frames = []
    with (root / "sequences.csv").open() as fh:
        for row in csv.DictReader(fh):
            f = int(row["frame"])
            frames.append(
                Frame(f, int(row["sequence"]), root / "images" / f"{f}.png", tuple(boxes[f]))
            )
    return sorted(frames, key=lambda fr: fr.frame)


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.width * a.height + b.width * b.height - inter)


def field_of_view(pixels: np.ndarray, threshold: int = 25) -> np.ndarray:
    """Boolean mask of the valid (non-border) area of a colonoscopy frame."""
    return pixels.max(axis=2) > threshold


def inside(mask: np.ndarray, box: Box, need: float = 0.95) -> bool:
    x0, y0 = int(box.x), int(box.y)
    x1, y1 = int(box.x + box.width), int(box.y + box.height)
    if x0 < 0 or y0 < 0 or x1 > mask.shape[1] or y1 > mask.shape[0] or x1 <= x0 or y1 <= y0:
        return False
    return float(mask[y0:y1, x0:x1].mean()) >= need


def positives(fr: Frame, rng: np.random.Generator, jitter: float) -> list[GeneratedCandidate]:
    """The frame's polyp boxes, each moved and resized by up to ``jitter`` of its size."""
    out = []
    for p in fr.polyps:
        dx, dy, sw, sh = rng.uniform(-jitter, jitter, 4)
        w, h = p.width * (1 + sw), p.height * (1 + sh)
        out.append(
            GeneratedCandidate(fr, Box(p.x + dx * p.width, p.y + dy * p.height, w, h), 1, "polyp")
        )
    return out


def generate(
    frames: list[Frame],
    k_negatives: int,
    seed: int,
    sizes: list[tuple[float, float]] | None = None,
    jitter: float = 0.05,
    tries: int = 200,
) -> list[GeneratedCandidate]:
    """Positives at the polyps (jittered) and ``k_negatives`` negatives per frame."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = sizes or [(b.width, b.height) for f in frames for b in f.polyps]
    out: list[GeneratedCandidate] = []
    for fr in frames:
        out += positives(fr, rng, jitter)
        mask = field_of_view(np.asarray(Image.open(fr.path).convert("RGB")))
        placed = 0
        for _ in range(tries):
            if placed >= k_negatives:
                break
            w, h = sizes[int(rng.integers(len(sizes)))]
            box = Box(
                float(rng.uniform(0, mask.shape[1] - w)),
                float(rng.uniform(0, mask.shape[0] - h)),
                w,
                h,
            )
            if inside(mask, box) and all(iou(box, p) < 0.1 for p in fr.polyps):
                out.append(GeneratedCandidate(fr, box, 0))
                placed += 1
    return out
