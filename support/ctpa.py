"""Synthetic CT pulmonary angiography series, written as real DICOM: an oblique
contrast-filled vessel with a clot, at any voxel spacing and orientation (the PE benchmark and
the volume tests use them)."""

from __future__ import annotations

import io
import math

import numpy as np
import numpy.typing as npt


def rotation(axis: npt.ArrayLike, angle: float) -> npt.NDArray[np.float64]:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def tube_volume(
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    centre_ijk: npt.ArrayLike,
    direction: npt.ArrayLike,
    radius_mm: float = 3.0,
    defect_mm: float = 3.0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """HU of a contrast-filled vessel (300 HU, ``radius_mm``) in lung (-800 HU) through the
    voxel ``centre_ijk`` along ``direction`` (patient axes), with a filling defect (40 HU, a
    clot: 2/3 of the radius, ``defect_mm`` either side of the centre along the vessel).
    Returns (hu[k, j, i], centre in mm, unit direction)."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).astype(np.float64)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = np.asarray(centre_ijk, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]
    rel = xyz - centre
    along = rel @ d
    radial = np.linalg.norm(rel - along[..., None] * d, axis=-1)
    hu = np.where(radial < radius_mm, 300.0, -800.0)
    hu[(radial < radius_mm * 2 / 3) & (np.abs(along) < defect_mm)] = 40.0
    return hu.astype(np.float32), centre, d


def series_bytes(
    hu: npt.NDArray[np.float32],
    affine: npt.NDArray[np.float64],
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    frame_of_reference_uid: str = "1.2.826.0.1.3680043.8.498.3",
) -> list[bytes]:
    """Single-frame CT instances (int16 stored, intercept -1024) of ``hu[k, j, i]`` placed by
    ``affine`` (its i and j columns: IOP times PixelSpacing; k: the slice step)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    spacing_i = float(np.linalg.norm(affine[:3, 0]))
    spacing_j = float(np.linalg.norm(affine[:3, 1]))
    iop = [*(affine[:3, 0] / spacing_i), *(affine[:3, 1] / spacing_j)]
    out = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Synthetic^Vessel", "CTPA-SYNTHETIC"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20261206", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.Manufacturer = 1, "synthetic"
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in affine[:3, 3] + k * affine[:3, 2]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{spacing_j:.6f}", f"{spacing_i:.6f}"]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = np.round(hu[k] + 1024).astype("<i2").tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out
