"""What a reviewer is shown of a request: its archived image (the PNG as stored) and every
candidate recorded on it; a CT volume candidate as its three planes around the vessel, with
where it is in the series."""

from __future__ import annotations

from dataclasses import dataclass

from cad.aift.vessel import (
    MISSED_REACH_MM,
    REVIEW_PANEL,
    REVIEW_SCROLL_MM,
    REVIEW_WIDTH_MM,
    VOLUME_SOURCE,
    PeGeometry,
    review_montage,
)
from cad.errors import NotFound
from cad.labels.archive import ImageArchive, encode_png
from cad.labels.store.records import ImageCandidate, ImageRecord
from cad.labels.store.sql import SqlLabelStore
from cad.validation import quote


@dataclass(frozen=True)
class VolumeView:
    """How a CT volume candidate's planes are shown: where the candidate is (series, slice,
    patient mm), the window and the cross-section's place along the vessel drawn now, and the
    limits a reader works within."""

    series_uid: str
    slice_index: int
    """0-based, in the series' slice order: the slice nearest the candidate."""
    sop_instance_uid: str
    point_mm: tuple[float, float, float]
    window: tuple[float, float]
    """(centre, width) in HU the planes are drawn in."""
    candidate_window: tuple[float, float]
    """The candidate's own window (the CTPA preset unless the client sent one)."""
    offset_mm: float
    scroll_limit_mm: float
    mm_per_pixel: float
    missed_reach_mm: float
    panel: int
    """Pixels per plane; the image is three planes side by side."""


@dataclass(frozen=True)
class ReviewImage:
    image: ImageRecord
    png: bytes
    candidates: list[ImageCandidate]
    volume: VolumeView | None = None


def review_image(
    store: SqlLabelStore,
    archive: ImageArchive | None,
    request_id: str,
    labels_only: bool = False,
    window: tuple[float, float] | None = None,
    offset_mm: float = 0.0,
) -> ReviewImage:
    """A request's archived image (PNG as stored) and every candidate recorded on it;
    ``labels_only``: the candidates without the PNG (read from the archive otherwise).

    A CT volume candidate is shown as its three planes (:func:`review_montage`) in
    ``window`` (centre, width; default the candidate's own), the cross-section moved
    ``offset_mm`` along the vessel, with a :class:`VolumeView` saying where it is."""
    image = store.get_image(request_id)
    candidates = store.candidates_of(request_id)
    volume = None
    if image.source_kind == VOLUME_SOURCE:  # a voxel block: shown as its three planes
        geometry = PeGeometry.from_json(candidates[0].candidate.geometry)
        volume = VolumeView(
            image.series_uid,
            image.frame_index,
            image.sop_instance_uid,
            geometry.point_mm,
            window or geometry.window,
            geometry.window,
            offset_mm,
            REVIEW_SCROLL_MM,
            REVIEW_WIDTH_MM / REVIEW_PANEL,
            MISSED_REACH_MM,
            REVIEW_PANEL,
        )
    if labels_only:
        return ReviewImage(image, b"", candidates, volume)
    if archive is None:
        raise NotFound("this server keeps no image archive")
    try:
        if volume is None:
            return ReviewImage(image, archive.png(image.sha256), candidates)
        pixels = archive.get(image.sha256)
    except FileNotFoundError:
        raise NotFound(
            f"the image of request {quote(request_id)} is no longer archived (retention)"
        ) from None
    montage = review_montage(pixels, geometry, window, offset_mm)
    return ReviewImage(image, encode_png(montage), candidates, volume)
