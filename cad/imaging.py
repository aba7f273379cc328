"""Image decoding: DICOM (pydicom) here, PNG/JPEG (Pillow) and raw pixel buffers in
:mod:`cad.encoded`, each -> RGB uint8.

Every decoder returns a :class:`DecodedImage` whose ``pixels`` are the windowed
8-bit RGB image the model sees (gray is repeated to 3 channels). This is the
one implementation of decoding shared by the server, the archive and the
trainer.

Grayscale DICOM: stored values -> Modality LUT (Rescale Slope/Intercept, so CT
is in HU) -> VOI window (the request's, else the dataset's first Window
Center/Width, else its VOI LUT Sequence, else the frame's min..max) -> 8 bits;
MONOCHROME1 is inverted so that higher is brighter.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cad.errors import INTERRUPTS, CadError, InvalidInput, LimitExceeded, UnsupportedImage
from cad.validation import MAX_WINDOW, quote

RGB8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Window:
    """A linear VOI window in modality units (HU for CT)."""

    center: float
    width: float

    def validate(self) -> None:
        if not math.isfinite(self.center) or abs(self.center) > MAX_WINDOW:
            raise InvalidInput(
                f"window center must be finite, at most {MAX_WINDOW:g} in magnitude, "
                f"got {self.center:g}"
            )
        if not math.isfinite(self.width) or not 0 < self.width <= MAX_WINDOW:
            raise InvalidInput(
                f"window width must be a finite positive number up to {MAX_WINDOW:g}, "
                f"got {self.width:g}"
            )


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits; a request over them is refused with RESOURCE_EXHAUSTED."""

    max_pixels: int = 40_000_000
    max_frames: int = 10_000


@dataclass(frozen=True)
class SourceRef:
    """Where an image came from. UIDs only: no patient-identifying attributes."""

    kind: str
    """``dicom``, ``encoded`` or ``raw``."""
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    modality: str = ""
    frames: int = 1


@dataclass(frozen=True)
class DecodedImage:
    pixels: RGB8
    """(H, W, 3) uint8, windowed."""
    frame_index: int
    source: SourceRef = field(default_factory=lambda: SourceRef(kind="raw"))
    png: bytes | None = field(default=None, repr=False, compare=False)
    """These very pixels as a PNG holding only its image chunks, when the upload was an 8-bit
    RGB PNG: the archive stores it as is instead of compressing the pixels again."""

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def check_size(height: int, width: int, limits: ImageLimits) -> None:
    if height <= 0 or width <= 0:
        raise InvalidInput(f"image has no pixels ({width}x{height})")
    if height * width > limits.max_pixels:
        raise LimitExceeded(
            f"image of {width}x{height} = {height * width} pixels is over the limit of "
            f"{limits.max_pixels} pixels (setting CAD_MAX_IMAGE_PIXELS)"
        )


def apply_window(values: npt.NDArray[np.floating], window: Window) -> RGB8:
    """DICOM linear VOI function (PS3.3 C.11.2.1.2.1) to 0..255."""
    c, w = window.center, window.width
    scaled = ((values - (c - 0.5)) / max(w - 1.0, 1e-6) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _min_max(values: npt.NDArray[np.floating]) -> RGB8:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def gray_to_8bit(values: npt.NDArray[Any], window: Window | None) -> RGB8:
    """Window (or min..max scale) a 2-D gray array to uint8."""
    data = values.astype(np.float64, copy=False)
    return apply_window(data, window) if window is not None else _min_max(data)


def to_rgb(gray8: npt.NDArray[Any]) -> RGB8:
    return np.repeat(gray8[:, :, None], 3, axis=2)


def color_to_8bit(rgb: npt.NDArray[Any], bits: int) -> RGB8:
    if rgb.dtype == np.uint8:
        return rgb.astype(np.uint8, copy=False)
    top = float(2**bits - 1) if bits > 0 else float(rgb.max() or 1)
    return np.clip(np.rint(rgb.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- DICOM


def _dataset_window(ds: object) -> Window | None:
    """The dataset's first VOI window, or None when it has none or its width is not positive
    (the header values were checked by :func:`_check_header`)."""
    center = getattr(ds, "WindowCenter", None)
    width = getattr(ds, "WindowWidth", None)
    if center is None or width is None or center == "" or width == "":
        return None
    c = float(center[0] if _is_multi(center) else center)
    w = float(width[0] if _is_multi(width) else width)
    if w <= 0:
        return None
    return Window(c, w)


def _is_multi(value: object) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


_QUOTED = re.compile(r"b?'([^']*)'|\"([^\"]*)\"")
_LONG_RUN = re.compile(r"[^\s,;:()\[\]'\"]{24,}")
_HARMLESS = re.compile(
    r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?|\(?[0-9A-Fa-f]{4},\s?[0-9A-Fa-f]{4}\)?|[A-Z]{2}"
)


def _harmless(text: str) -> bool:
    """A DICOM keyword, a VR, a tag or a number: safe to show (it is no element value)."""
    from pydicom.datadict import keyword_dict

    return text in keyword_dict or _HARMLESS.fullmatch(text) is not None


def scrub(message: str, limit: int = 200) -> str:
    """A library's error message without the values it may quote: a DICOM parser's message can
    carry an element's value (a patient name, a birth date), which must never reach a client, a
    log or a metric. Quoted text and long unbroken tokens are replaced unless they are DICOM
    keywords, VRs, tags or numbers; the result is cut to ``limit`` characters."""

    def quoted(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if _harmless(inner) else "'<redacted>'"

    def long_run(match: re.Match[str]) -> str:
        return match.group(0) if _harmless(match.group(0)) else "<redacted>"

    cleaned = _LONG_RUN.sub(long_run, _QUOTED.sub(quoted, message))
    first_line = cleaned.strip().splitlines()[0] if cleaned.strip() else ""
    return first_line[:limit]


_PHOTOMETRIC_TERMS = frozenset(
    {
        "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
        "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT",
    }
)  # fmt: skip
"""The DICOM defined terms of Photometric Interpretation: safe to name in a message (any other
value is whatever the modality wrote, and is not echoed)."""


@contextmanager
def decoding_stage(what: str, syntax: str) -> Iterator[None]:
    """Contain one decoding stage: any failure in it, ``BaseException`` subclasses from native
    decoder plugins included (a Rust panic is one), becomes InvalidInput naming the stage and
    the transfer syntax, never the decoder's message or stack (they may quote element values
    and name internals no client can act on)."""
    try:
        yield
    except (CadError, *INTERRUPTS):
        raise
    except BaseException as exc:  # noqa: BLE001  damaged data: InvalidInput
        raise InvalidInput(
            f"could not {what} (transfer syntax {syntax}): {type(exc).__name__}; "
            "the file's data is damaged or not what its header declares"
        ) from None


_SLOPE_RANGE = 1e6
_INTERCEPT_RANGE = 1e9


def dicom_numbers(ds: Any, keyword: str, low: float, high: float) -> list[float]:
    """The numeric values of a decimal-string attribute, each finite and in [low, high].

    Messages name the attribute and its tag, never its value (it is whatever the modality
    wrote)."""
    from pydicom.datadict import tag_for_keyword

    if keyword not in ds:
        return []
    value = ds[keyword].value
    if value is None or value == "":
        return []
    tag = tag_for_keyword(keyword) or 0
    where = f"DICOM attribute {keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
    out = []
    for item in list(value) if _is_multi(value) else [value]:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where} is not a number") from None
        if not math.isfinite(number):
            raise InvalidInput(f"{where} is not a finite number")
        if not low <= number <= high:
            raise InvalidInput(f"{where} is outside the accepted range [{low:g}, {high:g}]")
        out.append(number)
    return out


def rescale(ds: Any) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent, each checked: the one rule for an
    image and for a volume's slices (a zero slope makes every pixel one value: refused)."""
    slopes = dicom_numbers(ds, "RescaleSlope", -_SLOPE_RANGE, _SLOPE_RANGE)
    if any(v == 0 for v in slopes):
        raise InvalidInput("DICOM attribute RescaleSlope (0028,1053) is zero")
    intercepts = dicom_numbers(ds, "RescaleIntercept", -_INTERCEPT_RANGE, _INTERCEPT_RANGE)
    return (slopes or [1.0])[0], (intercepts or [0.0])[0]


def _check_lut_items(ds: Any, keyword: str) -> None:
    for item in ds.get(keyword) or []:
        if "LUTDescriptor" not in item or "LUTData" not in item:
            raise InvalidInput(f"DICOM {keyword} has an item without LUTDescriptor and LUTData")
        if len(list(item.LUTDescriptor)) != 3:
            raise InvalidInput(f"DICOM {keyword} has a LUTDescriptor without 3 values")


def _check_header(ds: Any, photometric: str, window: Window | None) -> None:
    """Every header value the pixels are transformed with, checked before it is used."""
    if photometric.startswith("MONOCHROME"):
        rescale(ds)
        _check_lut_items(ds, "ModalityLUTSequence")
        if window is None:
            dicom_numbers(ds, "WindowCenter", -MAX_WINDOW, MAX_WINDOW)
            dicom_numbers(ds, "WindowWidth", -MAX_WINDOW, MAX_WINDOW)
            _check_lut_items(ds, "VOILUTSequence")
    elif photometric == "PALETTE COLOR":
        for color in ("Red", "Green", "Blue"):
            if f"{color}PaletteColorLookupTableDescriptor" not in ds or not (
                f"{color}PaletteColorLookupTableData" in ds
                or f"Segmented{color}PaletteColorLookupTableData" in ds
            ):
                raise InvalidInput(
                    "the DICOM image is PALETTE COLOR but has no complete palette "
                    f"({color} Palette Color Lookup Table Descriptor and Data)"
                )


def _palette_bits(ds: Any, lut_rgb: npt.NDArray[np.number]) -> int:
    """Bits of the palette's entries. A 16-bit palette whose entries are all at most 255 holds
    8-bit values in 16-bit words, a known writer quirk (PS3.3 C.7.6.3.1.5 notes it); pydicom's
    big-endian ``OBXXXX1A_expb.dcm`` reads that way. Scaling those by 1/257 would leave 4
    colours of ~200, so they are taken as 8-bit."""
    from pydicom.pixels import apply_color_lut

    if lut_rgb.dtype == np.uint8:
        return 8
    entries, first = (int(v) for v in list(ds.RedPaletteColorLookupTableDescriptor)[:2])
    every_entry = np.arange(max(first, 0), max(first, 0) + (entries or 65536), dtype=np.int64)
    full = apply_color_lut(
        every_entry.astype(np.uint16 if every_entry[-1] < 65536 else np.uint32), ds
    )
    return 8 if int(full.max()) <= 255 else 16


def positive_int(ds: Any, keyword: str, tag: str, default: int) -> int:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return default
    try:
        value = int(ds[keyword].value)
    except (TypeError, ValueError):
        raise InvalidInput(f"DICOM attribute {keyword} {tag} is not an integer") from None
    if value < 1:
        raise InvalidInput(f"DICOM attribute {keyword} {tag} must be at least 1, got {value}")
    return value


def _quiet_pydicom() -> None:
    """pydicom's value-validation warnings quote element values (PHI): do not emit them."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def uid_text(ds: object, name: str) -> str:
    return str(getattr(ds, name, "") or "")


def decode_dicom(
    data: bytes,
    frame_index: int = 0,
    window: Window | None = None,
    limits: ImageLimits | None = None,
) -> DecodedImage:
    """Decode one frame of a DICOM Part 10 file to windowed RGB uint8.

    Raises:
        InvalidInput: not DICOM, truncated, no pixel data, frame out of range, a header value
            that is not a finite number in range, pixel data a decoder fails on.
        UnsupportedImage: the transfer syntax cannot be decoded here; the message
            names the missing plugin.
        LimitExceeded: the frame is larger than ``limits.max_pixels``.
    """
    from pydicom.pixels import pixel_array

    limits = limits or ImageLimits()
    if window is not None:
        window.validate()
    ds = read_dicom(data)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InvalidInput("the DICOM file has no pixel data (no PixelData element)")
    syntax = check_transfer_syntax(ds)
    with decoding_stage("read the DICOM image attributes", syntax):
        frames, photometric, bits = _dicom_frame_attributes(ds, frame_index, window, limits)
    with decoding_stage("decode the DICOM pixel data", syntax):
        arr = pixel_array(ds, index=frame_index if frames > 1 else None)
    with decoding_stage("apply the DICOM lookup tables and window", syntax):
        if arr.ndim == 3 and arr.shape[0] == 1 and frames == 1 and arr.shape[-1] != 3:
            arr = arr[0]
        pixels = _dicom_to_rgb(ds, arr, photometric, bits, window)
        source = SourceRef(
            kind="dicom",
            study_uid=uid_text(ds, "StudyInstanceUID"),
            series_uid=uid_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=uid_text(ds, "SOPInstanceUID"),
            modality=str(ds.get("Modality", "") or "")[:16],
            frames=frames,
        )
    return DecodedImage(np.ascontiguousarray(pixels), frame_index, source)


def read_dicom(data: bytes) -> Any:
    """The parsed dataset; InvalidInput for anything that is not a readable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    _quiet_pydicom()
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise InvalidInput(
            "not a DICOM Part 10 file: the 'DICM' prefix and file meta information are missing"
        ) from None
    except INTERRUPTS:
        raise
    except BaseException as exc:  # noqa: BLE001  pydicom raises many types on damaged files
        raise InvalidInput(
            f"could not parse the DICOM file: {type(exc).__name__}: {scrub(str(exc))}"
        ) from None


def _dicom_frame_attributes(
    ds: Any, frame_index: int, window: Window | None, limits: ImageLimits
) -> tuple[int, str, int]:
    """(frames, photometric interpretation, bits stored), each checked: the size within the
    limits, the frame in range, the header values the decoding will use."""
    missing = [k for k in ("Rows", "Columns") if ds.get(k) in (None, "")]
    if missing:
        raise InvalidInput(
            f"the DICOM image has no {' and no '.join(missing)} attribute: its size is unknown"
        )
    rows, cols = int(ds.Rows), int(ds.Columns)
    check_size(rows, cols, limits)
    frames = positive_int(ds, "NumberOfFrames", "(0028,0008)", 1)
    if frames > limits.max_frames:
        raise LimitExceeded(f"DICOM has {frames} frames, over the limit of {limits.max_frames}")
    if not 0 <= frame_index < frames:
        raise InvalidInput(
            f"frame_index {frame_index} is out of range: the DICOM file has {frames} frame(s)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").upper()
    bits = positive_int(ds, "BitsStored", "(0028,0101)", 8)
    _check_header(ds, photometric, window)
    return frames, photometric, bits


def _dicom_to_rgb(
    ds: Any, arr: npt.NDArray[Any], photometric: str, bits: int, window: Window | None
) -> RGB8:
    """One decoded frame to 8-bit RGB: gray through the Modality LUT and the window (the
    request's, else the dataset's, else its VOI LUT, else min..max); palette colour through its
    LUT; RGB (and YBR, which pydicom converts) scaled to 8 bits."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    if photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise InvalidInput(
                f"the {photometric} pixel data has {arr.ndim} dimensions, not 2 (one frame)"
            )
        values = apply_modality_lut(arr, ds)
        if window is None:
            window = _dataset_window(ds)
            if window is None and "VOILUTSequence" in ds:
                values = apply_voi_lut(values, ds)
        gray8 = gray_to_8bit(values, window)
        if photometric == "MONOCHROME1":
            gray8 = 255 - gray8
        return to_rgb(gray8)
    if photometric == "PALETTE COLOR":
        lut_rgb = apply_color_lut(arr, ds)
        return color_to_8bit(lut_rgb, _palette_bits(ds, lut_rgb))
    if arr.ndim != 3 or arr.shape[-1] != 3:
        named = photometric if photometric in _PHOTOMETRIC_TERMS else "not a defined term"
        raise UnsupportedImage(
            f"unsupported photometric interpretation (0028,0004) ({named}): "
            "send MONOCHROME1/2, RGB, YBR or PALETTE COLOR"
        )
    return color_to_8bit(arr, bits)


def check_transfer_syntax(ds: object) -> str:
    """The transfer syntax's name for messages; UnsupportedImage if it cannot be decoded."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None)
    if ts is None:
        raise InvalidInput("the DICOM file meta has no Transfer Syntax UID")
    uid = UID(str(ts))
    label = f"{uid.name} ({uid})" if uid.is_valid else quote(str(uid))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnsupportedImage(
            f"transfer syntax {label} is not supported: no pixel data decoder exists "
            "for it; send the image uncompressed or JPEG/JPEG-LS/JPEG 2000/RLE compressed"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise UnsupportedImage(
            f"transfer syntax {label} cannot be decoded on this server: "
            f"missing {missing} (install pylibjpeg with its libjpeg, openjpeg and rle plugins)"
        )
    return label
