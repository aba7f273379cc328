"""Decoding real DICOM files (pydicom / pydicom-data), PNG/JPEG and raw buffers."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, pixel_array

from cad.encoded import decode_encoded, decode_raw, png_image_chunks
from cad.errors import InvalidInput, LimitExceeded, UnsupportedImage
from cad.imaging import ImageLimits, Window, apply_window, decode_dicom
from support.helpers import dicom_bytes, dicom_path


def _gray(image: np.ndarray) -> np.ndarray:
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(
        image[:, :, 1], image[:, :, 2]
    )
    return image[:, :, 0]


def test_ct_signed_pixels_are_rescaled_to_hu_and_windowed() -> None:
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    assert ds.PixelRepresentation == 1 and "RescaleSlope" in ds
    hu = apply_modality_lut(ds.pixel_array, ds)
    window = Window(40, 400)
    image = decode_dicom(dicom_bytes("CT_small.dcm"), window=window)
    np.testing.assert_array_equal(_gray(image.pixels), apply_window(hu, window))
    assert image.source.modality == "CT" and image.source.sop_instance_uid == ds.SOPInstanceUID


def test_dataset_window_is_used_when_the_request_has_none() -> None:
    ds = pydicom.dcmread(dicom_path("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = apply_window(
        apply_modality_lut(ds.pixel_array, ds).astype(float), Window(center, width)
    )
    np.testing.assert_array_equal(_gray(decode_dicom(dicom_bytes("MR_small.dcm")).pixels), expected)


def test_without_any_window_the_frame_is_min_max_scaled() -> None:
    gray = _gray(decode_dicom(dicom_bytes("CT_small.dcm")).pixels)
    assert gray.min() == 0 and gray.max() == 255


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(dicom_path("RG3_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    window = Window(
        float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter),
        float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth),
    )
    expected = 255 - apply_window(apply_modality_lut(ds.pixel_array, ds).astype(float), window)
    np.testing.assert_array_equal(_gray(decode_dicom(dicom_bytes("RG3_UNCR.dcm")).pixels), expected)


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000
        ("693_J2KR.dcm", "693_UNCR.dcm"),  # JPEG 2000, CT 16-bit signed
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm"),  # JPEG 2000, CR MONOCHROME1
    ],
)
def test_lossless_compressed_decodes_identically(compressed: str, reference: str) -> None:
    a = decode_dicom(dicom_bytes(compressed)).pixels
    b = decode_dicom(dicom_bytes(reference)).pixels
    np.testing.assert_array_equal(a, b)


def test_jpeg_lossless_process14() -> None:
    image = decode_dicom(dicom_bytes("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert image.pixels.shape == (768, 1024, 3) and image.source.modality == "US"


def test_multiframe_ultrasound_jpeg_baseline_ybr_frame_index() -> None:
    data = dicom_bytes("examples_ybr_color.dcm")
    ds = pydicom.dcmread(dicom_path("examples_ybr_color.dcm"))
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and int(ds.NumberOfFrames) == 30
    f0, f9 = decode_dicom(data, 0).pixels, decode_dicom(data, 9).pixels
    assert f0.shape == (240, 320, 3) and not np.array_equal(f0, f9)
    np.testing.assert_array_equal(f9, pixel_array(ds, index=9))  # converted to RGB
    assert decode_dicom(data, 29).source.frames == 30
    with pytest.raises(InvalidInput, match="frame_index 30 is out of range.*30 frame"):
        decode_dicom(data, 30)


def test_ybr_full_uncompressed_becomes_rgb() -> None:
    ybr = decode_dicom(dicom_bytes("SC_ybr_full_uncompressed.dcm")).pixels
    rgb = decode_dicom(dicom_bytes("SC_rgb.dcm")).pixels
    diff = np.abs(ybr.astype(int) - rgb.astype(int))
    assert diff.max() <= 8 and diff.mean() < 1.0  # 8-bit YCbCr round trip; raw YBR would be far off


def test_rgb_passes_through_and_16bit_rgb_is_scaled() -> None:
    ds = pydicom.dcmread(dicom_path("US1_UNCR.dcm"))
    np.testing.assert_array_equal(decode_dicom(dicom_bytes("US1_UNCR.dcm")).pixels, ds.pixel_array)
    rgb8 = decode_dicom(dicom_bytes("SC_rgb.dcm")).pixels
    rgb16 = decode_dicom(dicom_bytes("SC_rgb_16bit.dcm")).pixels
    assert np.abs(rgb8.astype(int) - rgb16.astype(int)).max() <= 1


def test_multiframe_mr_12bit() -> None:
    data = dicom_bytes("emri_small.dcm")
    frames = [decode_dicom(data, i).pixels for i in range(10)]
    assert len({f.tobytes() for f in frames}) > 1


def test_missing_decoder_plugin_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg - requires pylibjpeg-openjpeg>=2.0"]

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda uid: Unavailable())
    with pytest.raises(UnsupportedImage, match="JPEG 2000.*pylibjpeg-openjpeg"):
        decode_dicom(dicom_bytes("693_J2KR.dcm"))


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(LimitExceeded, match="over the limit"):
        decode_dicom(dicom_bytes("RG3_UNCR.dcm"), limits=ImageLimits(max_pixels=1000))


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_rgb_gray_and_16bit() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_encoded(_png(rgb)).pixels, rgb)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    np.testing.assert_array_equal(_gray(decode_encoded(_png(gray)).pixels), gray)
    g16 = np.arange(600, dtype=np.uint16).reshape(20, 30) * 100
    out = _gray(decode_encoded(_png(g16)).pixels)
    assert out.min() == 0 and out.max() == 255


def test_rgb_png_upload_is_kept_for_the_archive_without_its_metadata(tmp_path) -> None:
    """An 8-bit RGB PNG is archived as sent minus every ancillary chunk (no recompression):
    the text/time/EXIF chunks that could carry patient data are gone, the pixels are the same."""
    from PIL import PngImagePlugin

    from cad.labels.archive import ImageArchive

    rgb = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "DOE^JANE 19450704")
    info.add_itxt("Comment", "MRN 4455667", zip=True)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(
        buffer, format="PNG", pnginfo=info, exif=b"Exif\x00\x00MM\x00*BIRTHDATE"
    )
    sent = buffer.getvalue()
    assert b"DOE^JANE" in sent
    decoded = decode_encoded(sent)
    assert (
        decoded.png is not None
        and b"DOE^JANE" not in decoded.png
        and b"BIRTHDATE" not in decoded.png
    )
    assert b"iTXt" not in decoded.png and b"tEXt" not in decoded.png and b"eXIf" not in decoded.png
    with Image.open(io.BytesIO(decoded.png)) as again:
        np.testing.assert_array_equal(np.asarray(again), rgb)
    archive = ImageArchive(tmp_path)
    sha, size = archive.put(decoded.pixels, decoded.png)
    assert size == len(decoded.png) and archive.path(sha).read_bytes() == decoded.png
    np.testing.assert_array_equal(archive.get(sha), rgb)


def test_other_uploads_are_archived_by_encoding_the_pixels() -> None:
    rng = np.random.default_rng(4)
    for pixels in (
        rng.integers(0, 256, (8, 8), dtype=np.uint8),  # gray
        rng.integers(0, 256, (8, 8, 4), dtype=np.uint8),  # RGBA
        (np.arange(64, dtype=np.uint16).reshape(8, 8) * 900),
    ):  # 16-bit gray
        assert decode_encoded(_png(pixels)).png is None
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="JPEG")
    assert decode_encoded(buffer.getvalue()).png is None
    good = _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert png_image_chunks(good) is not None
    assert png_image_chunks(good[:-12]) is None  # no IEND
    assert png_image_chunks(b"GIF89a" + good[8:]) is None


def test_jpeg_frame() -> None:
    rgb = np.full((16, 16, 3), 128, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    out = decode_encoded(buffer.getvalue()).pixels
    assert out.shape == (16, 16, 3) and abs(int(out.mean()) - 128) <= 2


def test_raw_buffers() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(decode_raw(2, 3, 3, 1, rgb.tobytes()).pixels, rgb)
    g16 = np.array([[0, 1000], [2000, 4000]], dtype="<u2")
    out = _gray(decode_raw(2, 2, 1, 2, g16.tobytes(), window=Window(2000, 4001)).pixels)
    assert out[0, 0] < out[0, 1] < out[1, 0] < out[1, 1]
    with pytest.raises(InvalidInput, match="raw pixel buffer has 5 bytes"):
        decode_raw(2, 2, 1, 2, b"12345")
