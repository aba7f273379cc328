"""CT series for tests: real CT from pydicom's test files (CT_small.dcm, 128 x 128;
eCT_Supplemental.dcm, an enhanced CT of 2 frames), and the synthetic vessels of support.ctpa."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CT_SMALL = "CT_small.dcm"
ENHANCED_CT = "eCT_Supplemental.dcm"


def dicom_test_file(name: str) -> Path:
    """A pydicom test file, from the pydicom package or the pydicom-data package (never fetched:
    the lock installs both)."""
    import pydicom

    for root in (
        Path(pydicom.__file__).parent / "data" / "test_files",
        Path(pydicom.__file__).parents[1] / "data_store" / "data",
    ):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{name} is in neither pydicom's nor pydicom-data's test files")


def real_ct_series(slices: int = 6, step_mm: float = 5.0, series_uid: str = "") -> list[bytes]:
    """A series of ``slices`` instances built from the real CT_small.dcm: its pixels and
    orientation, each slice moved ``step_mm`` along the normal, with its own SOP Instance UID
    (and the pixels shifted a little per slice, so slice order is visible in the volume)."""
    import pydicom
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(dicom_test_file(CT_SMALL))
    iop = np.array([float(v) for v in base.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.array([float(v) for v in base.ImagePositionPatient])
    series = series_uid or generate_uid()
    pixels = base.pixel_array
    out = []
    for k in range(slices):
        ds = pydicom.dcmread(dicom_test_file(CT_SMALL))
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp + k * step_mm * normal]
        ds.PixelData = np.roll(pixels, k, axis=1).astype(pixels.dtype).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append(buf.getvalue())
    return out


def edited_instance(blob: bytes, **changes: object) -> bytes:
    """A DICOM file with attributes set (keyword=value), written back."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(blob))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()
