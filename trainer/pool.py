"""Reading the unlabelled pool a page at a time and scoring it with a published version: the
primitives a round's re-scoring (:mod:`trainer.rescore`) and its pre-screen
(:mod:`trainer.prescreen`) share."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from cad.aift import candidate_stats
from cad.labels.archive import ImageArchive
from cad.labels.store import SqlLabelStore
from cad.labels.store.records import PoolRow
from cad.models.batcher import SerialBatcher
from cad.models.model import load_model
from cad.models.providers import SessionOptions
from cad.models.registry import WEIGHTS_FILE, VersionInfo
from trainer.data import Example, PatchSource, pool_example
from trainer.device import resolve_device
from trainer.finetune import candidate_probabilities
from trainer.network import CadNet
from trainer.trunk import is_trivial


def load_net(info: VersionInfo) -> CadNet:
    """A published version's torch network (architecture, classes and input size from its
    manifest)."""
    net = CadNet(len(info.manifest.classes), info.manifest.input_size, info.manifest.architecture)
    net.load_state_dict(torch.load(info.path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return net.eval()


RESCORE_PAGE = 2048
"""Candidates per page of a re-scoring: read, scored and written together; memory is bounded
by it, not by the pool."""


ONNX_BATCH = 64
"""Patches the ONNX scorer runs at once. SqueezeNet at 64 px on one core of this 2-core machine
(bench.rescore's network): 1,348 patches/s at 64 against 1,149 at 256 in fp32, 1,920 against
1,390 in int8 (smaller activations stay in the cache); 32 was no faster than 64."""


def pool_pages(
    store: SqlLabelStore, page_size: int, skip: str | None, shard: tuple[int, int] | None
) -> Iterator[list[PoolRow]]:
    after = ""
    while page := store.pool.pool_page(after, page_size, skip, shard):
        after = page[-1].candidate_id
        yield page


def scorer(
    info: VersionInfo, archive: ImageArchive, depth: str | None, device: str, threads: int = 0
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
    return onnx_scorer(info, archive, threads)


def onnx_scorer(
    info: VersionInfo, archive: ImageArchive, threads: int = 0
) -> Callable[[list[Example]], list[np.ndarray]]:
    """Patch probabilities of a list of candidates by ``info``'s ONNX model, as servers run it
    (``threads``: intra-op threads, 0 for ONNX Runtime's choice)."""
    model = load_model(info, SessionOptions(intra_op_threads=threads))
    batcher = SerialBatcher(ONNX_BATCH)
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
            if sum(len(p) for p in chunk) >= ONNX_BATCH:
                flush()
        flush()
        return out

    return by_onnx


def row_pages(rows: list[PoolRow], page_size: int) -> Iterator[list[PoolRow]]:
    """``rows`` (already read) a page at a time."""
    return (rows[i : i + page_size] for i in range(0, len(rows), page_size))


def page_examples(page: list[PoolRow], archive: ImageArchive) -> tuple[list[Example], int]:
    """A page of the pool as examples, those with an archived image only, sorted by image (so
    each image is decoded once), and how many had none."""
    return archived(sorted(map(pool_example, page), key=lambda e: e.image_sha256), archive)


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


def score_row(e: Example, probs: np.ndarray) -> tuple[str, np.ndarray, float, float, float, float]:
    st = candidate_stats(probs[None])
    return (
        e.candidate_id,
        probs,
        float(st.probability[0]),
        float(st.entropy[0]),
        float(st.diversity[0]),
        float(st.score[0]),
    )
