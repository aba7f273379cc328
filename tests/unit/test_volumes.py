"""CT volumes: series assembly from real DICOM, the vessel axis and the vessel-aligned ``pe``
patches, on synthetic vessels with known geometry and on real CT from pydicom's test files."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pydicom
import pytest

from cad.aift import parse_recipe
from cad.aift.patches import extract_patches
from cad.aift.vessel import (
    PE_WINDOW,
    extract_pe_patches,
    pe_patch_specs,
    pe_planes,
    vessel_axis,
)
from cad.errors import InvalidInput, LimitExceeded
from cad.series import assemble_series
from cad.volumes import Volume, VolumeLimits
from support.ctpa import rotation, series_bytes, tube_volume
from tests.ct import ENHANCED_CT, dicom_test_file, edited_instance, real_ct_series

TILT = rotation([1.0, 2.0, 3.0], 0.4)  # a tilted ImageOrientationPatient
DIRECTION = (0.3, -0.5, 0.81)  # the vessel, oblique to every patient axis


def affine(spacing: tuple[float, float, float], rot: np.ndarray = TILT) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rot * np.array(spacing)  # columns: i (row dir), j (column dir), k (slice)
    a[:3, 3] = (-20.0, 10.0, 5.0)
    return a


def tube_series(spacing: tuple[float, float, float], extent_mm: float = 40.0):
    shape = tuple(int(round(extent_mm / s)) for s in spacing[::-1])  # (k, j, i)
    aff = affine(spacing)
    centre_ijk = [(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2]
    hu, centre, direction = tube_volume(shape, aff, centre_ijk, DIRECTION)  # type: ignore[arg-type]
    return series_bytes(hu, aff), centre, direction


def angle_deg(a, b) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(a, b))))))


def test_the_series_is_assembled_by_geometry_not_file_order() -> None:
    data, centre, direction = tube_series((0.6, 0.8, 2.0))
    shuffled = data[:]
    random.Random(4).shuffle(shuffled)
    vol = assemble_series(shuffled)
    assert vol.shape == (len(data), 50, 67)
    assert vol.spacing == pytest.approx((0.6, 0.8, 2.0), abs=1e-5)
    assert np.allclose(vol.affine, affine((0.6, 0.8, 2.0)), atol=1e-5)
    ordered = assemble_series(data)
    assert np.array_equal(vol.hu, ordered.hu)
    # HU through the Modality LUT: the vessel is 300 HU, the lung -800.
    assert set(np.unique(vol.hu).tolist()) == {-800.0, 40.0, 300.0}
    # A point and its voxel agree both ways.
    ijk = vol.to_voxel(centre)
    assert np.allclose(vol.to_patient(ijk), centre)
    assert vol.sample(centre) == pytest.approx(40.0)  # the clot at the centre


@pytest.mark.parametrize("spacing", [(0.6, 0.8, 2.0), (0.5, 0.5, 0.5), (0.9, 0.7, 1.25)])
def test_the_axis_is_found_within_a_few_degrees(spacing: tuple[float, float, float]) -> None:
    data, centre, direction = tube_series(spacing)
    vol = assemble_series(data)
    # At the clot itself and 6 mm along the vessel, in contrast.
    for point in (centre, centre + 6 * direction):
        axis = vessel_axis(vol, point)
        assert axis.estimated
        assert angle_deg(axis.direction, direction) < 3.0, (spacing, axis)


def disc_radius_mm(plane_hu: np.ndarray, width_mm: float) -> float:
    """The radius of the contrast area of a plane (above the half level between lung and
    contrast, where interpolation puts the true edge), from its pixel count."""
    pixel = width_mm / plane_hu.shape[0]
    return math.sqrt((plane_hu > -250).sum() * pixel**2 / math.pi)


@pytest.mark.parametrize("spacing", [(0.6, 0.8, 2.0), (0.4, 0.4, 0.8)])
def test_planes_show_the_vessel_at_its_physical_size(spacing: tuple[float, float, float]) -> None:
    data, centre, direction = tube_series(spacing)
    vol = assemble_series(data)
    beside = centre + 8 * direction  # out of the clot: a full disc of contrast
    cross, longitudinal = pe_planes(vol, beside, direction, 20.0, 80)
    # The cross-section: a disc of the tube's 3 mm radius, whatever the voxel spacing.
    assert disc_radius_mm(cross, 20.0) == pytest.approx(3.0, abs=0.35)
    # The longitudinal view at the clot: a vertical band 6 mm wide with the defect across it.
    cross, longitudinal = pe_planes(vol, centre, direction, 20.0, 80)
    bright_cols = (longitudinal > -250).mean(axis=0) > 0.5  # columns that are vessel
    assert bright_cols.sum() * 20.0 / 80 == pytest.approx(6.0, abs=1.0)
    middle = longitudinal[:, 38:42].mean(axis=1)  # down the vessel's centre line
    assert middle[40] == pytest.approx(40.0, abs=40)  # the clot at the candidate
    assert middle[5] > 250 and middle[75] > 250  # contrast above and below it
    # The cross-section through the clot: the dark defect inside the bright ring.
    assert cross[40, 40] == pytest.approx(40.0, abs=40) and disc_radius_mm(cross, 20) > 2.0


def test_the_pe_recipe_has_the_papers_patches() -> None:
    recipe = parse_recipe("pe")
    assert recipe.count == 54 == 3 * 3 * 6  # widths x translations x rotations
    specs = pe_patch_specs(54)
    assert sorted({w for w, _, _ in specs}) == [10.0, 15.0, 20.0]
    assert sorted({s for _, s, _ in specs}) == [-0.2, 0.0, 0.2]
    assert len({r for _, _, r in specs}) == 6 and max(r for _, _, r in specs) < math.pi
    # A prefix keeps every width and translation (rotation-major).
    assert {(w, s) for w, s, _ in pe_patch_specs(parse_recipe("pe:9").count)} == {
        (w, s) for w in (10.0, 15.0, 20.0) for s in (-0.2, 0.0, 0.2)
    }
    data, centre, direction = tube_series((0.6, 0.8, 2.0))
    vol = assemble_series(data)
    patches = extract_pe_patches(vol, centre, direction, 54, 32)
    assert patches.shape == (54, 3, 32, 32) and patches.dtype == np.float32
    assert patches.min() >= 0.0 and patches.max() <= 255.0
    assert np.array_equal(patches[:, 1], patches[:, 2])  # 2 channels made 3
    assert not np.array_equal(patches[:, 0], patches[:, 1])
    # The window: contrast (300 HU) and lung (-800 HU) at the CTPA window's ends.
    low = PE_WINDOW[0] - PE_WINDOW[1] / 2
    assert patches[:, 0].min() == 0.0 and patches[:, 0].max() == pytest.approx(
        (300 - low) * 255 / PE_WINDOW[1]
    )
    # A box recipe on a volume, or the volume recipe on an image, is refused.
    with pytest.raises(InvalidInput, match="ClassifyVolume"):
        extract_patches(np.zeros((8, 8, 3), np.uint8), _box(), recipe, 16)


def _box():
    from cad.aift import Box

    return Box(1, 1, 4, 4)


# ---------------------------------------------------------------- real CT (pydicom test files)


def test_real_ct_slices_are_ordered_by_position() -> None:
    data = real_ct_series(6)
    shuffled = data[::-1]
    random.Random(1).shuffle(shuffled)
    vol = assemble_series(shuffled)
    base = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    assert vol.shape == (6, 128, 128)
    assert vol.spacing == pytest.approx((0.661468, 0.661468, 5.0), abs=1e-5)
    for k in range(6):  # slice k is the k-th position, whatever the file order
        expected = np.roll(base.pixel_array, k, axis=1) * 1.0 - 1024.0
        assert np.array_equal(vol.hu[k], expected.astype(np.float32))
    assert np.allclose(vol.affine[:3, 3], [float(v) for v in base.ImagePositionPatient])
    # In HU: CT_small is a slice of lung (about -850) and soft tissue (about -100 to 100).
    assert -1000 < vol.hu.min() < -800 and vol.hu.max() > 0


def test_a_missing_slice_is_refused() -> None:
    data = real_ct_series(6)
    with pytest.raises(InvalidInput, match=r"gap of 10.00 mm .* about 1 slice\(s\) missing"):
        assemble_series(data[:3] + data[4:])


def test_mixed_series_and_inconsistent_slices_are_refused() -> None:
    data = real_ct_series(4)
    other = real_ct_series(1, series_uid="1.2.3.4")
    with pytest.raises(InvalidInput, match="2 series"):
        assemble_series(data + other)
    with pytest.raises(InvalidInput, match="repeat another's SOPInstanceUID: the same instance"):
        assemble_series(data + data[:1])

    edited = edited_instance

    with pytest.raises(InvalidInput, match="one position"):  # another instance at one position
        assemble_series(data + [edited(data[0], SOPInstanceUID="1.2.826.0.1.3680043.99.1")])

    tilted = edited(data[2], ImageOrientationPatient=[1, 0, 0, 0, 0.8, 0.6])
    with pytest.raises(InvalidInput, match="mixed orientations"):
        assemble_series(data[:2] + [tilted] + data[3:])
    spaced = edited(data[2], PixelSpacing=[0.5, 0.5])
    with pytest.raises(InvalidInput, match="PixelSpacing"):
        assemble_series(data[:2] + [spaced] + data[3:])
    mr = edited(data[1], Modality="MR")
    with pytest.raises(InvalidInput, match="not CT"):
        assemble_series([mr])
    no_position = pydicom.dcmread(io.BytesIO(data[1]))
    del no_position.ImagePositionPatient
    buf = io.BytesIO()
    no_position.save_as(buf)
    with pytest.raises(InvalidInput, match="ImagePositionPatient"):
        assemble_series(data[:1] + [buf.getvalue()])
    uneven = edited(
        data[3],
        ImagePositionPatient=[
            float(v) for v in pydicom.dcmread(io.BytesIO(data[3])).ImagePositionPatient
        ][:2]
        + [float(pydicom.dcmread(io.BytesIO(data[3])).ImagePositionPatient[2]) + 1.5],
    )
    with pytest.raises(InvalidInput, match="uneven slice spacing"):
        assemble_series(data[:3] + [uneven])
    with pytest.raises(InvalidInput, match="no instances"):
        assemble_series([])
    with pytest.raises(InvalidInput, match="not a DICOM"):
        assemble_series([b"not dicom at all"])


def test_differing_sizes_are_refused() -> None:
    small = real_ct_series(2)
    data, _, _ = tube_series((0.6, 0.8, 2.0))
    ds = pydicom.dcmread(io.BytesIO(data[0]))
    ds.SeriesInstanceUID = pydicom.dcmread(io.BytesIO(small[0])).SeriesInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(InvalidInput, match="differing sizes"):
        assemble_series(small + [buf.getvalue()])


def test_limits_are_enforced_before_decoding() -> None:
    data = real_ct_series(4)
    with pytest.raises(LimitExceeded, match="voxels"):
        assemble_series(data, VolumeLimits(max_voxels=3 * 128 * 128))
    with pytest.raises(LimitExceeded, match="instances"):
        assemble_series(data, VolumeLimits(max_slices=3))


def test_an_enhanced_multiframe_ct_is_one_volume() -> None:
    blob = dicom_test_file(ENHANCED_CT).read_bytes()
    vol = assemble_series([blob])
    assert vol.shape == (2, 512, 512)
    # Its orientation runs i along -x: the affine follows the header, not an assumption.
    assert vol.affine[:3, 0] == pytest.approx([-0.388672, 0, 0], abs=1e-6)
    # The slice normal is row x column = (-1, 0, 0) x (0, 1, 0) = (0, 0, -1): slices run down
    # z, so the frame at z = -149 comes first although the file stores it second.
    assert vol.affine[:3, 2] == pytest.approx([0, 0, -10.0])
    assert vol.affine[:3, 3] == pytest.approx([99.5, -301.5, -149.0])
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert np.array_equal(vol.hu[0], ds.pixel_array[1].astype(np.float32) - 1024.0)
    assert np.array_equal(vol.hu[1], ds.pixel_array[0].astype(np.float32) - 1024.0)
    with pytest.raises(InvalidInput, match="send it alone"):
        assemble_series([blob, real_ct_series(1)[0]])


def test_volume_sampling_is_trilinear_with_air_outside() -> None:
    hu = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    vol = Volume(hu, np.diag([2.0, 3.0, 5.0, 1.0]))
    assert vol.sample([0, 0, 0]) == 0.0
    assert vol.sample([2.0, 0, 0]) == 1.0  # i = 1
    # Half-way between voxels on every axis: the mean of the 8 around.
    assert vol.sample([1.0, 1.5, 2.5]) == pytest.approx(hu[:, :2, :2].mean())
    assert vol.sample([-100.0, 0, 0]) == -1024.0
    assert vol.sample([-1.0, 0, 0]) == pytest.approx(0.5 * 0 + 0.5 * -1024)
