"""Re-scoring the unlabelled pool with the version servers follow (the queue ranks by what it
writes), and the keyed baselines' queue keys beside it; and a published version's torch network."""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
from trainer.data import Example, PatchSource, labeled_examples, unlabeled_examples
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


def rescore_pool(
    store: SqlLabelStore,
    archive: ImageArchive,
    registry: ModelRegistry,
    progress: bool = True,
    depth: str | None = None,
    device: str = "cpu",
) -> int:
    """Score every unlabeled candidate with the version servers follow; the queue reads it.

    With a tuning ``depth`` that leaves a frozen trunk, the version's torch network scores
    through the trunk cache (the trunk is the one every round at that depth shares, so only the
    top runs); otherwise its ONNX model does, as servers run it. Parity between the two is
    checked at every export (max |dp| <= the parity tolerance).
    """
    version = registry.target()
    if version is None:
        return 0
    info = registry.get(version)
    pool = sorted(
        unlabeled_examples(store), key=lambda e: e.image_sha256
    )  # each image decoded once
    pool, missing = archived(pool, archive)
    if missing:
        log.warning(
            "re-scoring: %d unlabeled candidates have no archived image and keep their old scores",
            missing,
        )
    if depth is not None:
        net = load_net(info).to(resolve_device(device))
        if not is_trivial(net.split(depth)[0]):
            source = PatchSource(archive, info.manifest.input_size)
            probs = candidate_probabilities(
                net,
                pool,
                source,
                batch_size=256,
                progress=progress,
                desc=f"re-scoring pool with v{version}",
                depth=depth,
            )
            rows = [_score_row(e, p) for e, p in zip(pool, probs, strict=True)]
            store.update_predictions(str(version), rows)
            return len(rows)
    model = load_model(info, SessionOptions())
    batcher = SerialBatcher(256)
    source = PatchSource(archive, model.input_size)
    rows = []
    chunk: list[tuple[Example, np.ndarray]] = []

    def flush() -> None:
        if not chunk:
            return
        probs = batcher.predict(model, np.concatenate([p for _, p in chunk]))
        start = 0
        for e, p in chunk:
            rows.append(_score_row(e, probs[start : start + len(p)]))
            start += len(p)
        chunk.clear()

    for e in tqdm(
        pool,
        desc=f"re-scoring pool with v{version}",
        unit="cand",
        disable=not progress,
        leave=False,
    ):
        chunk.append((e, source.patches(e)))
        if sum(len(p) for _, p in chunk) >= 256:
            flush()
    flush()
    store.update_predictions(str(version), rows)
    return len(rows)


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
