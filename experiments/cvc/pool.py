"""CVC-ClinicDB frames and candidate generators that imitate a CAD's.

Reads the data where it lies (``../shared/data/cvc-clinicdb``; research-only
licence, never copied). Positives: the polyp boxes with small seeded jitter,
every polyp kept whatever its size (small ones are counted apart in the
experiment's report, not dropped).

:func:`generate` (the earlier, easy pool): ``k`` random negatives per frame.

:func:`generate_pool` (a candidate generator's output): about ``ratio``
negatives per polyp, ``hard_fraction`` of them hard, each found from the
frame's own pixels:

- ``near``: boxes of the frame's polyp size next to the polyp (IoU < 0.1);
- ``specular``: centred on specular highlights (bright, unsaturated blobs);
- ``bump``: centred on local maxima of the smoothed brightness (bright bumps);
- ``edge``: centred on the strongest smoothed gradients (folds, lumen edges);

each kind an equal share, the others making up what a kind cannot find on
the frame, and the rest ``random`` boxes. Every negative has IoU < 0.1 with every polyp,
at most ``max_polyp`` of its pixels on the polyp mask, and at least
``min_fov`` of them inside the field of view (the octagon inside the black
border); sizes come from the polyps' sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cad.aift import Box
from support.cvc import (
    DEFAULT_ROOT,
    Frame,
    GeneratedCandidate,
    field_of_view,
    generate,
    inside,
    iou,
    load_frames,
    positives,
)

__all__ = [
    "DEFAULT_ROOT",
    "HARD_KINDS",
    "Frame",
    "GeneratedCandidate",
    "field_of_view",
    "generate",
    "generate_pool",
    "inside",
    "iou",
    "load_frames",
    "polyp_mask",
]

HARD_KINDS = ("near", "specular", "bump", "edge")


def polyp_mask(root: Path, frame: Frame) -> np.ndarray:
    """The frame's ground-truth polyp mask (a pixel is polyp where its value is > 127)."""
    from PIL import Image

    mask = np.asarray(Image.open(frame.mask_path or root / "masks" / f"{frame.frame}.png"))
    return (mask.max(axis=2) if mask.ndim == 3 else mask) > 127


def _blur(gray: np.ndarray, radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    img = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def _peaks(
    score: np.ndarray, allowed: np.ndarray, count: int, spacing: int
) -> list[tuple[int, int]]:
    """Up to ``count`` (y, x) maxima of ``score`` inside ``allowed``, at least ``spacing`` apart."""
    s = np.where(allowed, score, -np.inf).astype(np.float64)
    out: list[tuple[int, int]] = []
    for _ in range(count * 4):
        if len(out) >= count:
            break
        i = int(np.argmax(s))
        if not np.isfinite(s.flat[i]) or s.flat[i] <= 0:
            break
        y, x = divmod(i, s.shape[1])
        out.append((y, x))
        s[max(0, y - spacing) : y + spacing + 1, max(0, x - spacing) : x + spacing + 1] = -np.inf
    return out


def _feature_maps(pixels: np.ndarray, fov: np.ndarray) -> dict[str, np.ndarray]:
    rgb = pixels.astype(np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    gray = rgb.mean(axis=2)
    inner = _blur(fov.astype(np.float32) * 255, 6) > 250  # away from the border's own edge
    specular = ((mx > 220) & (mx - mn < 70)).astype(np.float32) * 255
    smooth = _blur(gray, 6)
    bump = smooth - _blur(gray, 24)  # brighter than its surroundings
    gy, gx = np.gradient(_blur(gray, 3))
    return {
        "specular": _blur(specular, 4) * inner,
        "bump": bump * inner,
        "edge": np.hypot(gx, gy) * inner,
    }


class _FrameNegatives:
    """The negatives placed on one frame, and the rules every one of them keeps."""

    def __init__(
        self, frame: Frame, fov: np.ndarray, mask: np.ndarray, max_polyp: float, min_fov: float
    ) -> None:
        self.frame, self.fov, self.mask = frame, fov, mask
        self.max_polyp, self.min_fov = max_polyp, min_fov
        self.placed: list[Box] = []
        self.candidates: list[GeneratedCandidate] = []

    def ok(self, box: Box) -> bool:
        h, w = self.mask.shape
        x0, y0 = round(box.x), round(box.y)
        x1, y1 = round(box.x + box.width), round(box.y + box.height)
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h or x1 - x0 < 4 or y1 - y0 < 4:
            return False
        if (
            self.fov[y0:y1, x0:x1].mean() < self.min_fov
            or self.mask[y0:y1, x0:x1].mean() > self.max_polyp
        ):
            return False
        if any(iou(box, p) >= 0.1 for p in self.frame.polyps):
            return False
        return all(iou(box, q) < 0.5 for q in self.placed)  # no near-duplicate negatives

    def add(self, box: Box, kind: str) -> bool:
        """Place ``box`` if it keeps the rules; whether it was placed."""
        if not self.ok(box):
            return False
        self.placed.append(box)
        self.candidates.append(GeneratedCandidate(self.frame, box, 0, kind))
        return True


class _HardNegatives:
    """Places a frame's hard negatives: each kind its share, then the others make up what a kind
    could not find. Each kind is a lazy source of placements, each a few alternative boxes of
    which the first that keeps the rules is taken."""

    def __init__(
        self,
        negatives: _FrameNegatives,
        rng: np.random.Generator,
        size: Callable[[], tuple[float, float]],
        tries: int,
        n_hard: int,
    ) -> None:
        self.negatives, self.rng, self.size, self.tries, self.n_hard = (
            negatives,
            rng,
            size,
            tries,
            n_hard,
        )
        self.sources: dict[str, Iterator[Iterator[Box]]] = {}

    def near(self) -> Iterator[Iterator[Box]]:
        """Boxes of the polyp's own size just outside it, one try each."""
        polyps, rng = self.negatives.frame.polyps, self.rng
        for _ in range(self.tries if polyps else 0):
            p = polyps[int(rng.integers(len(polyps)))]
            s = rng.uniform(0.7, 1.2)
            w, h = p.width * s, p.height * s
            angle = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.8, 1.6)
            cx = p.center[0] + np.cos(angle) * dist * (p.width + w) / 2
            cy = p.center[1] + np.sin(angle) * dist * (p.height + h) / 2
            yield iter([Box(float(cx - w / 2), float(cy - h / 2), float(w), float(h))])

    def centred(self, score: np.ndarray, allowed: np.ndarray) -> Iterator[Iterator[Box]]:
        """For each peak of ``score``, up to 8 sizes of box around it."""
        for y, x in _peaks(score, allowed, self.n_hard * 6, spacing=12):
            yield self._sized(y, x)

    def _sized(self, y: int, x: int) -> Iterator[Box]:
        for _ in range(8):
            w, h = self.size()
            ox, oy = self.rng.uniform(-0.25, 0.25, 2)
            yield Box(float(x - w * (0.5 + ox)), float(y - h * (0.5 + oy)), w, h)

    def _next(self, kind: str) -> bool:
        """The kind's next placement; False once its source has run out."""
        for alternatives in self.sources[kind]:
            if any(self.negatives.add(b, kind) for b in alternatives):
                return True
        return False

    def place(self, per_kind: dict[str, int], pixels: np.ndarray) -> None:
        neg = self.negatives
        self.sources["near"] = self.near()
        maps = _feature_maps(pixels, neg.fov)
        not_polyp = ~(_blur(neg.mask.astype(np.float32) * 255, 4) > 10)
        for kind in ("specular", "bump", "edge"):
            self.sources[kind] = self.centred(maps[kind], not_polyp)
        for kind in HARD_KINDS:  # each kind its share ...
            for _ in range(per_kind[kind]):
                if not self._next(kind):
                    break
        live = list(HARD_KINDS)  # ... then the others make up what a kind could not find
        while live and len(neg.placed) < self.n_hard:
            live = [k for k in live if len(neg.placed) < self.n_hard and self._next(k)]


def generate_pool(
    frames: list[Frame],
    seed: int,
    root: Path = DEFAULT_ROOT,
    ratio: float = 10.0,
    hard_fraction: float = 0.5,
    max_polyp: float = 0.03,
    min_fov: float = 0.9,
    sizes: list[tuple[float, float]] | None = None,
    jitter: float = 0.05,
    tries: int = 300,
    relative_sizes: list[tuple[float, float]] | None = None,
) -> list[GeneratedCandidate]:
    """Candidates like a CAD's candidate generator proposes (see the module docstring).

    ``relative_sizes``: negatives' sizes as fractions of the frame's width and height (for
    images of many resolutions, such as Kvasir-SEG's) instead of ``sizes`` in pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = sizes or [(b.width, b.height) for f in frames for b in f.polyps]
    out: list[GeneratedCandidate] = []
    for fr in frames:
        out += positives(fr, rng, jitter)
        pixels = np.asarray(Image.open(fr.path).convert("RGB"))
        fov = field_of_view(pixels)
        mask = polyp_mask(root, fr)
        h_px, w_px = mask.shape
        total = round(ratio * max(1, len(fr.polyps)))
        n_hard = round(total * hard_fraction)
        per_kind = {
            k: n_hard // len(HARD_KINDS) + (1 if i < n_hard % len(HARD_KINDS) else 0)
            for i, k in enumerate(HARD_KINDS)
        }
        negatives = _FrameNegatives(fr, fov, mask, max_polyp, min_fov)
        add = negatives.add

        def size(width: float = w_px, height: float = h_px) -> tuple[float, float]:
            if relative_sizes:  # this frame's size, bound now (the loop moves on)
                fw, fh = relative_sizes[int(rng.integers(len(relative_sizes)))]
                return fw * width, fh * height
            return sizes[int(rng.integers(len(sizes)))]

        _HardNegatives(negatives, rng, size, tries, n_hard).place(per_kind, pixels)
        got = len(negatives.placed)
        for _ in range(tries * 2):
            if got >= total:
                break
            w, h = size()
            got += add(
                Box(float(rng.uniform(0, w_px - w)), float(rng.uniform(0, h_px - h)), w, h),
                "random",
            )
        out += negatives.candidates
    return out
