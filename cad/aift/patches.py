"""Candidate -> patches, by named recipe (numpy only).

A recipe turns one candidate box on one decoded image into ``m`` square
patches of the model's input size, returned as float32 ``(m, 3, S, S)`` with
pixel values 0..255 (the model graph normalises). Pixels beyond the image are
zero (black) padding. Everything is deterministic for a given image, box and
recipe: pseudo-random choices are seeded from the box itself.

Recipes (``docs/method.md``):

- ``polyp``: the box scaled by 1.0, 1.2 and 1.5; at each scale translated by
  10% of the resized box horizontally and vertically (the sign of each shift
  drawn per scale from the candidate's seed); each in the 8 dihedral variants
  (4 rotations x mirror). 24 patches, ordered dihedral-major so that a prefix
  ``polyp:m`` still spans all scales.
- ``polyp-inside``: ``polyp`` with every region shifted (not shrunk) to lie inside the image
  where it fits, instead of running into zero padding; a region larger than the image is
  centred on it. The CVC-ClinicDB experiment uses it: a 1.5x crop of a polyp at the frame's
  edge otherwise sees a black band that no mid-frame candidate has.
- ``single``: the box only, 1 patch.
- ``frame``: 8 crops of the box (the client sends the whole frame as the box
  for frame classification): the full box first, then random crops of 75-100%
  of its sides at random positions.
- ``pe``: not a box on an image but a point in a CT volume: 54 vessel-aligned
  2-channel patches (:mod:`cad.aift.vessel`).

A recipe spec may end in ``:m`` to keep the first ``m`` patches (``polyp:8``).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from cad.aift.vessel import PE_FULL_COUNT
from cad.errors import InvalidInput
from cad.validation import MAX_RECIPE_CHARS, bounded, box_values, quote

Image = npt.NDArray[np.uint8]
Patches = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Box:
    """A candidate location in pixels, origin top-left."""

    x: float
    y: float
    width: float
    height: float

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2.0, self.y + self.height / 2.0


@dataclass(frozen=True)
class Recipe:
    """How one candidate becomes its patches."""

    name: str
    scales: tuple[float, ...] = (1.0,)
    shift: float = 0.0
    """Translation as a fraction of the resized box, per axis, sign drawn per scale."""
    dihedral: bool = False
    crops: int = 0
    """Number of random crops (``frame`` recipe); 0 for box-based recipes."""
    min_crop: float = 0.75
    limit: int | None = None
    """Keep only the first ``limit`` patches (``name:limit``)."""
    inside: bool = False
    """Shift each region to lie inside the image where it fits (no zero padding)."""
    vessel: bool = False
    """Vessel-aligned patches of a point in a CT volume (``pe``), not of a box on an image."""

    @property
    def full_count(self) -> int:
        if self.vessel:
            return PE_FULL_COUNT
        if self.crops:
            return self.crops
        return len(self.scales) * (8 if self.dihedral else 1)

    @property
    def count(self) -> int:
        """Patches per candidate."""
        return min(self.full_count, self.limit) if self.limit else self.full_count

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.limit}" if self.limit else self.name


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("polyp", scales=(1.0, 1.2, 1.5), shift=0.1, dihedral=True),
        Recipe("polyp-inside", scales=(1.0, 1.2, 1.5), shift=0.1, dihedral=True, inside=True),
        Recipe("single"),
        Recipe("frame", crops=8),
        Recipe("pe", vessel=True),
    )
}


def require_image_recipe(recipe: Recipe) -> None:
    """InvalidInput for a volume recipe where a box on an image is classified."""
    if recipe.vessel:
        raise InvalidInput(
            f"recipe {quote(recipe.name)} classifies points in CT volumes: send the series and "
            "its 3D candidates with ClassifyVolume"
        )


def require_volume_recipe(recipe: Recipe) -> None:
    """InvalidInput for an image recipe where a point in a CT volume is classified."""
    if not recipe.vessel:
        raise InvalidInput(
            f"recipe {quote(recipe.name)} cuts boxes on 2D images; a CT volume's candidates "
            "need a volume recipe (pe)"
        )


def parse_recipe(spec: str, default: str = "polyp") -> Recipe:
    """Resolve a recipe spec such as ``"polyp"``, ``"polyp:8"`` or ``""`` (the default).

    Parsed strictly: a known name exactly (no surrounding spaces), optionally ``:`` and an
    ASCII decimal patch count.

    Raises:
        InvalidInput: unknown recipe name or a bad patch count.
    """
    spec = bounded(spec, "recipe", MAX_RECIPE_CHARS) or default
    name, colon, limit_text = spec.partition(":")
    recipe = RECIPES.get(name)
    if recipe is None:
        known = ", ".join(sorted(RECIPES))
        raise InvalidInput(f"unknown recipe {quote(name)}; known recipes: {known}")
    if not colon:
        return recipe
    if (
        not (limit_text.isascii() and limit_text.isdigit())
        or not 1 <= int(limit_text) <= recipe.full_count
    ):
        raise InvalidInput(
            f"recipe {quote(spec)}: the patch count after ':' must be an integer "
            f"from 1 to {recipe.full_count}"
        )
    limit = int(limit_text)
    return replace(recipe, limit=None if limit == recipe.full_count else limit)


def validate_box(box: Box, height: int, width: int) -> None:
    """Reject boxes that are not finite, not positive, or entirely outside the image.

    A box partly outside the image is accepted; its outside pixels are padded.
    """
    box_values(box.x, box.y, box.width, box.height)
    if box.x >= width or box.y >= height or box.x + box.width <= 0 or box.y + box.height <= 0:
        raise InvalidInput(
            f"box (x={box.x}, y={box.y}, width={box.width}, height={box.height}) lies entirely "
            f"outside the {width}x{height} image"
        )


def _seed(box: Box) -> np.random.Generator:
    key = np.array([box.x, box.y, box.width, box.height], dtype=np.float64).tobytes()
    return np.random.default_rng(zlib.crc32(key))


def _axis_weights(
    start: float, length: float, size: int, limit: int
) -> tuple[
    npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32], npt.NDArray[np.float32]
]:
    """Bilinear taps along one axis: indices (clipped) and weights (0 outside the image)."""
    coords = start + (np.arange(size, dtype=np.float64) + 0.5) * (length / size) - 0.5
    lo = np.floor(coords)
    frac = coords - lo
    lo_i = lo.astype(np.intp)
    hi_i = lo_i + 1
    w_lo = (1.0 - frac) * ((lo_i >= 0) & (lo_i < limit))
    w_hi = frac * ((hi_i >= 0) & (hi_i < limit))
    return (
        np.clip(lo_i, 0, limit - 1),
        np.clip(hi_i, 0, limit - 1),
        w_lo.astype(np.float32),
        w_hi.astype(np.float32),
    )


def resample_region(
    image: Image, cx: float, cy: float, width: float, height: float, size: int
) -> npt.NDArray[np.float32]:
    """Bilinear resample of the region centred at (cx, cy) to ``size x size``; zero outside.

    Returns float32 ``(C, size, size)`` (a transposed view: copy it where it must be contiguous).
    """
    h, w = image.shape[:2]
    y0, y1, wy0, wy1 = _axis_weights(cy - height / 2.0, height, size, h)
    x0, x1, wx0, wx1 = _axis_weights(cx - width / 2.0, width, size, w)
    # Separable: rows, then columns, over the pixels the region touches only, channel-first
    # like the model's input. Every tap is a gather along a middle axis (whole contiguous runs
    # copied, several times faster than gathering single elements along the last axis), so the
    # column pass runs on the transposed rows and the result is returned as a transposed view.
    # The products and sums are the same, in the same order, as a plain separable bilinear.
    r_lo, r_hi = int(min(y0.min(), y1.min())), int(max(y0.max(), y1.max())) + 1
    c_lo, c_hi = int(min(x0.min(), x1.min())), int(max(x0.max(), x1.max())) + 1
    sub = image[r_lo:r_hi, c_lo:c_hi].transpose(2, 0, 1).astype(np.float32)  # (C, rows, cols)
    rows = sub[:, y0 - r_lo]
    rows *= wy0[None, :, None]
    lower = sub[:, y1 - r_lo]
    lower *= wy1[None, :, None]
    rows += lower  # (C, size, cols)
    columns = np.ascontiguousarray(rows.transpose(0, 2, 1))  # (C, cols, size)
    out = columns[:, x0 - c_lo]
    out *= wx0[None, :, None]
    right = columns[:, x1 - c_lo]
    right *= wx1[None, :, None]
    out += right  # (C, size x, size y)
    return out.transpose(0, 2, 1)


def _dihedral(patch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """The 8 dihedral variants of a ``(C, S, S)`` patch: rotations by 0/90/180/270 degrees,
    then the same mirrored (views, no copies)."""
    mirrored = patch[:, :, ::-1]
    return [np.rot90(p, k, axes=(1, 2)) for p in (patch, mirrored) for k in range(4)]


def _fit(centre: float, length: float, limit: int) -> float:
    """``centre`` moved so that ``[centre - length/2, centre + length/2]`` lies in ``[0, limit]``."""
    if length >= limit:
        return limit / 2.0
    return min(max(centre, length / 2.0), limit - length / 2.0)


def _regions(
    box: Box, recipe: Recipe, height: int = 0, width: int = 0
) -> list[tuple[float, float, float, float]]:
    rng = _seed(box)
    cx, cy = box.center
    if recipe.crops:
        regions = [(cx, cy, box.width, box.height)]
        for _ in range(recipe.crops - 1):
            fw, fh = rng.uniform(recipe.min_crop, 1.0, size=2)
            cw, ch = box.width * fw, box.height * fh
            ox = rng.uniform(box.x + cw / 2.0, box.x + box.width - cw / 2.0)
            oy = rng.uniform(box.y + ch / 2.0, box.y + box.height - ch / 2.0)
            regions.append((float(ox), float(oy), float(cw), float(ch)))
        return regions
    regions = []
    for scale in recipe.scales:
        w, h = box.width * scale, box.height * scale
        sx, sy = rng.choice((-1.0, 1.0), size=2) if recipe.shift else (0.0, 0.0)
        rx, ry = cx + sx * recipe.shift * w, cy + sy * recipe.shift * h
        if recipe.inside:
            rx, ry = _fit(rx, w, width), _fit(ry, h, height)
        regions.append((rx, ry, w, h))
    return regions


def _output(out: Patches | None, shape: tuple[int, ...]) -> Patches:
    """``out`` checked against ``shape`` (float32), or a new array of that shape."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    return out


def extract_patches(
    image: Image, box: Box, recipe: Recipe, size: int, out: Patches | None = None
) -> Patches:
    """The patches of one candidate: float32 ``(recipe.count, 3, size, size)``, values 0..255.

    Args:
        image: decoded image, uint8 ``(H, W, 3)``.
        box: the candidate; validated with :func:`validate_box`.
        recipe: from :func:`parse_recipe`.
        size: the model's square input size.
        out: where to write them (a slice of a larger batch saves a copy); new when None.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got {image.shape}")
    require_image_recipe(recipe)
    validate_box(box, image.shape[0], image.shape[1])
    regions = _regions(
        box, recipe, image.shape[0], image.shape[1]
    )  # all drawn, so a region never depends on the count kept
    # Patch i comes from region i % len(regions) (dihedral-major order), so the first
    # ``count`` regions are all that is needed (``frame:1`` resamples 1 crop of 8).
    resampled = [resample_region(image, *region, size) for region in regions[: recipe.count]]
    if recipe.dihedral:
        variants = [_dihedral(p) for p in resampled]
        # Dihedral-major: all scales of variant 0, then all scales of variant 1, ...
        patches = [variants[s][d] for d in range(8) for s in range(len(resampled))]
    else:
        patches = resampled
    patches = patches[: recipe.count]
    out = _output(out, (len(patches), 3, size, size))
    for i, patch in enumerate(patches):
        out[i] = patch
    return out


def _dihedral_matrices() -> npt.NDArray[np.float64]:
    """:func:`_dihedral` as matrices: variant ``d`` shows, at a patch's centred coordinates
    ``(u, v)`` (column, row, each in [-1, 1]), the resampled patch at ``D[d] @ (u, v)``.

    Read off :func:`_dihedral` itself (applied to a 2x2 patch of its own coordinates), so the
    graph path (:func:`patch_affines`) cannot drift from the numpy path."""
    coords = np.array([-1.0, 1.0])
    u, v = np.meshgrid(coords, coords)  # u varies along columns, v along rows
    at = np.stack([u.ravel(), v.ravel()], axis=1)  # (4, 2): each output pixel's (u, v)
    out = []
    for variant in _dihedral(np.stack([u, v])):
        source = variant.reshape(2, -1).T  # (4, 2): the (u, v) each output pixel shows
        out.append(np.linalg.lstsq(at, source, rcond=None)[0].T)
    return np.rint(np.stack(out))


_DIHEDRAL = _dihedral_matrices()


def patch_affines(height: int, width: int, box: Box, recipe: Recipe) -> npt.NDArray[np.float32]:
    """The patches of :func:`extract_patches` as affine maps, for sampling them elsewhere (an
    ONNX ``GridSample`` on the model's device, :mod:`cad.models.sampler`).

    Row ``i`` maps patch ``i``'s centred output coordinates ``(u, v, 1)`` (``u`` along columns,
    ``v`` along rows, pixel centres at ``(2k + 1) / S - 1``) to the image pixel it samples
    (``x`` column, ``y`` row, pixel centres at integers): float32 ``(recipe.count, 2, 3)``.
    Bilinear sampling at those points with zeros outside the image gives the same patches as
    :func:`extract_patches` (which stays the reference), up to float32 rounding of the points.
    """
    validate_box(box, height, width)
    require_image_recipe(recipe)
    regions = _regions(box, recipe, height, width)[: recipe.count]
    variants = range(8) if recipe.dihedral else range(1)
    out = np.empty((len(variants) * len(regions), 2, 3), dtype=np.float64)
    k = 0
    for d in variants:  # dihedral-major, as extract_patches orders them
        for cx, cy, w, h in regions:
            out[k, :, :2] = np.diag([w / 2.0, h / 2.0]) @ _DIHEDRAL[d]
            out[k, :, 2] = (cx - 0.5, cy - 0.5)
            k += 1
    return out[: recipe.count].astype(np.float32)


def extract_many(
    image: Image, boxes: Sequence[Box], recipe: Recipe, size: int, out: Patches | None = None
) -> Patches:
    """Patches of several candidates on one image, concatenated candidate by candidate.

    ``out`` (float32 ``(len(boxes) * recipe.count, 3, size, size)``), when given, receives them.
    """
    m = recipe.count
    out = _output(out, (len(boxes) * m, 3, size, size))
    for k, box in enumerate(boxes):  # written in place: a 72-patch request is 43 MB at 224 px
        extract_patches(image, box, recipe, size, out=out[k * m : (k + 1) * m])
    return out


class PatchBuffers:
    """One reusable patch array per thread, for callers that extract request after request.

    A fresh array per request (43 MB for 72 patches at 224 px) is new memory from the kernel
    every time: its pages are faulted in and zeroed on first write and unmapped when freed, which
    cost about a fifth of the extraction time on the development machine (``bench.extraction``)
    and serialises threads on the process's memory map. A thread's array stays valid until that thread asks again.
    Requests of more than ``max_patches`` get a fresh array, so an odd huge request does not pin
    its memory for good.
    """

    def __init__(self, max_patches: int) -> None:
        self.max_patches = max_patches
        self._local = threading.local()

    def get(self, count: int, size: int) -> Patches:
        """An uninitialised float32 ``(count, 3, size, size)`` array, this thread's when it fits."""
        if count > self.max_patches:
            return np.empty((count, 3, size, size), dtype=np.float32)
        buffer: Patches | None = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < count or buffer.shape[2] != size:
            buffer = np.empty((count, 3, size, size), dtype=np.float32)
            self._local.buffer = buffer
        return buffer[:count]
