"""CT series -> one :class:`~cad.volumes.Volume` in Hounsfield units with its patient geometry
(numpy and pydicom).

A CT reading workstation or a PACS sends a whole series: single-frame CT instances (one slice
each) or one enhanced multi-frame CT. :func:`assemble_series` orders the slices by their
position along the slice normal (never by file order or InstanceNumber), checks that they form
one regular grid, applies the Modality LUT (Rescale Slope and Intercept: HU) and returns a
:class:`Volume` whose ``affine`` maps voxel indices to patient coordinates in mm (DICOM PS3.3
C.7.6.2.1.1: ImagePositionPatient is the centre of the first voxel; ImageOrientationPatient's
first triplet is the direction of increasing column index, its second of increasing row).

Refused with a message that says what is wrong: instances of more than one series, mixed
orientations, differing sizes or pixel spacings, two slices at one position, a missing slice
(a gap larger than the slice spacing), uneven spacing, slices off one line, a modality other
than CT; a volume over :class:`VolumeLimits` is LimitExceeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cad.errors import INTERRUPTS, CadError, InvalidInput, LimitExceeded
from cad.imaging import (
    check_transfer_syntax,
    decoding_stage,
    dicom_numbers,
    positive_int,
    read_dicom,
    rescale,
    uid_text,
)
from cad.volumes import HU_MAX, HU_MIN, MIN_SLICES, Volume, VolumeLimits

# ----------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class _Slice:
    position: npt.NDArray[np.float64]
    pixels: npt.NDArray[Any]
    slope: float
    intercept: float
    sop_uid: str


def _vector(ds: Any, keyword: str, count: int, where: str) -> npt.NDArray[np.float64]:
    values = dicom_numbers(ds, keyword, -1e6, 1e6)
    if len(values) != count:
        raise InvalidInput(
            f"{where} has no usable {keyword} ({count} numbers needed): "
            "its geometry in the patient is unknown"
        )
    return np.array(values, dtype=np.float64)


def _spacing(ds: Any, where: str) -> npt.NDArray[np.float64]:
    """PixelSpacing: two positive distances in mm (a zero or negative one is no geometry)."""
    spacing = _vector(ds, "PixelSpacing", 2, where)
    if (spacing <= 0).any():
        raise InvalidInput(
            f"{where} has a PixelSpacing (0028,0030) that is not two positive distances in mm"
        )
    return spacing


@contextmanager
def _reading(where: str) -> Iterator[None]:
    """One instance's header read: a value pydicom cannot parse (a damaged VR, a length that
    does not fit it) is InvalidInput naming the instance, as for a 2D image, never INTERNAL."""
    try:
        yield
    except (CadError, *INTERRUPTS):
        raise
    except Exception as exc:  # noqa: BLE001 (pydicom raises many types on damaged elements)
        raise InvalidInput(
            f"{where}: a header attribute could not be read ({type(exc).__name__}); the file "
            "is damaged or not what its header declares"
        ) from None


def _item(ds: Any, sequence: str) -> Any:
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _functional(shared: Any, frame: Any, sequence: str) -> Any:
    """A functional group macro of one frame: its own, else the shared one."""
    for group in (frame, shared):
        if group is not None and (item := _item(group, sequence)) is not None:
            return item
    return None


def _enhanced_slices(
    ds: Any, frames: int, index: int
) -> tuple[list[_Slice], npt.NDArray[np.float64], npt.NDArray[np.float64], tuple[int, int]]:
    """The frames of an enhanced multi-frame CT, each with its own position and rescale."""
    from pydicom.pixels import pixel_array

    where = f"instance {index} (enhanced, frame {{}})"
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames:
        raise InvalidInput(
            f"instance {index}: {frames} frames but {len(per_frame)} per-frame functional "
            "groups; each frame needs its position"
        )
    syntax = check_transfer_syntax(ds)
    with decoding_stage("decode the DICOM pixel data", syntax):
        arr = pixel_array(ds)
    if arr.ndim != 3 or arr.shape[0] != frames:
        raise InvalidInput(f"instance {index}: the pixel data is not {frames} grayscale frames")
    slices, orientation, spacing = [], None, None
    for f, group in enumerate(per_frame):
        here = where.format(f)
        plane = _functional(shared, group, "PlanePositionSequence")
        orient = _functional(shared, group, "PlaneOrientationSequence")
        measures = _functional(shared, group, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise InvalidInput(
                f"{here} has no plane position, plane orientation or pixel measures: "
                "its geometry in the patient is unknown"
            )
        o = _vector(orient, "ImageOrientationPatient", 6, here)
        s = _spacing(measures, here)
        if orientation is None or spacing is None:
            orientation, spacing = o, s
        _same_grid(orientation, spacing, o, s, here)
        transform = _functional(shared, group, "PixelValueTransformationSequence")
        slope, intercept = rescale(transform) if transform is not None else rescale(ds)
        slices.append(
            _Slice(
                _vector(plane, "ImagePositionPatient", 3, here),
                arr[f],
                slope,
                intercept,
                uid_text(ds, "SOPInstanceUID"),
            )
        )
    assert orientation is not None and spacing is not None  # noqa: S101  an invariant, not input checking
    return slices, orientation, spacing, (int(ds.Rows), int(ds.Columns))


def _same_grid(
    o0: npt.NDArray[np.float64],
    s0: npt.NDArray[np.float64],
    o: npt.NDArray[np.float64],
    s: npt.NDArray[np.float64],
    where: str,
) -> None:
    if np.abs(o - o0).max() > 1e-4:
        raise InvalidInput(
            f"{where} has another ImageOrientationPatient than the first slice: a series of "
            "mixed orientations is not one volume"
        )
    if np.abs(s - s0).max() > 1e-4 * max(1.0, float(s0.max())):
        raise InvalidInput(f"{where} has another PixelSpacing than the first slice")


def assemble_series(instances: Sequence[bytes], limits: VolumeLimits | None = None) -> Volume:
    """One CT volume from its DICOM instances, in any order.

    Raises:
        InvalidInput: not one consistent CT series (see the module's list).
        UnsupportedImage: a transfer syntax this server cannot decode.
        LimitExceeded: more slices, voxels or bytes than ``limits``.
    """
    from pydicom.pixels import pixel_array

    limits = limits or VolumeLimits()
    _check_counts(instances, limits)
    slices: list[_Slice] = []
    orientation = spacing = None
    size: tuple[int, int] | None = None
    series: set[str] = set()
    studies: set[str] = set()
    for n, data in enumerate(instances):
        where = f"instance {n}"
        with _reading(where):
            ds = read_dicom(data)
            if str(ds.get("Modality", "") or "") != "CT":
                raise InvalidInput(f"{where} is not CT (Modality): volumes are CT series in HU")
            if "PixelData" not in ds:
                raise InvalidInput(f"{where} has no pixel data")
            series.add(uid_text(ds, "SeriesInstanceUID"))
            studies.add(uid_text(ds, "StudyInstanceUID"))
            rows = positive_int(ds, "Rows", "(0028,0010)", 0)
            cols = positive_int(ds, "Columns", "(0028,0011)", 0)
            if not rows or not cols:
                raise InvalidInput(f"{where} has no Rows or Columns: its size is unknown")
            if size is not None and size != (rows, cols):
                raise InvalidInput(
                    f"{where} is {cols}x{rows} pixels where the first slice is "
                    f"{size[1]}x{size[0]}: a series of differing sizes is not one volume"
                )
            size = (rows, cols)
            frames = positive_int(ds, "NumberOfFrames", "(0028,0008)", 1)
            if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
                if len(instances) > 1:
                    raise InvalidInput(
                        "an enhanced multi-frame CT is a whole series: send it alone, not with "
                        "other instances"
                    )
                if frames * rows * cols > limits.max_voxels:
                    raise LimitExceeded(_voxel_message(frames, rows, cols, limits))
                slices, orientation, spacing, size = _enhanced_slices(ds, frames, n)
                break
            if len(instances) * rows * cols > limits.max_voxels:
                raise LimitExceeded(_voxel_message(len(instances), rows, cols, limits))
            o = _vector(ds, "ImageOrientationPatient", 6, where)
            s = _spacing(ds, where)
            if orientation is None or spacing is None:
                orientation, spacing = o, s
            _same_grid(orientation, spacing, o, s, where)
            syntax = check_transfer_syntax(ds)
            with decoding_stage("decode the DICOM pixel data", syntax):
                arr = pixel_array(ds)
            if arr.ndim != 2:
                raise InvalidInput(f"{where}: the pixel data is not one grayscale slice")
            slope, intercept = rescale(ds)
            slices.append(
                _Slice(
                    _vector(ds, "ImagePositionPatient", 3, where),
                    arr,
                    slope,
                    intercept,
                    uid_text(ds, "SOPInstanceUID"),
                )
            )
    _one_series(series, studies, slices, len(instances))
    assert orientation is not None and spacing is not None and size is not None  # noqa: S101  an invariant, not input checking
    return _stack(slices, orientation, spacing, series.pop(), studies.pop())


def _one_series(series: set[str], studies: set[str], slices: list[_Slice], instances: int) -> None:
    """The instances make one series of one study, each instance once, enough slices."""
    if len(series) > 1:
        raise InvalidInput(
            f"the instances belong to {len(series)} series (SeriesInstanceUID): send one series "
            "per request"
        )
    if len(studies) > 1:
        raise InvalidInput(
            f"the instances name {len(studies)} studies (StudyInstanceUID): one series lies in "
            "one study"
        )
    uids = [s.sop_uid for s in slices]
    if instances > 1 and len(set(uids)) < len(uids):  # (an enhanced CT's frames share one)
        raise InvalidInput(
            f"{len(uids) - len(set(uids))} instance(s) repeat another's SOPInstanceUID: the "
            "same instance sent twice, or slices that are not instances of their own"
        )
    if len(slices) < MIN_SLICES:
        raise InvalidInput(
            f"the series has {len(slices)} slice: a volume needs at least {MIN_SLICES} (the "
            "patches reach along the vessel, across slices); send the whole series"
        )


def _check_counts(instances: Sequence[bytes], limits: VolumeLimits) -> None:
    if not instances:
        raise InvalidInput("the series has no instances: send its DICOM files")
    if len(instances) > limits.max_slices:
        raise LimitExceeded(
            f"{len(instances)} instances is over the limit of {limits.max_slices} per series"
        )
    total = getattr(instances, "nbytes", None)  # an upload spilled to disk knows its size
    if total is None:
        total = sum(len(b) for b in instances)
    if total > limits.max_series_bytes:
        raise LimitExceeded(
            f"the series is {total} bytes, over the limit of {limits.max_series_bytes}"
        )


def _voxel_message(slices: int, rows: int, cols: int, limits: VolumeLimits) -> str:
    return (
        f"the series is {slices} x {rows} x {cols} = {slices * rows * cols} voxels, over the "
        f"limit of {limits.max_voxels}"
    )


def _stack(
    slices: list[_Slice],
    orientation: npt.NDArray[np.float64],
    spacing: npt.NDArray[np.float64],
    series_uid: str,
    study_uid: str,
) -> Volume:
    row_dir, col_dir = orientation[:3], orientation[3:]
    for name, v in (("row", row_dir), ("column", col_dir)):
        if not math.isclose(float(np.linalg.norm(v)), 1.0, abs_tol=1e-3):
            raise InvalidInput(f"ImageOrientationPatient's {name} direction is not a unit vector")
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise InvalidInput("ImageOrientationPatient's row and column directions are not orthogonal")
    normal = np.cross(row_dir, col_dir)
    depth = np.array([s.position @ normal for s in slices])
    order = np.argsort(depth, kind="stable")
    slices = [slices[i] for i in order]
    depth = depth[order]
    steps = np.diff(depth)
    if len(slices) > 1:
        if steps.min() < 1e-3:
            at = int(np.argmin(steps))
            raise InvalidInput(
                f"two slices lie at one position ({depth[at]:.2f} mm along the slice normal): "
                "a duplicate, or two acquisitions in one series"
            )
        step = float(np.median(steps))
        if steps.max() > 1.5 * step:
            at = int(np.argmax(steps))
            missing = round(steps[at] / step) - 1
            raise InvalidInput(
                f"a gap of {steps[at]:.2f} mm between the slices at {depth[at]:.2f} and "
                f"{depth[at + 1]:.2f} mm where slices are {step:.2f} mm apart: about "
                f"{missing} slice(s) missing"
            )
        if steps.max() - steps.min() > 0.1 * step:
            raise InvalidInput(
                f"uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm): resample the "
                "series to even spacing before sending it"
            )
        slice_vec = (slices[-1].position - slices[0].position) / (len(slices) - 1)
        fit = slices[0].position + np.arange(len(slices))[:, None] * slice_vec
        off = np.linalg.norm(np.array([s.position for s in slices]) - fit, axis=1).max()
        if off > 0.1 * min(step, float(spacing.min())):
            raise InvalidInput(
                f"the slice positions do not lie on one line (off by up to {off:.2f} mm)"
            )
    else:
        slice_vec = normal * 1.0  # one slice: a nominal 1 mm along the normal
    affine = np.eye(4)
    # Column index i runs along the row direction at the column spacing (PixelSpacing[1]);
    # row index j along the column direction at the row spacing (PixelSpacing[0]).
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = slice_vec
    affine[:3, 3] = slices[0].position
    hu = np.empty((len(slices), *slices[0].pixels.shape), dtype=np.float32)
    for k, s in enumerate(slices):
        np.multiply(s.pixels, s.slope, out=hu[k], casting="unsafe")
        hu[k] += np.float32(s.intercept)
    # Whole HU in the int16 range, as every CT's stored values with slope 1 are: the archive keeps
    # a candidate's block losslessly in 16 bits, so training samples what serving sampled.
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return Volume(hu, affine, series_uid, study_uid, tuple(s.sop_uid for s in slices))
