"""Re-scoring the unlabelled pool with the version servers follow (the queue ranks by what it
writes), and the keyed baselines' queue keys beside it; and a published version's torch network."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from service.aift import KEYED, candidate_stats
from service.labels.archive import ImageArchive
from service.labels.store import SqlLabelStore
from service.models.batcher import SerialBatcher
from service.models.model import load_model
from service.models.providers import SessionOptions
from service.models.registry import WEIGHTS_FILE, ModelRegistry, VersionInfo
from trainer.baselines import queue_keys
from trainer.data import Example, PatchSource, labeled_examples, pool_example, unlabeled_examples
from trainer.device import resolve_device
from trainer.finetune import candidate_probabilities
from trainer.network import CadNet
from trainer.settings import TrainerSettings
from trainer.trunk import is_trivial

log = logging.getLogger(__name__)


def load_net(info: VersionInfo) -> CadNet:
    """A published version's torch network (architecture, classes and input size from its
    manifest)."""
    net = CadNet(len(info.manifest.classes), info.manifest.input_size, info.manifest.architecture)
    net.load_state_dict(torch.load(info.path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return net.eval()


RESCORE_PAGE = 2048
"""Candidates per page of a re-scoring: read, scored and written together; memory is bounded
by it, not by the pool."""


def rescore_pool(
    store: SqlLabelStore,
    archive: ImageArchive,
    registry: ModelRegistry,
    progress: bool = True,
    depth: str | None = None,
    device: str = "cpu",
    page_size: int = RESCORE_PAGE,
    shard: tuple[int, int] | None = None,
    again: bool = False,
) -> int:
    """Score every unlabeled candidate with the version servers follow; the queue reads it.
    Returns how many were scored.

    The pool is read a page at a time (keyset pagination on the candidate id), scored, and the
    page's scores written before the next is read, so memory does not grow with the pool. A
    candidate that version already scored (at Classify time, or by a re-scoring that was stopped)
    is left out unless ``again``: a restarted re-scoring goes on where it stopped. ``shard``
    ``(i, n)``: only the i-th of n disjoint parts of the pool (workers share a re-scoring).

    With a tuning ``depth`` that leaves a frozen trunk, the version's torch network scores
    through the trunk cache (the trunk is the one every round at that depth shares, so only the
    top runs); otherwise its ONNX model does, as servers run it. Parity between the two is
    checked at every export (max |dp| <= the parity tolerance).
    """
    version = registry.target()
    if version is None:
        return 0
    info = registry.get(version)
    skip = None if again else str(version)
    score = _scorer(info, archive, depth, device)
    done = missing = 0
    after = ""
    with tqdm(
        total=store.pool_count(skip, shard),
        desc=f"re-scoring pool with v{version}",
        unit="cand",
        disable=not progress,
        leave=False,
    ) as bar:
        while True:
            page = store.pool_page(after, page_size, skip, shard)
            if not page:
                break
            after = page[-1].candidate_id
            pool, lost = archived(
                sorted(map(pool_example, page), key=lambda e: e.image_sha256), archive
            )
            missing += lost
            if pool:
                rows = [_score_row(e, p) for e, p in zip(pool, score(pool), strict=True)]
                store.update_predictions(str(version), rows)
            done += len(pool)
            bar.update(len(page))
    if missing:
        log.warning(
            "re-scoring: %d unlabeled candidates have no archived image and keep their old scores",
            missing,
        )
    return done


def _scorer(
    info: VersionInfo, archive: ImageArchive, depth: str | None, device: str
) -> Callable[[list[Example]], list[np.ndarray]]:
    """Patch probabilities of a list of candidates under a version: through the trunk cache by
    its torch network at a ``depth`` with a frozen trunk, else by its ONNX model."""
    if depth is not None:
        net = load_net(info).to(resolve_device(device))
        if not is_trivial(net.split(depth)[0]):
            source = PatchSource(archive, info.manifest.input_size)
            return lambda pool: candidate_probabilities(
                net, pool, source, batch_size=256, progress=False, depth=depth
            )
    model = load_model(info, SessionOptions())
    batcher = SerialBatcher(256)
    onnx_source = PatchSource(archive, model.input_size)

    def by_onnx(pool: list[Example]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        chunk: list[np.ndarray] = []

        def flush() -> None:
            if chunk:
                probs = batcher.predict(model, np.concatenate(chunk))
                start = 0
                for p in chunk:
                    out.append(probs[start : start + len(p)])
                    start += len(p)
                chunk.clear()

        for e in pool:
            chunk.append(onnx_source.patches(e))
            if sum(len(p) for p in chunk) >= 256:
                flush()
        flush()
        return out

    return by_onnx


def keyed_methods(text: str) -> list[str]:
    """``CAD_QUEUE_KEYS`` as a list, checked.

    Raises:
        ValueError: a name that is not a keyed baseline.
    """
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in KEYED]
    if unknown:
        raise ValueError(f"CAD_QUEUE_KEYS: {', '.join(unknown)} not keyed; choose from {KEYED}")
    return methods


def write_queue_keys(
    store: SqlLabelStore,
    archive: ImageArchive,
    registry: ModelRegistry,
    methods: Sequence[str],
    settings: TrainerSettings,
    progress: bool = True,
) -> int:
    """Write the keyed baselines' keys for the unlabelled pool under the version servers follow
    (:func:`trainer.baselines.queue_keys`); returns the candidates keyed."""
    version = registry.target()
    if version is None or not methods:
        return 0
    info = registry.get(version)
    pool, _ = archived(sorted(unlabeled_examples(store), key=lambda e: e.image_sha256), archive)
    labeled, _ = archived(labeled_examples(store), archive)
    net = load_net(info).to(resolve_device(settings.device))
    keys = queue_keys(
        methods,
        net,
        pool,
        labeled,
        PatchSource(archive, info.manifest.input_size),
        settings.depth,
        settings.queue_keys_budget,
        settings.seed,
        progress,
    )
    for method, rows in keys.items():
        store.put_queue_keys(method, str(version), rows)
    return len(pool)


def archived(pool: list[Example], archive: ImageArchive) -> tuple[list[Example], int]:
    """The candidates whose image is archived (pruned, or lost with the last unsynced frames in a
    power cut, otherwise), and how many are not."""
    present: dict[str, bool] = {}
    kept = [
        e
        for e in pool
        if present.setdefault(e.image_sha256, archive.path(e.image_sha256).is_file())
    ]
    return kept, len(pool) - len(kept)


def _score_row(e: Example, probs: np.ndarray) -> tuple[str, np.ndarray, float, float, float, float]:
    st = candidate_stats(probs[None])
    return (
        e.candidate_id,
        probs,
        float(st.probability[0]),
        float(st.entropy[0]),
        float(st.diversity[0]),
        float(st.score[0]),
    )
