"""Reviewer corrections: labels, the annotation queue, review images (what was classified is
recorded by :mod:`cad.labels.recorder`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cad.aift import BASELINES, KEYED, RANDOM, Box, Variant
from cad.aift.scoring import PAPER_ALPHA, select_for_labeling
from cad.aift.vessel import (
    VOLUME_SOURCE,
    PeGeometry,
    point_on_planes,
)
from cad.errors import InvalidInput, NotScored
from cad.labels.archive import ImageArchive
from cad.labels.frames import grow_to_frames
from cad.labels.images import ReviewImage, review_image
from cad.labels.ordering import (
    DEFAULT_QUEUE_LIMIT,
    MAX_QUEUE_LIMIT,
    cap_per_source,
    interleave,
    queue_request,
    scores_of,
)
from cad.labels.store.records import (
    CandidateRecord,
    Conflict,
    ConflictNotice,
    LabeledCandidate,
    QueueEntry,
    Receipt,
)
from cad.labels.store.rows import random_key
from cad.labels.store.sql import SqlLabelStore
from cad.metrics import ServiceMetrics
from cad.validation import box_values

log = logging.getLogger(__name__)

VERDICT_LABELS = {"TRUE_POSITIVE": 1, "FALSE_POSITIVE": 0}
SCORE_ALL_MAX = 20_000
"""Up to this many unlabeled candidates, random order, ACFT sampling and custom alphas score
the whole pool exactly; above it they are bounded (see :meth:`ReviewService.annotation_queue`)."""
SCORE_WINDOW = 5_000
"""Above :data:`SCORE_ALL_MAX`: how many of the best by the stored terms are scored exactly."""


def body_hash(**fields: object) -> str:
    """Stable hash of a request body, to tell a retry from a reused idempotency key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class QueueResult:
    variant: str
    unlabeled: int
    items: list[tuple[QueueEntry, float]]


class ReviewService:
    """Domain operations behind the CadReview API."""

    def __init__(
        self,
        store: SqlLabelStore,
        metrics: ServiceMetrics,
        max_note_chars: int = 2000,
        archive: ImageArchive | None = None,
        claim_s: float = 0.0,
    ) -> None:
        self.claim_s = claim_s
        self.per_source = 0
        self.whole_frames = True
        """A reviewer who claims items is handed each frame the queue picks whole: its other
        unlabeled candidates with it, in a row (the server's ``CAD_QUEUE_WHOLE_FRAMES``)."""
        self.fresh_version: Callable[[], str | None] | None = None
        """When set: ranked queues take the candidates this version scored first (the serving
        version, where the trainer re-scores with a budget: older versions' scores are not
        comparable with its own)."""
        """The most candidates of one source (a study, else a video or image source) a ranked
        queue hands out at once (the server's ``CAD_QUEUE_MAX_PER_SOURCE``; 0: no cap)."""
        self._count: tuple[float, int] | None = None
        """How long a queue item handed to an authenticated reviewer stays theirs (0: no claims)."""
        self.store = store
        self.metrics = metrics
        self.max_note_chars = max_note_chars
        self.archive = archive
        """Optional; the image a label refers to is made durable before the label is stored."""

    def _common(self, reviewer: str, note: str, key: str) -> tuple[str, str]:
        reviewer = reviewer.strip()
        if not reviewer:
            raise InvalidInput("reviewer must not be empty")
        if len(note) > self.max_note_chars:
            raise InvalidInput(
                f"note has {len(note)} characters, over the limit of {self.max_note_chars}"
            )
        return reviewer, key.strip() or f"auto-{uuid.uuid4().hex}"

    def _verdict(
        self, kind: str, candidate_id: str, verdict: str, reviewer: str, key: str, note: str
    ) -> tuple[str, str, str]:
        """Check a verdict's fields; (reviewer, idempotency key, body hash)."""
        if not candidate_id:
            raise InvalidInput("candidate_id must not be empty")
        if verdict not in VERDICT_LABELS:
            raise InvalidInput("verdict must be TRUE_POSITIVE or FALSE_POSITIVE")
        reviewer, key = self._common(reviewer, note, key)
        digest = body_hash(
            kind=kind, candidate_id=candidate_id, verdict=verdict, reviewer=reviewer, note=note
        )
        return reviewer, key, digest

    def submit_correction(
        self, candidate_id: str, verdict: str, reviewer: str, key: str, note: str = ""
    ) -> Receipt:
        """Confirm (TRUE_POSITIVE) or dismiss (FALSE_POSITIVE) a classified candidate."""
        reviewer, key, digest = self._verdict(
            "correction", candidate_id, verdict, reviewer, key, note
        )
        if self.archive is not None:
            self.archive.make_durable(
                self.store.get_image(self.store.get_candidate(candidate_id).request_id).sha256
            )
        receipt = self.store.labels.add_label(
            candidate_id, VERDICT_LABELS[verdict], reviewer, note, key, digest
        )
        if not receipt.replayed:
            self.metrics.corrections.labels(verdict.lower()).inc()
            if receipt.event.conflict:
                self.metrics.label_conflicts.inc()
        return receipt

    def add_missed_finding(
        self, request_id: str, box: Box, reviewer: str, key: str, note: str = ""
    ) -> Receipt:
        """Add a positive candidate a reviewer drew on an archived image (a false negative)."""
        values = box_values(box.x, box.y, box.width, box.height)
        reviewer, key = self._common(reviewer, note, key)
        image = self.store.get_image(request_id)
        geometry = ""
        if image.source_kind == VOLUME_SOURCE:  # a point clicked on a PE candidate's planes
            shown = self.store.candidates_of(request_id)[0].candidate
            cx, cy = box.x + box.width / 2, box.y + box.height / 2
            marked = point_on_planes(PeGeometry.from_json(shown.geometry), cx, cy)
            geometry = marked.to_json()
        if (
            box.x < 0
            or box.y < 0
            or box.x + box.width > image.width
            or box.y + box.height > image.height
        ):
            raise InvalidInput(
                f"box {values} is not inside the archived {image.width}x{image.height} image"
            )
        if self.archive is not None:
            self.archive.make_durable(image.sha256)
        digest = body_hash(
            kind="missed", request_id=request_id, box=values, reviewer=reviewer, note=note
        )
        candidate = CandidateRecord(
            candidate_id=f"{request_id}-m{uuid.uuid4().hex[:12]}",
            request_id=request_id,
            client_id="",
            x=box.x,
            y=box.y,
            width=box.width,
            height=box.height,
            recipe=image.recipe,
            model_version=image.model_version,
            probability=None,
            entropy=None,
            diversity=None,
            score=None,
            patch_probs=None,
            origin="missed",
            geometry=geometry,
        )
        receipt = self.store.labels.add_missed(candidate, reviewer, note, key, digest)
        if not receipt.replayed:
            self.metrics.missed_findings.inc()
        return receipt

    def annotation_queue(
        self,
        limit: int,
        variant: str,
        seed: int = 0,
        omega: float = 0.0,
        overrides: dict[str, float] | None = None,
        reviewer: str = "",
        claim_s: float = 0.0,
        per_source: int | None = None,
    ) -> QueueResult:
        """The top ``limit`` unlabeled candidates by the chosen AIFT variant (or random).

        ``per_source`` (default: :attr:`per_source`): a ranked queue (not random order, not the
        audit slice) takes at most this many candidates of one source, the next best of other
        sources in their place, so one examination or video cannot fill a batch (0: no cap).

        ``omega >= 1`` samples them from the top ``omega * limit`` in proportion to score
        (ACFT); ``overrides`` may set ``alpha``, ``lambda1``, ``lambda2`` of the variant.
        With a ``reviewer`` and ``claim_s > 0`` each item handed out is claimed for that
        reviewer for ``claim_s`` seconds: other reviewers' queues skip it until a verdict or
        the claim ends, and two reviewers asking at once get different items.

        With an audit slice (the store's ``audit_fraction``), each place in the queue is, with
        that probability, an audit item instead: a uniform random draw from the slice, never
        chosen by the ranking (the rankings do not see the slice), placed where the ranking's
        item would have been and carrying its neighbour's score, so nothing tells it apart.
        """
        variant, spec, limit = queue_request(variant, limit, omega, overrides)
        claimant = reviewer if reviewer and claim_s > 0 else ""
        cap = self.per_source if per_source is None else per_source
        if cap < 0:
            raise InvalidInput(f"per_source must be 0 (no cap) or more, got {cap}")
        if variant in KEYED and not self.store.queue.queue_key_versions(variant):
            raise NotScored(
                f"no {variant} keys yet: the trainer writes them when it re-scores the pool "
                f"with CAD_QUEUE_KEYS including {variant}"
            )
        whole = bool(claimant and self.whole_frames)
        for _attempt in range(3 if whole else 1):
            result = self._picked(variant, spec, limit, seed, omega, claimant, claim_s, cap)
            if not whole:
                return result
            items = grow_to_frames(
                self.store.queue, result.items, spec, seed, claimant, claim_s, limit
            )
            if items or not result.items:
                break
            # every frame picked was partly another reviewer's (two asking at once): again
        return QueueResult(variant, result.unlabeled, items)

    def _picked(
        self,
        variant: str,
        spec: Variant | str,
        limit: int,
        seed: int,
        omega: float,
        claimant: str,
        claim_s: float,
        cap: int,
    ) -> QueueResult:
        """The queue's items by the ranking, with the audit slice's in their places."""
        slots = self._audit_slots(limit, seed)
        if not slots:
            return self._queue(variant, spec, limit, seed, omega, claimant, claim_s, cap)
        ranked = (
            self._queue(variant, spec, limit - len(slots), seed, omega, claimant, claim_s, cap)
            if limit > len(slots)
            else QueueResult(variant, self._unlabeled(), [])
        )
        audit = self._audit_items(len(slots), seed, claimant, claim_s)
        return QueueResult(variant, ranked.unlabeled, interleave(ranked.items, audit, slots))

    def _audit_slots(self, limit: int, seed: int) -> list[int]:
        """The places of a queue of ``limit`` that are audit items: each independently with the
        slice's probability, from a draw of its own for this seed and queue depth."""
        fraction = self.store.audit_fraction
        if fraction <= 0:
            return []
        depth = self._unlabeled()
        return [i for i in range(limit) if random_key(f"audit-slot:{seed}:{depth}:{i}") < fraction]

    def _audit_items(
        self, n: int, seed: int, claimant: str, claim_s: float
    ) -> list[tuple[QueueEntry, float]]:
        """``n`` unlabeled audit-slice candidates drawn uniformly (off the random-key index from a
        starting point of this draw's own), claimed when a reviewer asks."""
        draw = int(random_key(f"audit-draw:{seed}:{self._unlabeled()}") * (1 << 31))
        offered = self.store.queue.random_unlabeled(
            draw, 2 * n + 20 if claimant else n, claimant or None, audit_slice=True
        )
        if claimant:
            taken = set(
                self.store.queue.claim([e.candidate_id for e, _ in offered], claimant, claim_s, n)
            )
            offered = [(e, s) for e, s in offered if e.candidate_id in taken]
        return offered[:n]

    def _queue(
        self,
        variant: str,
        spec: Variant | str,
        limit: int,
        seed: int,
        omega: float,
        claimant: str,
        claim_s: float,
        cap: int = 0,
    ) -> QueueResult:
        """The queue by the ranking alone (outside the audit slice), ``cap`` per source."""
        if variant in BASELINES:
            items = self._ranked(variant, limit, claimant, claim_s, cap)
            return QueueResult(variant, self._unlabeled(), items)
        if isinstance(spec, Variant) and not omega and spec.alpha in (1.0, PAPER_ALPHA):
            # ranked where the data is: the stored terms, an index per named variant, a LIMIT
            items = self._ranked(spec, limit, claimant, claim_s, cap)
            return QueueResult(variant, self._unlabeled(), items)
        unlabeled = self._unlabeled()
        if unlabeled > SCORE_ALL_MAX:
            # a large pool is never read whole: random order off the random-key index; ACFT
            # sampling and other alphas within the top SCORE_WINDOW by the same weights at the
            # nearest stored alpha, scored exactly there
            if spec == RANDOM:
                window_items = self.store.queue.random_unlabeled(
                    seed, 2 * limit + 20 if claimant else limit, claimant or None
                )
                return self._claimed(variant, unlabeled, window_items, claimant, claim_s, limit)
            assert isinstance(spec, Variant)  # noqa: S101  an invariant, not input checking
            stock = replace(spec, alpha=1.0 if spec.alpha == 1.0 else PAPER_ALPHA)
            window = max(SCORE_WINDOW, math.ceil(omega * limit))
            entries = [e for e, _ in self.store.queue.ranked_unlabeled(stock, window)]
        else:
            # a pool this size is scored whole, exactly (the experiment's pools are)
            entries = self.store.queue.unlabeled(audit_slice=False)
        scores = scores_of(entries, spec, seed)
        if omega and spec != RANDOM:
            picked = select_for_labeling(scores, limit, omega, np.random.default_rng(seed))
            order = sorted(picked, key=lambda i: (-scores[i], entries[i].candidate_id))
        else:
            order = sorted(range(len(entries)), key=lambda i: (-scores[i], entries[i].candidate_id))
        if cap and spec != RANDOM:
            kept = {id(e) for e, _ in cap_per_source([(entries[i], 0.0) for i in order], cap)}
            order = [i for i in order if id(entries[i]) in kept]
        if claimant:  # in ranked order, the first ones nobody else holds
            taken = set(
                self.store.queue.claim(
                    [entries[i].candidate_id for i in order], claimant, claim_s, limit
                )
            )
            order = [i for i in order if entries[i].candidate_id in taken]
        items = [(entries[i], float(scores[i])) for i in order[:limit]]
        return QueueResult(variant, unlabeled, items)

    def _ranked(
        self, spec: Variant | str, limit: int, claimant: str, claim_s: float, cap: int = 0
    ) -> list[tuple[QueueEntry, float]]:
        """The top ``limit`` by a stored variant (or a baseline's stored key), read off its
        index, at most ``cap`` per source when set; with a ``claimant``, the first ones nobody
        else holds, claimed (the window widens while others hold it or the cap skips it)."""

        def read(n: int, unclaimed_for: str | None = None) -> list[tuple[QueueEntry, float]]:
            if isinstance(spec, str):
                return self.store.queue.keyed_unlabeled(spec, n, unclaimed_for)
            fresh = self.fresh_version() if self.fresh_version is not None else None
            return self.store.queue.ranked_unlabeled(spec, n, unclaimed_for, fresh)

        if not claimant and not cap:
            return read(limit)
        window = 2 * limit + 20
        for _attempt in range(5):  # others may claim some of the window meanwhile
            raw = read(window, claimant or None)
            offered = cap_per_source(raw, cap) if cap else raw
            if claimant:
                ids = [e.candidate_id for e, _ in offered]
                taken = set(self.store.queue.claim(ids, claimant, claim_s, limit))
                result = [(e, s) for e, s in offered if e.candidate_id in taken]
            else:
                result = offered[:limit]
            if len(result) >= limit or len(raw) < window:
                break
            window *= 4
        return result

    def _claimed(
        self,
        variant: str,
        unlabeled: int,
        offered: list[tuple[QueueEntry, float]],
        reviewer: str,
        claim_s: float,
        limit: int,
    ) -> QueueResult:
        if reviewer and claim_s > 0:
            taken = set(
                self.store.queue.claim(
                    [e.candidate_id for e, _ in offered], reviewer, claim_s, limit
                )
            )
            offered = [(e, s) for e, s in offered if e.candidate_id in taken]
        return QueueResult(variant, unlabeled, offered[:limit])

    def review_image(
        self,
        request_id: str,
        labels_only: bool = False,
        window: tuple[float, float] | None = None,
        offset_mm: float = 0.0,
    ) -> ReviewImage:
        """See :func:`cad.labels.images.review_image`."""
        return review_image(self.store, self.archive, request_id, labels_only, window, offset_mm)

    def retract(self, event_id: str, reviewer: str, key: str) -> Receipt:
        """Undo one's own latest verdict or missed finding on a candidate (a retraction event)."""
        if not event_id:
            raise InvalidInput("event_id must not be empty")
        reviewer, key = self._common(reviewer, "", key)
        digest = body_hash(kind="retraction", event_id=event_id, reviewer=reviewer)
        receipt = self.store.labels.retract(event_id, reviewer, key, digest)
        return receipt

    def release_claims(self, reviewer: str, candidate_ids: Sequence[str] = ()) -> int:
        """Give back ``reviewer``'s queue items (those named, or all): other reviewers' queues
        offer them again at once."""
        if not reviewer.strip():
            return 0  # without authentication nothing is claimed
        if len(candidate_ids) > MAX_QUEUE_LIMIT:
            raise InvalidInput(
                f"{len(candidate_ids)} candidates is over the maximum of {MAX_QUEUE_LIMIT}"
            )
        return self.store.queue.release_claims(reviewer.strip(), candidate_ids)

    def _unlabeled(self) -> int:
        """The queue depth, for a reply: counted afresh, except that a large pool's count
        (over SCORE_ALL_MAX, where counting reads a large index) is reused for a few seconds."""
        cached = self._count
        if cached is not None and cached[1] > SCORE_ALL_MAX and time.monotonic() - cached[0] < 5:
            return cached[1]
        count = self.store.queue.count_unlabeled()
        self._count = (time.monotonic(), count)
        return count

    def notices(self, reviewer: str) -> list[ConflictNotice]:
        """Disagreements ``reviewer`` has not been told of yet (each is told once)."""
        return self.store.labels.take_notices(reviewer.strip()) if reviewer.strip() else []

    def conflicts(self, limit: int = 0) -> list[Conflict]:
        """Disputed candidates nobody has settled, oldest first."""
        limit = limit or DEFAULT_QUEUE_LIMIT
        if limit > MAX_QUEUE_LIMIT:
            raise InvalidInput(f"limit {limit} is over the maximum of {MAX_QUEUE_LIMIT}")
        return self.store.labels.conflicts(limit)

    def adjudicate(
        self, candidate_id: str, verdict: str, adjudicator: str, key: str, note: str = ""
    ) -> Receipt:
        """Settle a disagreement for good: a reviewer who gave no verdict on the candidate."""
        adjudicator, key, digest = self._verdict(
            "adjudication", candidate_id, verdict, adjudicator, key, note
        )
        return self.store.labels.adjudicate(
            candidate_id, VERDICT_LABELS[verdict], adjudicator, note, key, digest
        )

    def stats(self) -> tuple[int, dict[str, tuple[int, int]]]:
        """The queue depth and, per model version, (confirmed, dismissed) model candidates."""
        return self._unlabeled(), self.store.queue.precision_by_version()

    def others_claims(self, reviewer: str) -> tuple[int, str]:
        """Unlabeled items other reviewers hold claims on, and when the first claim ends."""
        return self.store.queue.others_claims(reviewer)

    def export(self, since: str = "") -> Iterator[LabeledCandidate]:
        return self.store.queue.labeled(since)
