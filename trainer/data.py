"""Training data from the label store and the image archive, through the shared patch code.

A labeled candidate's patches are regenerated from its archived image with the
recipe it was served with, so training sees exactly what serving saw.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cad.aift import Box, Recipe, extract_patches, parse_recipe
from cad.aift.vessel import PeGeometry, archived_pe_patches
from cad.labels.archive import ImageArchive
from cad.labels.ordering import source_key
from cad.labels.store import SqlLabelStore
from cad.labels.store.records import PoolRow


@dataclass(frozen=True)
class Example:
    candidate_id: str
    image_sha256: str
    box: Box
    recipe: str
    label: int | None
    source_key: str
    """Study UID, else video/source id, else request id: what the split is decided by."""
    labeled_at: str = ""
    geometry: str = ""
    """A PE candidate's point, axis and voxel block (JSON); empty for a box on an image."""


def labels_of(examples: Sequence[Example]) -> list[int]:
    """The examples' labels (0/1); every example must be labeled."""
    labels = [e.label for e in examples]
    missing = sum(label is None for label in labels)
    if missing:
        raise ValueError(f"{missing} of {len(labels)} examples have no label")
    return [int(label) for label in labels if label is not None]


def split_of(key: str, val_fraction: float, salt: str = "cad-split-v1") -> str:
    """``val`` or ``train``, decided once per source by a hash: it never reshuffles between rounds."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def labeled_examples(store: SqlLabelStore, audit_slice: bool = False) -> list[Example]:
    """Every labeled candidate, in label order, but those reviewers disagree on and nobody has
    adjudicated yet (:func:`unsettled_count` says how many): an adjudicated label is used.
    Outside the audit slice (what a round may train and validate on), or with ``audit_slice``
    the slice's labels only (what it is measured on, never trained on)."""
    return [
        Example(
            x.candidate.candidate_id,
            x.image.sha256,
            Box(x.candidate.x, x.candidate.y, x.candidate.width, x.candidate.height),
            x.candidate.recipe or x.image.recipe,
            x.label,
            source_key(x.image.study_uid, x.image.source_id, x.image.request_id),
            x.labeled_at,
            x.candidate.geometry,
        )
        for x in store.queue.labeled()
        if (not x.conflict or x.adjudicated) and x.audit_slice == audit_slice
    ]


def unsettled_count(store: SqlLabelStore) -> int:
    """Labeled candidates left out of training: reviewers disagree and nobody adjudicated."""
    return sum(1 for x in store.queue.labeled() if x.conflict and not x.adjudicated)


def pool_example(row: PoolRow) -> Example:
    """An unlabeled candidate of a pool page as the trainer scores it."""
    return Example(
        row.candidate_id,
        row.image_sha256,
        Box(row.x, row.y, row.width, row.height),
        row.recipe,
        None,
        source_key(row.study_uid, row.source_id, row.request_id),
        geometry=row.geometry,
    )


def unlabeled_examples(store: SqlLabelStore, page: int = 4096) -> list[Example]:
    """Every unlabeled classified candidate (the pool), read a page at a time by key; a PE
    candidate with its geometry."""
    out: list[Example] = []
    after = ""
    while rows := store.pool.pool_page(after, page):
        out += map(pool_example, rows)
        after = rows[-1].candidate_id
    return out


def ids_hash(examples: Sequence[Example]) -> str:
    """Hash of the labeled candidate ids (recorded in the manifest and in ``rounds.jsonl``)."""
    return ids_hash_of(e.candidate_id for e in examples)


def ids_hash_of(candidate_ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(candidate_ids)).encode()).hexdigest()


DECODED_CACHE_IMAGES = 512
"""Decoded archive images kept per process (at most ~0.4 GB for 512x512 RGB). Archive blobs are
named by the SHA-256 of their PNG bytes, so one hash always decodes to the same pixels, whichever
archive holds it; rounds run one after another in one process (``cad train watch``, experiments)
reuse them instead of decoding the PNGs again."""

_decoded: OrderedDict[str, np.ndarray] = OrderedDict()
_decoded_lock = threading.Lock()


def cached_image(archive: ImageArchive, sha256: str) -> np.ndarray:
    """``archive.get(sha256)`` (read-only), through the per-process cache of decoded images."""
    if not archive.path(sha256).is_file():
        return archive.get(
            sha256
        )  # pruned or never archived here: fail exactly as the archive does
    with _decoded_lock:
        if (hit := _decoded.get(sha256)) is not None:
            _decoded.move_to_end(sha256)
            return hit
    image = archive.get(sha256)
    image.setflags(write=False)
    with _decoded_lock:
        _decoded[sha256] = image
        while len(_decoded) > DECODED_CACHE_IMAGES:
            _decoded.popitem(last=False)
    return image


class PatchSource:
    """Regenerates candidates' patches from archived images (decoded images cached by hash)."""

    def __init__(self, archive: ImageArchive, input_size: int, recipe_override: str = "") -> None:
        self.archive = archive
        self.input_size = input_size
        self.recipe_override = recipe_override

    def recipe(self, example: Example) -> Recipe:
        return parse_recipe(self.recipe_override or example.recipe)

    def key(self, example: Example) -> tuple[str, tuple[float, ...], str, int]:
        """What determines a candidate's patches (the trunk cache's key)."""
        b = example.box
        where: tuple[float, ...] = (b.x, b.y, b.width, b.height)
        if example.geometry:  # a PE candidate: its point and axis in its block
            g = PeGeometry.from_json(example.geometry)
            where = (*g.point_mm, *g.axis)
        return (example.image_sha256, where, self.recipe(example).spec, self.input_size)

    def patches(self, example: Example) -> np.ndarray:
        image = cached_image(self.archive, example.image_sha256)
        recipe = self.recipe(example)
        if recipe.vessel:  # cut again from the archived voxel block, as serving cut them
            if not example.geometry:
                raise ValueError(
                    f"{example.candidate_id}: a {recipe.name} candidate has no geometry"
                )
            geometry = PeGeometry.from_json(example.geometry)
            return archived_pe_patches(image, geometry, recipe.count, self.input_size)
        return extract_patches(image, example.box, recipe, self.input_size)


def balanced_epoch(labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Example indices for one epoch, class-balanced: each class is drawn as often as the largest
    (minority examples repeat; none are dropped), shuffled."""
    labels_arr = np.asarray(labels)
    classes = np.unique(labels_arr)
    biggest = max(int((labels_arr == c).sum()) for c in classes)
    picks = []
    for c in classes:
        idx = np.flatnonzero(labels_arr == c)
        extra = (
            rng.choice(idx, size=biggest - len(idx), replace=True)
            if biggest > len(idx)
            else np.empty(0, dtype=int)
        )
        picks.append(np.concatenate([idx, extra.astype(int)]))
    return rng.permutation(np.concatenate(picks))


def batches(order: np.ndarray, per_batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), per_batch):
        yield order[start : start + per_batch]
