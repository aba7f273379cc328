"""Recording what was classified: every answered image and candidate into the label store (or
the spool while it is down), with the image archived and UIDs hashed where asked."""

from __future__ import annotations

import hashlib
import hmac
import logging

import numpy as np

from cad.aift.vessel import REVIEW_PANEL, VOLUME_SOURCE, keep_candidate, review_box
from cad.errors import StoreUnavailable
from cad.labels.archive import ImageArchive
from cad.labels.spool import RecordSpool
from cad.labels.store.records import CandidateRecord, ImageRecord
from cad.labels.store.sql import SqlLabelStore
from cad.models.inference import ClassifyOutcome
from cad.models.volume_inference import VolumeOutcome
from cad.volumes import nearest_slice

log = logging.getLogger(__name__)


class UidHasher:
    """Keyed hashes of DICOM UIDs (HMAC-SHA256, ``h:`` + 32 hex): the same UID always maps to the
    same value under one key, so studies still group (validation split, per-study export), but
    the stored value cannot be traced back to the patient's study without the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the UID hash key must be at least 16 bytes")
        self._key = key

    def __call__(self, uid: str) -> str:
        if not uid:
            return ""
        return "h:" + hmac.new(self._key, uid.encode(), hashlib.sha256).hexdigest()[:32]


class Recorder:
    """Archives each classified image and stores its candidates before the response is sent.

    Only pixels (as a PNG without metadata) and the UIDs, modality and geometry are kept; no
    other DICOM attribute is read into the store. With ``uid_hasher`` the UIDs are stored hashed.
    """

    def __init__(
        self,
        store: SqlLabelStore,
        archive: ImageArchive,
        uid_hasher: UidHasher | None = None,
        spool: RecordSpool | None = None,
    ) -> None:
        self.store = store
        self.archive = archive
        self.spool = spool
        """Optional; where records wait while the store is unreachable (else: StoreUnavailable)."""
        self.durable = archive.fsync == "each"
        """Records follow the archive's policy: durable before the response (``each``), or
        relaxed, made durable by the next label (``background``)."""
        self.uid = uid_hasher or (lambda uid: uid)

    def record(self, outcome: ClassifyOutcome, patch_probs: np.ndarray) -> None:
        sha, size = self.archive.put(outcome.image.pixels, outcome.image.png)
        src = outcome.image.source
        image = ImageRecord(
            request_id=outcome.request_id,
            sha256=sha,
            size_bytes=size,
            height=outcome.image.height,
            width=outcome.image.width,
            frame_index=outcome.frame_index,
            source_kind=src.kind,
            source_id=outcome.source_id,
            study_uid=self.uid(src.study_uid),
            series_uid=self.uid(src.series_uid),
            sop_instance_uid=self.uid(src.sop_instance_uid),
            modality=src.modality,
            recipe=outcome.recipe,
            model_version=str(outcome.model_version),
        )
        candidates = [
            CandidateRecord(
                candidate_id=r.candidate_id,
                request_id=outcome.request_id,
                client_id=r.client_id,
                x=r.box.x,
                y=r.box.y,
                width=r.box.width,
                height=r.box.height,
                recipe=outcome.recipe,
                model_version=str(outcome.model_version),
                probability=r.probability,
                entropy=r.entropy,
                diversity=r.diversity,
                score=r.score,
                patch_probs=patch_probs[i],
            )
            for i, r in enumerate(outcome.results)
        ]
        self._keep(image, candidates, outcome.image.pixels, outcome.image.png)

    def _keep(
        self,
        image: ImageRecord,
        candidates: list[CandidateRecord],
        pixels: np.ndarray,
        png: bytes | None,
    ) -> None:
        """The rows into the store (or the spool while it is down), after their archived image."""
        spool = self.spool
        if spool is not None and (spool.pending or not self.store.available):
            # behind earlier spooled records (order), or the store is known down: no waiting
            spool.append(image, candidates)  # timed as it is spooled
            return
        try:
            self.store.record_classification(image, candidates, durable=self.durable)
        except StoreUnavailable:
            if spool is None:
                raise
            spool.append(image, candidates)  # timed as it is spooled
            return
        # a pruner on another replica may have removed a blob of the same content between the
        # put and the row: now that the row exists it cannot any more, so put it back if gone
        self.archive.ensure(image.sha256, pixels, png)

    def record_volume(self, outcome: VolumeOutcome, patch_probs: np.ndarray) -> None:
        """A CT series' candidates, each as its own archived image (its voxel block, kept
        losslessly) with its geometry: reviewers see its three planes, and training cuts its
        patches from the block as serving cut them from the series."""
        volume = outcome.volume
        x, y, w, h = review_box()
        for i, r in enumerate(outcome.results):
            pixels, geometry = keep_candidate(volume, r.patient_mm, r.axis, outcome.window)
            sha, size = self.archive.put(pixels)
            k = nearest_slice(volume, r.patient_mm)  # where a reader finds it in the series
            sop = volume.sop_instance_uids[k] if k < len(volume.sop_instance_uids) else ""
            image = ImageRecord(
                request_id=r.candidate_id,  # one archived block, one candidate
                sha256=sha,
                size_bytes=size,
                height=REVIEW_PANEL,  # what the review page shows: the montage of its planes
                width=3 * REVIEW_PANEL,
                frame_index=k,
                source_kind=VOLUME_SOURCE,
                source_id=outcome.source_id,
                study_uid=self.uid(volume.study_uid),
                series_uid=self.uid(volume.series_uid),
                sop_instance_uid=self.uid(sop) if sop else "",
                modality="CT",
                recipe=outcome.recipe,
                model_version=str(outcome.model_version),
            )
            candidate = CandidateRecord(
                candidate_id=r.candidate_id,
                request_id=r.candidate_id,
                client_id=r.client_id,
                x=x,
                y=y,
                width=w,
                height=h,
                recipe=outcome.recipe,
                model_version=str(outcome.model_version),
                probability=r.probability,
                entropy=r.entropy,
                diversity=r.diversity,
                score=r.score,
                patch_probs=patch_probs[i],
                geometry=geometry.to_json(),
            )
            self._keep(image, [candidate], pixels, None)

    def write_spooled(self, image: ImageRecord, candidates: list[CandidateRecord]) -> None:
        """Write one spooled record to the store (:meth:`RecordSpool.drain`)."""
        self.store.record_classification(image, candidates, durable=self.durable)
        if not self.archive.path(image.sha256).exists():
            log.error(
                "spooled record %s: its image was pruned while the record waited; candidates "
                "are kept, their patches cannot be regenerated",
                image.request_id,
            )

    def drain(self) -> int:
        """Write the spooled records now, oldest first; how many were written."""
        return self.spool.drain(self.write_spooled) if self.spool is not None else 0
