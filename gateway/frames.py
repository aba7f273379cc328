"""One frame of a received DICOM object as a DICOM file of its own, read from disk.

A cine loop or a long multi-frame object can be hundreds of megabytes decompressed; the CAD
server classifies one frame per ``Classify``. Sending the whole file with every frame's request
passes the gRPC message limit and holds the object in memory many times over. Here a frame is
cut from the file where it lies: the header is parsed with the pixel data left on disk (pydicom's
deferred read), then only that frame's bytes are read, native or encapsulated (its fragments,
still compressed), and written as a single-frame object in the same transfer syntax. Memory is a
header and one frame, whatever the object's size.

Deflated files cannot be seeked into; they are read whole (they are small: deflate is used for
SRs and small images).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

DEFER_BYTES = 4096
"""Elements larger than this stay on disk until asked for (the pixel data among them)."""


def read_header(path: Path) -> Dataset:
    """The object's attributes with its large values (the pixel data) left on disk."""
    return dcmread(path, defer_size=DEFER_BYTES)


def frame_count(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        return max(1, int(value or 1))
    except (TypeError, ValueError):
        return 1


def frame_file(path: Path, ds: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) of the object at ``path`` as a single-frame DICOM file."""
    frames = frame_count(ds)
    if not 0 <= index < frames:
        raise ValueError(f"frame {index} is out of range: the object has {frames} frame(s)")
    syntax = ds.file_meta.TransferSyntaxUID
    if frames == 1:
        return path.read_bytes()  # already one frame
    if syntax == DeflatedExplicitVRLittleEndian:
        whole = dcmread(path)
        pixels = _frame_in_memory(whole, index, frames)
        return _single(
            whole, index, pixels, whole.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian
        )
    raw = ds.get_item("PixelData", keep_deferred=True)
    offset = getattr(raw, "value_tell", None)  # a RawDataElement: where its value starts
    if offset is None:
        raise ValueError("the object has no PixelData")
    with path.open("rb") as fh:
        if syntax.is_encapsulated:
            fh.seek(offset)
            frame = get_frame(fh, index, number_of_frames=frames)
        else:
            size = _native_frame_bytes(ds, frames)
            fh.seek(offset + index * size)
            frame = fh.read(size)
            if len(frame) != size:
                raise ValueError("the object's pixel data is shorter than its frames")
    return _single(ds, index, frame, syntax, syntax)


def _native_frame_bytes(ds: Dataset, frames: int) -> int:
    total = int(get_expected_length(ds, unit="bytes"))
    if total % frames:  # 1-bit frames packed across byte boundaries: not cut here
        raise ValueError("the object's frames do not start on byte boundaries (1-bit pixels)")
    return total // frames


def _frame_in_memory(ds: Dataset, index: int, frames: int) -> bytes:
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return bytes(get_frame(ds.PixelData, index, number_of_frames=frames))
    size = _native_frame_bytes(ds, frames)
    return bytes(ds.PixelData[index * size : (index + 1) * size])


def _single(ds: Dataset, index: int, frame: bytes, source_syntax: Any, syntax: Any) -> bytes:
    """A copy of ``ds``'s attributes (pixel data aside) holding ``frame`` as its only frame."""
    out = Dataset()
    skip = {0x52009230, 0x00280009}  # PerFrameFunctionalGroupsSequence, FrameIncrementPointer
    for tag in list(ds.keys()):
        if tag.group == 0x7FE0 or tag in skip:  # never read the whole pixel data here
            continue
        out.add(copy.copy(ds[tag]))  # converted (a deferred value is read here), not shared
    out.file_meta = copy.deepcopy(ds.file_meta)
    out.file_meta.TransferSyntaxUID = syntax
    out.NumberOfFrames = 1
    if "PerFrameFunctionalGroupsSequence" in ds:  # the frame's own item (enhanced objects)
        items = ds.PerFrameFunctionalGroupsSequence
        if index < len(items):
            out.PerFrameFunctionalGroupsSequence = [items[index]]
    if syntax.is_encapsulated:
        out.PixelData = encapsulate([frame])
        out["PixelData"].VR = "OB"
        out["PixelData"].is_undefined_length = True
    else:
        out.PixelData = frame
        out["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8)) > 8 else "OB"
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
