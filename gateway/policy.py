"""What the gateway accepts, classifies, refuses and retries, and the names and keys it derives:
the one place these rules are written (receiving, classifying and sending read them)."""

from __future__ import annotations

import hashlib
import json

import grpc
from pydicom import uid as uids

SR_MODALITY = "SR"
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
"""Comprehensive 3D SR Storage: what the gateway sends."""

TRANSFER_SYNTAXES = [
    getattr(uids, name)
    for name in (
        "ExplicitVRLittleEndian",
        "ImplicitVRLittleEndian",
        "ExplicitVRBigEndian",
        "DeflatedExplicitVRLittleEndian",
        "JPEGBaseline8Bit",
        "JPEGExtended12Bit",
        "JPEGLossless",
        "JPEGLosslessSV1",
        "JPEGLSLossless",
        "JPEGLSNearLossless",
        "JPEG2000Lossless",
        "JPEG2000",
        "RLELossless",
    )
]
"""What the gateway accepts: every transfer syntax the CAD server decodes (pydicom with the
pylibjpeg plugins the package installs). Video syntaxes (MPEG, HEVC) are not decoded there."""

CLASSIFIABLE = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image, for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image, for processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image, for presentation",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
}
"""The SOP classes classified by default (``CAD_GATEWAY_SOP_CLASSES`` replaces the list): images
whose pixels the server decodes frame by frame. Not here, so acknowledged and ignored: RT, SEG,
encapsulated PDF, presentation states, waveforms, video endoscopy (MPEG) and every other class."""

SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    COMPREHENSIVE_3D_SR,
    "1.2.840.10008.5.1.4.1.1.88.35",
}
"""Structured reports: read for an upstream CAD's regions (callers in sr mode), never classified."""

SERVER_AWAY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
"""Answers that say nothing about the object: every object would get them, so all wait."""

REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
"""Refusals of the object itself: it is set aside at once, never retried."""


def refused_for_good(code: grpc.StatusCode, details: str) -> bool:
    """True when the server refused the object itself. RESOURCE_EXHAUSTED also answers a full
    inference queue, which says "retry" in its message (cad.models.batcher): that one is
    load, not the object, and is retried."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in (details or "").lower():
        return False
    return code in REFUSED


def idempotency_key(instance: str, frame: int, boxes: list[tuple[float, ...]]) -> str:
    """The key of one frame's Classify: the same instance (its key, not its UID), frame and
    candidates give the same key, so a retry after a crash is recorded once by the server."""
    text = json.dumps([instance, frame, [list(b) for b in boxes]])
    return "dicom-gateway:" + hashlib.sha256(text.encode()).hexdigest()


def file_key(uid: str) -> str:
    """A file name for an instance that does not carry its UID (folders are not logs, but a
    listing should not show them either)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def parse_destination(text: str) -> tuple[str, str, int] | None:
    """``AE@host:port`` -> (AE, host, port); "" or a DICOMweb URL -> None."""
    if not text or text.startswith(("http://", "https://")):
        return None
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return ae, host, int(port)
    except ValueError:
        raise ValueError(f"destination {text!r}: write it as AE@host:port") from None
