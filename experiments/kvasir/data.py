"""Kvasir-SEG images as the experiment's frames, their split and their candidates.

- :func:`load_images`: every image with its polyp boxes (``polyp_boxes.csv``, max exclusive)
  and its mask, as a :class:`~experiments.cvc.pool.Frame`. There are no sequences: each image
  is its own source (``sequence`` is its index), so per-source statistics count images.
- :func:`make_split`: pool, validation and test by image id, drawn once with a fixed seed; the
  result is kept in ``split.json`` beside this module and checked against a fresh draw.
- Candidates come from the same generator as CVC-ClinicDB's
  (:func:`experiments.cvc.pool.generate_pool`: the polyp boxes, hard negatives found on the
  image's own pixels, and random ones in the field of view). The burned-in text and the
  scope's corner box are bright, sharp-edged and inside what the generator takes for the field
  of view, so they are found as ``edge`` and ``bump`` negatives like any fold or highlight.

    python -m experiments.kvasir.data   # the split's sizes and the candidates per kind
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from cad.aift import Box
from experiments.cvc.pool import Frame, GeneratedCandidate, generate_pool

DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "kvasir-seg"
SPLIT_FILE = Path(__file__).resolve().parent / "split.json"
SPLIT_SEED = 20261206
FRACTIONS = {"pool": 0.6, "validation": 0.15, "test": 0.25}
"""600 pool images to label, 150 to choose methods on, 250 to report on."""


def load_images(root: Path = DEFAULT_ROOT) -> tuple[list[Frame], list[str]]:
    """(frames, ids): frame ``i`` is image ``ids[i]`` (ids sorted)."""
    if not (root / "polyp_boxes.csv").is_file():
        raise FileNotFoundError(f"Kvasir-SEG not found at {root} (expected polyp_boxes.csv)")
    boxes: dict[str, list[Box]] = defaultdict(list)
    with (root / "polyp_boxes.csv").open() as fh:
        for row in csv.DictReader(fh):
            x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes[row["image"]].append(Box(x0, y0, x1 - x0, y1 - y0))
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    frames = [
        Frame(
            i,
            i,  # no sequences: each image is its own source
            root / "images" / f"{image}.jpg",
            tuple(boxes[image]),
            root / "masks" / f"{image}.jpg",
        )
        for i, image in enumerate(ids)
    ]
    return frames, ids


def make_split(ids: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Pool, validation and test ids: a seeded permutation of the sorted ids, cut by
    :data:`FRACTIONS` (each part sorted)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [sorted(ids)[i] for i in order]
    n_pool = round(FRACTIONS["pool"] * len(ids))
    n_val = round(FRACTIONS["validation"] * len(ids))
    return {
        "pool": sorted(shuffled[:n_pool]),
        "validation": sorted(shuffled[n_pool : n_pool + n_val]),
        "test": sorted(shuffled[n_pool + n_val :]),
    }


def load_split(path: Path = SPLIT_FILE) -> dict[str, list[str]]:
    data = json.loads(path.read_text())
    return {k: data[k] for k in FRACTIONS}


def candidates(
    frames: list[Frame], seed: int, root: Path = DEFAULT_ROOT, ratio: float = 10.0
) -> list[GeneratedCandidate]:
    """CAD-like candidates on ``frames``: about ``ratio`` negatives per polyp, half of them hard
    (the CVC-ClinicDB pool's settings). The images' resolutions differ (332 to 1,920 px wide):
    negatives take the polyps' sizes relative to their image's."""
    from PIL import Image

    relative = []
    for fr in frames:
        with Image.open(fr.path) as image:
            width, height = image.size
        relative += [(b.width / width, b.height / height) for b in fr.polyps]
    return generate_pool(frames, seed, root=root, ratio=ratio, relative_sizes=relative)


def main() -> int:
    frames, ids = load_images()
    split = load_split()
    assert split == make_split(ids), "split.json is not the seeded split of these images"
    print({k: len(v) for k, v in split.items()})
    index = {image: i for i, image in enumerate(ids)}
    for part in ("pool", "validation", "test"):
        chosen = [frames[index[image]] for image in split[part]]
        found = candidates(chosen, seed=0)
        kinds = Counter(c.kind for c in found)
        positives = kinds.pop("polyp", 0)
        negatives = sum(kinds.values())
        print(
            f"{part}: {len(chosen)} images, {positives} polyps, {negatives} negatives "
            f"({negatives / max(1, positives):.1f} per polyp): {dict(sorted(kinds.items()))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
