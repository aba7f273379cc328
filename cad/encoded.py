"""Decoding of what is not DICOM: PNG and JPEG (Pillow; a PNG's image chunks kept for the review
page, nothing else of it) and raw pixel buffers, into the same :class:`~cad.imaging.DecodedImage`
as a DICOM file (see :mod:`cad.imaging`)."""

from __future__ import annotations

import io

import numpy as np

from cad.errors import InvalidInput, LimitExceeded
from cad.imaging import (
    DecodedImage,
    ImageLimits,
    SourceRef,
    Window,
    check_size,
    color_to_8bit,
    gray_to_8bit,
    to_rgb,
)

# --------------------------------------------------------------------------- PNG / JPEG


def decode_encoded(
    data: bytes,
    frame_index: int = 0,
    window: Window | None = None,
    limits: ImageLimits | None = None,
) -> DecodedImage:
    """Decode a PNG or JPEG frame to RGB uint8 (16-bit gray PNGs are windowed)."""
    from PIL import Image, UnidentifiedImageError

    limits = limits or ImageLimits()
    if window is not None:
        window.validate()
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise LimitExceeded(f"encoded image is too large: {exc}") from None
        raise InvalidInput("encoded image is neither a PNG nor a JPEG Pillow can read") from None
    except Exception as exc:  # noqa: BLE001  damaged data: InvalidInput
        raise InvalidInput(f"could not read the encoded image: {exc}") from None
    if img.format not in ("PNG", "JPEG"):
        raise InvalidInput(f"encoded image must be PNG or JPEG, got {img.format}")
    check_size(img.height, img.width, limits)
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001  damaged data: InvalidInput
        raise InvalidInput(f"could not decode the {img.format} image: {exc}") from None
    png = None
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = to_rgb(gray_to_8bit(np.asarray(img), window))
    else:
        if img.format == "PNG" and img.mode == "RGB":
            png = png_image_chunks(data)
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return DecodedImage(np.ascontiguousarray(pixels), frame_index, SourceRef(kind="encoded"), png)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEPT = (b"IHDR", b"IDAT", b"IEND")


def png_image_chunks(data: bytes) -> bytes | None:
    """The PNG ``data`` with only IHDR, IDAT and IEND: the same pixels, and none of the text,
    time, EXIF, ICC or other ancillary chunks that could carry identifying metadata. None when
    ``data`` is not an 8-bit truecolour (RGB) PNG whose chunks parse cleanly."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    out, pos, seen_end = [PNG_SIGNATURE], len(PNG_SIGNATURE), False
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"IHDR" and (length != 13 or data[pos + 16] != 8 or data[pos + 17] != 2):
            return None  # not 8-bit RGB: the decoder converted the pixels
        if kind in _PNG_KEPT:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            seen_end = True
            break
    if not seen_end or len(out) < 4 or out[1][4:8] != b"IHDR":
        return None
    return b"".join(out)


# --------------------------------------------------------------------------- raw


def decode_raw(
    height: int,
    width: int,
    channels: int,
    bytes_per_sample: int,
    pixels: bytes,
    frame_index: int = 0,
    window: Window | None = None,
    limits: ImageLimits | None = None,
) -> DecodedImage:
    """Wrap a raw row-major ``H x W x C`` buffer of uint8 or little-endian uint16 samples."""
    limits = limits or ImageLimits()
    if window is not None:
        window.validate()
    if channels not in (1, 3):
        raise InvalidInput(f"raw image channels must be 1 or 3, got {channels}")
    if bytes_per_sample not in (1, 2):
        raise InvalidInput("raw image pixel type must be UINT8 or UINT16")
    check_size(height, width, limits)
    expected = height * width * channels * bytes_per_sample
    if len(pixels) != expected:
        raise InvalidInput(
            f"raw pixel buffer has {len(pixels)} bytes; {height}x{width}x{channels} samples of "
            f"{bytes_per_sample} byte(s) need {expected}"
        )
    dtype = np.uint8 if bytes_per_sample == 1 else np.dtype("<u2")
    arr = np.frombuffer(pixels, dtype=dtype).reshape(height, width, channels)
    if channels == 1:
        gray = arr[:, :, 0]
        out = gray if (dtype == np.uint8 and window is None) else gray_to_8bit(gray, window)
        rgb = to_rgb(out)
    else:
        rgb = color_to_8bit(arr, 16 if bytes_per_sample == 2 else 8)
    return DecodedImage(np.ascontiguousarray(rgb), frame_index, SourceRef(kind="raw"))
