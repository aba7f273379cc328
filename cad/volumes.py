"""A CT volume in Hounsfield units with its patient geometry (numpy): the :class:`Volume` type,
trilinear sampling, and the blocks around a candidate the archive keeps. A DICOM series becomes
a volume in :mod:`cad.series`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from cad.errors import InvalidInput

AIR_HU = -1024.0
"""What lies outside the scanned volume (air): the value resampling pads with."""
HU_MIN, HU_MAX = -32768.0, 32767.0
MIN_SLICES = 2
"""Fewer is no volume: a single slice has no extent along its normal."""


@dataclass(frozen=True)
class VolumeLimits:
    """Per-series limits; a series over them is refused with RESOURCE_EXHAUSTED."""

    max_voxels: int = 160_000_000
    """About 600 slices of 512 x 512 (640 MB as float32)."""
    max_slices: int = 2_000
    max_series_bytes: int = 1_500_000_000


@dataclass(frozen=True)
class Volume:
    """Voxels in HU, indexed ``[k, j, i]`` (slice, row, column), and where they lie."""

    hu: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    """4 x 4: ``(i, j, k, 1)`` (column, row, slice index) -> ``(x, y, z, 1)`` patient mm."""
    series_uid: str = ""
    study_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    """Per slice, in slice order (one UID repeated for an enhanced multi-frame CT)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        k, j, i = self.hu.shape
        return int(k), int(j), int(i)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """mm between neighbouring voxels along i (columns), j (rows) and k (slices)."""
        cols = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(cols[0]), float(cols[1]), float(cols[2])

    def to_patient(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Voxel indices ``(..., 3)`` as (i, j, k) -> patient mm ``(..., 3)``."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_voxel(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Patient mm ``(..., 3)`` -> fractional voxel indices (i, j, k)."""
        p = np.asarray(xyz, dtype=np.float64) - self.affine[:3, 3]
        return p @ np.linalg.inv(self.affine[:3, :3]).T

    def contains(self, ijk: npt.ArrayLike) -> bool:
        i, j, k = (float(v) for v in np.asarray(ijk, dtype=np.float64))
        ks, js, is_ = self.shape
        return -0.5 <= i <= is_ - 0.5 and -0.5 <= j <= js - 0.5 and -0.5 <= k <= ks - 0.5

    @cached_property
    def padded(self) -> npt.NDArray[np.float32]:
        """The voxels with a border of air, kept for sampling (made once per volume)."""
        return pad(self.hu, AIR_HU)

    def sample(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Trilinear HU at patient points ``(..., 3)``; air outside the volume."""
        return self.sample_voxels(self.to_voxel(xyz))

    def sample_voxels(self, ijk: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Trilinear HU at fractional voxel indices ``(..., 3)`` (i, j, k); air outside."""
        return trilinear(self.hu, ijk, AIR_HU, self.padded)


def pad(grid: npt.NDArray[np.float32], outside: float) -> npt.NDArray[np.float32]:
    """``grid`` with one voxel of ``outside`` around it (what :func:`trilinear` samples)."""
    return np.pad(grid, 1, constant_values=np.float32(outside))


_CHUNK = 1 << 20


def trilinear(
    grid: npt.NDArray[np.float32],
    ijk: npt.NDArray[np.floating],
    outside: float,
    padded: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of ``grid[k, j, i]`` at fractional ``(..., 3)`` (i, j, k) points;
    each of the 8 taps outside the grid counts as ``outside``. ``padded``: :func:`pad` of the
    grid, when the caller keeps one.

    The 8 neighbours are 8 ``np.take`` gathers at fixed offsets from each point's flat index in
    the padded grid (faster than fancy indexing or a strided 2 x 2 x 2 view), then 7 lerps."""
    if padded is None:
        padded = pad(grid, outside)
    shape = ijk.shape[:-1]
    pts = ijk.reshape(-1, 3)
    out = np.empty(len(pts), dtype=np.float32)
    for start in range(0, len(pts), _CHUNK):
        p = pts[start : start + _CHUNK].astype(np.float32)
        out[start : start + len(p)] = _trilinear_chunk(padded, p, outside)
    return out.reshape(shape)


def _lerp(
    lo: npt.NDArray[np.float32], hi: npt.NDArray[np.float32], t: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``lo + (hi - lo) * t``, in ``hi``'s memory."""
    hi -= lo
    hi *= t
    hi += lo
    return hi


def _trilinear_chunk(
    padded: npt.NDArray[np.float32], p: npt.NDArray[np.float32], outside: float
) -> npt.NDArray[np.float32]:
    big_k, big_j, big_i = padded.shape
    flat = padded.reshape(-1)
    base = np.floor(p)
    frac = p - base
    b = base.astype(np.int64) + 1  # index into the padded grid
    inside = np.ones(len(p), dtype=bool)
    for axis, n in enumerate((big_i, big_j, big_k)):
        inside &= (b[:, axis] >= 0) & (b[:, axis] <= n - 2)
        np.clip(b[:, axis], 0, n - 2, out=b[:, axis])
    idx = (b[:, 2] * big_j + b[:, 1]) * big_i + b[:, 0]
    fi, fj, fk = frac[:, 0], frac[:, 1], frac[:, 2]
    rows = []
    for offset in (0, big_i, big_j * big_i, big_j * big_i + big_i):  # (dj, dk) corners
        rows.append(_lerp(np.take(flat, idx + offset), np.take(flat, idx + (offset + 1)), fi))
    values = _lerp(_lerp(rows[0], rows[1], fj), _lerp(rows[2], rows[3], fj), fk)
    values[~inside] = outside
    return values


# ----------------------------------------------------------------------------- candidate blocks


def block_around(volume: Volume, point_mm: npt.ArrayLike, reach_mm: float) -> Volume:
    """The voxels every sample within ``reach_mm`` of a point needs (its trilinear taps
    included), with the affine of their corner: sampling the block anywhere within reach gives
    what sampling the whole volume gives (air outside the volume in both)."""
    lin = volume.affine[:3, :3]
    centre = volume.to_voxel(point_mm)
    half = reach_mm * np.linalg.norm(np.linalg.inv(lin), axis=1) + 1.0  # per index axis
    dims = np.array([volume.shape[2], volume.shape[1], volume.shape[0]])
    lo = np.clip(np.floor(centre - half).astype(np.int64), 0, dims)
    hi = np.clip(np.ceil(centre + half).astype(np.int64) + 1, 0, dims)
    if np.any(hi <= lo):
        raise InvalidInput("the candidate's surroundings lie outside the volume")
    sub = volume.hu[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    affine = volume.affine.copy()
    affine[:3, 3] = volume.to_patient(lo.astype(np.float64))
    return Volume(
        np.ascontiguousarray(sub),
        affine,
        volume.series_uid,
        volume.study_uid,
        volume.sop_instance_uids[lo[2] : hi[2]],
    )


def hu_to_rgb(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Whole HU ``(k, j, i)`` as an 8-bit RGB image ``(k * j, i, 3)`` the archive stores as a PNG,
    losslessly: red the high byte of HU + 32768, green the low byte, blue 0."""
    v = (np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int32) + 32768).reshape(-1, hu.shape[2])
    out = np.zeros((*v.shape, 3), dtype=np.uint8)
    out[..., 0] = v >> 8
    out[..., 1] = v & 0xFF
    return out


def rgb_to_hu(pixels: npt.NDArray[np.uint8], shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """:func:`hu_to_rgb` undone: HU ``shape`` (k, j, i)."""
    k, j, i = (int(n) for n in shape)
    if pixels.shape != (k * j, i, 3):
        raise ValueError(f"an archived block of {shape} is {k * j}x{i} pixels, not {pixels.shape}")
    v = (pixels[..., 0].astype(np.int32) << 8) | pixels[..., 1].astype(np.int32)
    return (v - 32768).astype(np.float32).reshape(k, j, i)


def nearest_slice(volume: Volume, point_mm: Sequence[float]) -> int:
    """The 0-based index, in the series' slice order, of the slice nearest ``point_mm``."""
    k = float(volume.to_voxel(np.asarray(point_mm, dtype=np.float64))[2])
    return int(min(max(round(k), 0), volume.shape[0] - 1))
