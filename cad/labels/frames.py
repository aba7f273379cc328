"""A frame reviewed whole: the candidates a queue picked, grown to their frames' other unlabeled
candidates and claimed together, so that no frame is split between two reviewers."""

from __future__ import annotations

from cad.aift import RANDOM, Variant
from cad.labels.ordering import scores_of
from cad.labels.store.queue import QueueQueries
from cad.labels.store.records import QueueEntry


def grow_to_frames(
    queue: QueueQueries,
    items: list[tuple[QueueEntry, float]],
    spec: Variant | str,
    seed: int,
    claimant: str,
    claim_s: float,
    limit: int,
) -> list[tuple[QueueEntry, float]]:
    """The frames of ``items`` whole, in the order of their best item: on each, the items
    picked (in their order), then its other unlabeled candidates, best first, claimed with
    it. Frames are added while they fit in ``limit``; the first is served whole even when it
    alone is larger. A frame another reviewer holds part of is not served (two reviewers
    asking at once may both give up a frame they both touched: it stays for the next ask);
    claims on frames not served are released at once.

    The frame's other candidates are scored by the queue's ranking where it is computed
    from the predictions (the AIFT variants; random order: a seeded draw); next to a keyed
    baseline's items (margin, BALD, Core-Set, ...) they carry 0, their stored key unread.
    Candidates of the audit slice are not added to a frame (the slice stays a uniform draw):
    they come as audit items of their own."""
    frames = list(dict.fromkeys(e.request_id for e, _ in items))
    picked = {e.candidate_id for e, _ in items}
    contested = queue.held_by_others(frames, claimant)
    frames = [f for f in frames if f not in contested]
    others = [m for m in queue.on_frames(frames, claimant) if m.candidate_id not in picked]
    if isinstance(spec, Variant) or spec == RANDOM:
        scores = [float(s) for s in scores_of(others, spec, seed)] if others else []
    else:
        scores = [0.0] * len(others)
    by_frame: dict[str, list[tuple[QueueEntry, float]]] = {rid: [] for rid in frames}
    for e, s in items:
        if e.request_id in by_frame:
            by_frame[e.request_id].append((e, s))
    rest = sorted(zip(others, scores, strict=True), key=lambda x: (-x[1], x[0].candidate_id))
    for m, s in rest:
        by_frame[m.request_id].append((m, s))
    chosen: list[str] = []
    size = 0
    for rid in frames:
        if chosen and size + len(by_frame[rid]) > limit:
            break
        chosen.append(rid)
        size += len(by_frame[rid])
    added = [
        e.candidate_id for rid in chosen for e, _ in by_frame[rid] if e.candidate_id not in picked
    ]
    taken = set(queue.claim(added, claimant, claim_s, len(added))) if added else set()
    mine = picked | taken
    # whole: every unlabeled candidate of the frame (outside the audit slice) is this reviewer's
    # now, read after the claims (another reviewer may have claimed or let go of one meanwhile)
    everything = queue.on_frames(chosen)
    whole = {
        rid
        for rid in chosen
        if all(e.candidate_id in mine for e in everything if e.request_id == rid)
    }
    whole -= queue.held_by_others(sorted(whole), claimant)  # nor an audit item of it elsewhere
    served = [pair for rid in chosen if rid in whole for pair in by_frame[rid]]
    kept = {e.candidate_id for e, _ in served}
    if mine - kept:  # not served: back to the other reviewers at once
        queue.release_claims(claimant, sorted(mine - kept))
    return served
