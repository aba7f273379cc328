"""Pulmonary embolism candidates: the vessel's axis and vessel-aligned patches (numpy only).

A PE candidate is a point in a CT volume. Its patches follow the vessel it lies in (the AIFT
paper, section 4.3, after Tajbakhsh et al., MICCAI 2015, "vessel-aligned multi-planar image
representation"): each patch has two planes through the candidate, the vessel's
cross-section (the plane normal to its axis) and a longitudinal view (a plane that contains
the axis, which runs vertically in the patch), made 3-channel by repeating the second.

The ``pe`` recipe: 3 physical widths (10, 15 and 20 mm), the candidate translated along the
vessel by -20%, 0 and +20% of the width ("3 times, up to 20% of the physical size"), and the
two planes rotated around the axis in 6 steps of 30 degrees (the original plus "5 additional
variations"): 54 patches, rotation-major, so that a prefix ``pe:9`` keeps every width and
translation. Resampled trilinearly at the physical size from the voxel spacing, windowed from
HU to 0..255 (a CTPA window by default), as every recipe's patches are.

The axis, when the candidate does not give it: the eigenvector of the Hessian of the
Gaussian-smoothed volume at the candidate with the smallest eigenvalue magnitude (along a
tube the intensity barely changes; across it, it falls on both sides), at the scale among
1.5, 2.5 and 4 mm where the scale-normalised cross-sectional curvature is strongest (a scale
matched to the vessel's radius).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cad.errors import InvalidInput
from cad.volumes import Volume, block_around, hu_to_rgb, rgb_to_hu

PE_WIDTHS_MM = (10.0, 15.0, 20.0)
PE_SHIFTS = (-0.2, 0.0, 0.2)
PE_ROTATIONS = 6
PE_WINDOW = (100.0, 700.0)
"""(centre, width) in HU: a common CT pulmonary angiography window (-250 to 450 HU)."""
AXIS_SCALES_MM = (1.5, 2.5, 4.0)


@dataclass(frozen=True)
class VesselAxis:
    direction: tuple[float, float, float]
    """Unit vector in patient coordinates; sign fixed so its largest component is positive."""
    scale_mm: float
    """The Gaussian scale the estimate was made at."""
    estimated: bool
    """False when the candidate gave the direction."""


def unit(v: npt.ArrayLike, what: str = "direction") -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore"):  # 1e200 and the like: an infinite norm, refused below
        n = float(np.linalg.norm(a)) if a.shape == (3,) else math.nan
    if a.shape != (3,) or not math.isfinite(n) or n < 1e-9:
        raise InvalidInput(f"the {what} must be 3 finite numbers, not all 0")
    a = a / n
    return a if a[np.argmax(np.abs(a))] > 0 else -a


def _hessian(volume: Volume, centre: npt.NDArray[np.float64], sigma: float) -> np.ndarray:
    """Hessian (patient axes, HU / mm^2) of the volume smoothed by a Gaussian of ``sigma`` mm at
    ``centre``: the volume sampled on an isotropic grid around it, weighted by the Gaussian's
    second derivatives (no full convolution: only the centre's value is needed)."""
    h = sigma / 2.0
    r = int(math.ceil(3 * sigma / h))
    offs = np.arange(-r, r + 1) * h
    gx, gy, gz = np.meshgrid(offs, offs, offs, indexing="ij")
    d = np.stack([gx, gy, gz], axis=-1)  # (n, n, n, 3) mm from the centre
    values = volume.sample(centre + d).astype(np.float64)
    g = np.exp(-(d**2).sum(-1) / (2 * sigma**2))
    g /= g.sum()
    out = np.empty((3, 3))
    for a in range(3):
        for b in range(a, 3):
            kernel = g * (d[..., a] * d[..., b] / sigma**4 - (a == b) / sigma**2)
            out[a, b] = out[b, a] = float((values * kernel).sum())
    return out


def vessel_axis(volume: Volume, point_mm: npt.ArrayLike) -> VesselAxis:
    """The vessel direction at a candidate (see the module's note)."""
    centre = np.asarray(point_mm, dtype=np.float64)
    best: tuple[float, npt.NDArray[np.float64], float] | None = None
    for sigma in AXIS_SCALES_MM:
        vals, vecs = np.linalg.eigh(_hessian(volume, centre, sigma))
        order = np.argsort(np.abs(vals))
        # Scale-normalised strength of the two cross-sectional curvatures.
        strength = sigma**2 * float(np.abs(vals[order[1:]]).sum())
        if best is None or strength > best[0]:
            best = (strength, vecs[:, order[0]], sigma)
    assert best is not None  # noqa: S101  an invariant, not input checking
    d = unit(best[1])
    return VesselAxis((float(d[0]), float(d[1]), float(d[2])), best[2], True)


def _perpendicular(axis: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A unit vector normal to ``axis``, the same for the same axis: from the patient axis least
    aligned with it."""
    e = np.eye(3)[int(np.argmin(np.abs(axis)))]
    u = e - (e @ axis) * axis
    return u / np.linalg.norm(u)


def vessel_frame(
    a: npt.NDArray[np.float64], angle: float = 0.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Two unit vectors normal to the unit axis ``a`` and to each other, turned by ``angle``
    radians around it: ``u`` (across every view) and ``v = a x u`` (the cross-section's other
    side). The one frame patches, review planes and marked points share."""
    u0 = _perpendicular(a)
    u = math.cos(angle) * u0 + math.sin(angle) * np.cross(a, u0)
    return u, np.cross(a, u)


def review_axes(
    axis: npt.ArrayLike,
) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """(horizontal, vertical) of the three review planes: the cross-section, then the two
    longitudinal views with the axis down the rows."""
    a = unit(axis, "vessel direction")
    u, v = vessel_frame(a)
    return [(u, v), (u, a), (v, a)]


def plane_points(
    centre: npt.NDArray[np.float64],
    horizontal: npt.NDArray[np.float64],
    vertical: npt.NDArray[np.float64],
    width_mm: float,
    size: int,
) -> npt.NDArray[np.float64]:
    """Patient points ``(size, size, 3)`` of a square plane: pixel centres, row down along
    ``vertical``, column right along ``horizontal``."""
    t = ((np.arange(size) + 0.5) / size - 0.5) * width_mm
    return centre + t[None, :, None] * horizontal[None, None, :] + t[:, None, None] * vertical


def window_to_8bit(
    hu: npt.NDArray[np.float32], window: tuple[float, float] = PE_WINDOW
) -> npt.NDArray[np.float32]:
    """HU -> 0..255 (float32) through a linear window (centre, width)."""
    centre, width = window
    low = centre - width / 2.0
    return np.clip((hu - low) * (255.0 / width), 0.0, 255.0).astype(np.float32)


def pe_planes(
    volume: Volume,
    point_mm: npt.ArrayLike,
    axis: npt.ArrayLike,
    width_mm: float,
    size: int,
    angle: float = 0.0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """HU of the cross-sectional and the longitudinal plane (``size x size`` each) at a point,
    ``width_mm`` wide, rotated by ``angle`` radians around the axis."""
    a = unit(axis, "vessel direction")
    u, v = vessel_frame(a, angle)
    centre = np.asarray(point_mm, dtype=np.float64)
    cross = volume.sample(plane_points(centre, u, v, width_mm, size))
    # The axis runs down the longitudinal view (rows), u across it.
    longitudinal = volume.sample(plane_points(centre, u, a, width_mm, size))
    return cross, longitudinal


def review_planes(
    volume: Volume, point_mm: npt.ArrayLike, axis: npt.ArrayLike, width_mm: float, size: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The three vessel-aligned planes a reviewer looks at, in HU: the cross-section and the two
    orthogonal longitudinal views (axis down the rows), each ``width_mm`` wide."""
    centre = np.asarray(point_mm, dtype=np.float64)
    p0, p1, p2 = (
        volume.sample(plane_points(centre, h, v, width_mm, size)) for h, v in review_axes(axis)
    )
    return p0, p1, p2


def pe_patch_specs(count: int) -> list[tuple[float, float, float]]:
    """(width mm, shift along the axis as a fraction of the width, rotation in radians) of the
    first ``count`` patches, rotation-major."""
    specs = [
        (w, s, r * math.pi / PE_ROTATIONS)
        for r in range(PE_ROTATIONS)
        for w in PE_WIDTHS_MM
        for s in PE_SHIFTS
    ]
    return specs[:count]


PE_FULL_COUNT = len(PE_WIDTHS_MM) * len(PE_SHIFTS) * PE_ROTATIONS


def extract_pe_patches(
    volume: Volume,
    point_mm: npt.ArrayLike,
    axis: npt.ArrayLike,
    count: int,
    size: int,
    window: tuple[float, float] = PE_WINDOW,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """The vessel-aligned patches of one candidate: float32 ``(count, 3, size, size)``, values
    0..255; channel 0 the cross-section, channels 1 and 2 the longitudinal view."""
    a = unit(axis, "vessel direction")
    centre = np.asarray(point_mm, dtype=np.float64)
    if out is None:
        out = np.empty((count, 3, size, size), dtype=np.float32)
    specs = pe_patch_specs(count)
    # The planes are laid out in voxel indices directly (the affine is linear): no per-point
    # patient-to-voxel transform, float32 throughout.
    points = np.empty((len(specs), 2, size, size, 3), dtype=np.float32)
    to_voxel = np.linalg.inv(volume.affine[:3, :3])
    for n, (width, shift, angle) in enumerate(specs):
        u, v = vessel_frame(a, angle)
        at = volume.to_voxel(centre + shift * width * a)
        h = to_voxel @ u
        points[n, 0] = plane_points(at, h, to_voxel @ v, width, size)
        points[n, 1] = plane_points(at, h, to_voxel @ a, width, size)
    planes = window_to_8bit(volume.sample_voxels(points), window)  # one pass for all
    out[:, 0] = planes[:, 0]
    out[:, 1] = planes[:, 1]
    out[:, 2] = planes[:, 1]
    return out


# ------------------------------------------------------------------ a PE candidate, kept for review

REVIEW_WIDTH_MM = 30.0
REVIEW_PANEL = 256
"""Pixels per review plane (the montage is 3 panels side by side)."""
BLOCK_REACH_MM = 22.0
"""How far from the candidate the archived block reaches: every ``pe`` patch (20 mm wide, moved
20% along the axis: 14.7 mm at its corners) and the 30 mm review planes (21.2 mm)."""
VOLUME_SOURCE = "ct-volume"
"""``source_kind`` of a PE candidate's archived image: its voxel block, not a picture."""


@dataclass(frozen=True)
class PeGeometry:
    """Where a PE candidate is, in its archived voxel block (stored with the candidate as JSON)."""

    point_mm: tuple[float, float, float]
    axis: tuple[float, float, float]
    estimated: bool
    scale_mm: float
    window: tuple[float, float]
    affine: tuple[float, ...]
    """The block's 4 x 4 voxel-to-patient affine, row-major."""
    shape: tuple[int, int, int]
    """The block's (slices, rows, columns)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "pe",
                "point_mm": self.point_mm,
                "axis": self.axis,
                "estimated": self.estimated,
                "scale_mm": self.scale_mm,
                "window": self.window,
                "affine": self.affine,
                "shape": self.shape,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PeGeometry:
        d = json.loads(text)
        if d.get("kind") != "pe":
            raise ValueError("not the geometry of a PE candidate")
        return cls(
            tuple(d["point_mm"]),
            tuple(d["axis"]),
            bool(d["estimated"]),
            float(d["scale_mm"]),
            tuple(d["window"]),
            tuple(float(v) for v in d["affine"]),
            tuple(int(v) for v in d["shape"]),  # type: ignore[arg-type]
        )

    def block(self, pixels: npt.NDArray[np.uint8]) -> Volume:
        """The archived block (:func:`cad.volumes.hu_to_rgb` pixels) as a volume."""
        return Volume(rgb_to_hu(pixels, self.shape), np.array(self.affine).reshape(4, 4))


def keep_candidate(
    volume: Volume,
    point_mm: npt.ArrayLike,
    axis: VesselAxis,
    window: tuple[float, float],
) -> tuple[npt.NDArray[np.uint8], PeGeometry]:
    """What the archive and the store keep of a PE candidate: its voxel block as lossless 8-bit
    RGB pixels, and its geometry in that block."""
    block = block_around(volume, point_mm, BLOCK_REACH_MM)
    p = np.asarray(point_mm, dtype=np.float64)
    geometry = PeGeometry(
        (float(p[0]), float(p[1]), float(p[2])),
        axis.direction,
        axis.estimated,
        axis.scale_mm,
        (float(window[0]), float(window[1])),
        tuple(float(v) for v in block.affine.reshape(-1)),
        block.shape,
    )
    return hu_to_rgb(block.hu), geometry


REVIEW_SCROLL_MM = 5.0
"""How far along the vessel a reader may move the cross-section from the candidate: its
corners (21.2 mm out at the candidate) stay inside the archived block (BLOCK_REACH_MM) up to
about 5 mm."""


def review_montage(
    pixels: npt.NDArray[np.uint8],
    geometry: PeGeometry,
    window: tuple[float, float] | None = None,
    offset_mm: float = 0.0,
) -> npt.NDArray[np.uint8]:
    """The three review planes of an archived PE candidate side by side (cross-section, then the
    two longitudinal views, axis down), 30 mm wide each: RGB8 ``(REVIEW_PANEL, 3 *
    REVIEW_PANEL, 3)``. ``window``: (centre, width) in HU (default: the candidate's own);
    ``offset_mm``: the cross-section moved that far along the vessel (within
    ±REVIEW_SCROLL_MM), the longitudinal views staying centred on the candidate.

    Raises:
        InvalidInput: an offset beyond REVIEW_SCROLL_MM, or a window of no width.
    """
    if not math.isfinite(offset_mm) or abs(offset_mm) > REVIEW_SCROLL_MM + 1e-9:
        raise InvalidInput(
            f"the cross-section may move up to {REVIEW_SCROLL_MM:.0f} mm along the vessel from "
            f"the candidate (the archived block ends beyond), not {offset_mm} mm"
        )
    centre, width = window if window is not None else geometry.window
    if not (math.isfinite(centre) and math.isfinite(width) and 1.0 <= width <= 10000.0):
        raise InvalidInput(f"window width must be between 1 and 10000 HU, got {width}")
    block = geometry.block(pixels)
    planes = list(
        review_planes(block, geometry.point_mm, geometry.axis, REVIEW_WIDTH_MM, REVIEW_PANEL)
    )
    if offset_mm:  # the cross-section alone, moved along the vessel
        axis = unit(geometry.axis, "vessel direction")
        moved = np.asarray(geometry.point_mm, dtype=np.float64) + offset_mm * axis
        across, down = review_axes(axis)[0]
        planes[0] = block.sample(plane_points(moved, across, down, REVIEW_WIDTH_MM, REVIEW_PANEL))
    gray = np.concatenate([window_to_8bit(p, (centre, width)) for p in planes], axis=1)
    return np.repeat(np.rint(gray).astype(np.uint8)[..., None], 3, axis=2)


def review_box() -> tuple[float, float, float, float]:
    """Where the candidate is drawn on :func:`review_montage`: the smallest patch (10 mm) around
    the centre of the cross-section. (x, y, width, height) in montage pixels."""
    side = PE_WIDTHS_MM[0] / REVIEW_WIDTH_MM * REVIEW_PANEL
    return (REVIEW_PANEL - side) / 2, (REVIEW_PANEL - side) / 2, side, side


def archived_pe_patches(
    pixels: npt.NDArray[np.uint8], geometry: PeGeometry, count: int, size: int
) -> npt.NDArray[np.float32]:
    """A PE candidate's patches cut again from its archived block: what serving cut."""
    return extract_pe_patches(
        geometry.block(pixels), geometry.point_mm, geometry.axis, count, size, geometry.window
    )


MISSED_REACH_MM = BLOCK_REACH_MM - 15.0
"""How far from its candidate a missed finding marked on the planes may lie: its own patches
(reaching 14.7 mm) must stay inside the candidate's archived block."""


def point_on_planes(geometry: PeGeometry, x: float, y: float) -> PeGeometry:
    """The geometry of a finding a reviewer marked at (x, y) on :func:`review_montage`: the
    same block and vessel axis, the point where the click lies in the patient.

    Raises:
        InvalidInput: the click is off the planes, or farther than MISSED_REACH_MM from the
            candidate (mark it there only if it is this candidate's vessel; else send it to
            ClassifyVolume as a candidate of its own).
    """
    panel = int(x // REVIEW_PANEL)
    if not (0 <= panel < 3 and 0 <= y < REVIEW_PANEL and x >= 0):
        raise InvalidInput("the marked point is not on one of the three planes")
    mm = REVIEW_WIDTH_MM / REVIEW_PANEL
    th = (x - panel * REVIEW_PANEL - REVIEW_PANEL / 2) * mm
    tv = (y - REVIEW_PANEL / 2) * mm
    if math.hypot(th, tv) > MISSED_REACH_MM:
        raise InvalidInput(
            f"the marked point is {math.hypot(th, tv):.1f} mm from the candidate; on its planes "
            f"a missed finding may be marked up to {MISSED_REACH_MM:.0f} mm from it (farther: "
            "send the point to ClassifyVolume)"
        )
    h, v = review_axes(geometry.axis)[panel]
    p = np.asarray(geometry.point_mm) + th * h + tv * v
    return PeGeometry(
        (float(p[0]), float(p[1]), float(p[2])),
        geometry.axis,
        False,
        0.0,
        geometry.window,
        geometry.affine,
        geometry.shape,
    )
