"""Re-scoring the unlabelled pool with the version servers follow (the queue ranks by what it
writes), and the keyed baselines' queue keys beside it; and a published version's torch network."""

from __future__ import annotations

import heapq
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cad.aift import DEFAULT_VARIANT, KEYED, VARIANTS, candidate_stats
from cad.aift.baselines import MARGIN
from cad.aift.patches import parse_recipe
from cad.aift.scoring import aift_scores, candidate_probability
from cad.labels.archive import ImageArchive
from cad.labels.store import SqlLabelStore
from cad.labels.store.records import PoolRow
from cad.models.batcher import SerialBatcher
from cad.models.model import load_model
from cad.models.providers import SessionOptions
from cad.models.registry import WEIGHTS_FILE, ModelRegistry, VersionInfo
from trainer.baselines import queue_keys
from trainer.data import Example, PatchSource, labeled_examples, pool_example, unlabeled_examples
from trainer.device import resolve_device
from trainer.finetune import candidate_probabilities
from trainer.network import CadNet
from trainer.quantize import reduced_model
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

ONNX_BATCH = 64
"""Patches the ONNX scorer runs at once. SqueezeNet at 64 px on one core of this 2-core machine
(bench.rescore's network): 1,348 patches/s at 64 against 1,149 at 256 in fp32, 1,920 against
1,390 in int8 (smaller activations stay in the cache); 32 was no faster than 64."""

PRESCREEN_PRECISIONS = ("fp32", "int8")
CALIBRATION_PATCHES = 256
"""Patches an int8 pre-screen is calibrated on (MinMax): the pool's first page's, cut as the
pre-screen cuts them, so the same pool and version give the same model again."""


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
    budget: int = 0,
    order: str = DEFAULT_VARIANT,
    prescreen: int = 0,
    prescreen_precision: str = "fp32",
    threads: int = 0,
) -> int:
    """Score the unlabeled candidates with the version servers follow; the queue reads it.
    Returns how many were scored.

    The pool is read a page at a time (keyset pagination on the candidate id), scored, and the
    page's scores written before the next is read, so memory does not grow with the pool. A
    candidate that version already scored (at Classify time, or by a re-scoring that was stopped)
    is left out unless ``again``: a restarted re-scoring goes on where it stopped. ``shard``
    ``(i, n)``: only the i-th of n disjoint parts of the pool (workers share a re-scoring).
    ``budget`` > 0: at most that many, chosen by :func:`budgeted_selection` (the work of a round
    no longer grows with the pool; the others keep the scores they had). ``prescreen`` > 0 with
    a budget: the ``budget`` are instead the top of a cheap pass over the whole pool that scores
    each candidate on its first ``prescreen`` patches only (:func:`prescreened_selection`); this
    one shards: each of n workers pre-screens its part and scores its best ``budget / n``.
    ``prescreen_precision`` "int8": the pre-screen runs the version's int8 variant (the published
    one, else one quantised for this pass and calibrated on the pool's first page); the budget is
    still scored in full precision. ``threads``: ONNX Runtime's intra-op threads (0: one per
    core; 1 for each of N workers sharing N cores).

    With a tuning ``depth`` that leaves a frozen trunk, the version's torch network scores
    through the trunk cache (the trunk is the one every round at that depth shares, so only the
    top runs); otherwise its ONNX model does, as servers run it. Parity between the two is
    checked at every export (max |dp| <= the parity tolerance).

    Raises:
        ValueError: a budget chosen off the indexes with a shard (that choice is one
            worker's), a pre-screen without a budget, or an ``order`` the store cannot rank by.
    """
    if budget and not prescreen and shard is not None:
        raise ValueError(
            "a budget chosen off the indexes is not sharded: choose a budget or a shard, or "
            "shard a pre-screened budget"
        )
    if prescreen and not budget:
        raise ValueError("a pre-screen chooses a budget's candidates: set a budget too")
    if prescreen_precision not in PRESCREEN_PRECISIONS:
        raise ValueError(
            f"a pre-screen runs in {' or '.join(PRESCREEN_PRECISIONS)}, not {prescreen_precision!r}"
        )
    version = registry.target()
    if version is None:
        return 0
    info = registry.get(version)
    skip = None if again else str(version)
    score = _scorer(info, archive, depth, device, threads)
    if budget:
        if prescreen:
            part = budget if shard is None else -(-budget // shard[1])  # its share, rounded up
            with _screening(
                registry, info, store, archive, prescreen, prescreen_precision, threads, shard
            ) as screen:
                ids = prescreened_selection(
                    store,
                    archive,
                    screen or score,
                    version,
                    part,
                    prescreen,
                    order,
                    page_size,
                    progress,
                    shard,
                )
        else:
            ids = budgeted_selection(store, version, budget, order, previous=_before(registry))
        chosen = store.pool.pool_rows(ids, skip)
        total = len(chosen)
        pages: Iterator[list[PoolRow]] = (
            chosen[i : i + page_size] for i in range(0, len(chosen), page_size)
        )
    else:
        total = store.pool.pool_count(skip, shard)
        pages = _pool_pages(store, page_size, skip, shard)
    return _score_pages(store, archive, score, version, pages, total, progress)


def _score_pages(
    store: SqlLabelStore,
    archive: ImageArchive,
    score: Callable[[list[Example]], list[np.ndarray]],
    version: int,
    pages: Iterator[list[PoolRow]],
    total: int,
    progress: bool,
) -> int:
    """Score ``pages`` of the pool with ``score`` and write each page's scores before the next
    page is read; returns how many were scored."""
    done = missing = 0
    with tqdm(
        total=total,
        desc=f"re-scoring pool with v{version}",
        unit="cand",
        disable=not progress,
        leave=False,
    ) as bar:
        for page in pages:
            pool, lost = archived(
                sorted(map(pool_example, page), key=lambda e: e.image_sha256), archive
            )
            missing += lost
            if pool:
                rows = [_score_row(e, p) for e, p in zip(pool, score(pool), strict=True)]
                store.pool.update_predictions(str(version), rows)
            done += len(pool)
            bar.update(len(page))
    if missing:
        log.warning(
            "re-scoring: %d unlabeled candidates have no archived image and keep their old scores",
            missing,
        )
    return done


def _before(registry: ModelRegistry) -> str | None:
    """The version published before the one servers follow, if any."""
    target = registry.target()
    previous = max((v for v in registry.versions() if target and v < target), default=None)
    return None if previous is None else str(previous)


def _pool_pages(
    store: SqlLabelStore, page_size: int, skip: str | None, shard: tuple[int, int] | None
) -> Iterator[list[PoolRow]]:
    after = ""
    while page := store.pool.pool_page(after, page_size, skip, shard):
        after = page[-1].candidate_id
        yield page


TOP_SHARE, RECENT_SHARE = 0.5, 0.25
"""A budgeted re-scoring's parts: the top of the ranking, the newest arrivals, and (the rest) a
uniform random sample."""


def budgeted_selection(
    store: SqlLabelStore,
    version: int,
    budget: int,
    order: str = DEFAULT_VARIANT,
    skip_scored: bool = True,
    previous: str | None = None,
) -> list[str]:
    """At most ``budget`` candidate ids to re-score after version ``version`` was published,
    read off the store's indexes (the cost does not grow with the pool):

    - the top ``TOP_SHARE`` of the budget by ``order``, the ranking reviewers are served, those
      the ``previous`` version scored first (as a queue with ``CAD_QUEUE_FRESH_FIRST`` serves
      them): the items a queue serves, so stale scores there are the ones that matter;
    - the ``RECENT_SHARE`` newest arrivals (those recorded before the servers swapped were
      scored by the old version at Classify time);
    - the rest a uniform random sample (the pool's random keys from a starting point the
      version sets): items that rise under the new version are found in proportion to the
      sample, and over rounds the sample walks the whole pool.

    With ``skip_scored``, the newest and the sample leave out what ``version`` already scored
    (the top is the top whoever scored it): a repeated budgeted re-scoring moves on. Each id
    appears once.

    Raises:
        ValueError: ``order`` is neither an AIFT variant nor margin.
    """
    skip = str(version) if skip_scored else None
    top_n = int(budget * TOP_SHARE)
    recent_n = int(budget * RECENT_SHARE)
    if order in VARIANTS:
        # the top as the queue serves it: the previous version's fresh scores first
        top = store.queue.ranked_unlabeled(VARIANTS[order], top_n, fresh=previous) if top_n else []
    elif order == MARGIN:
        top = store.queue.keyed_unlabeled(MARGIN, top_n) if top_n else []
    else:
        raise ValueError(f"budgeted re-scoring ranks by an AIFT variant or margin, not {order!r}")
    chosen = dict.fromkeys(entry.candidate_id for entry, _ in top)
    chosen.update(dict.fromkeys(store.pool.newest_unlabeled(recent_n, skip) if recent_n else []))
    if budget > len(chosen):
        # a few more than the rest: some of the sample may be chosen already
        for cid in store.pool.pool_sample(version, budget, skip):
            if len(chosen) >= budget:
                break
            chosen.setdefault(cid)
    return list(chosen)[:budget]


def prescreened_selection(
    store: SqlLabelStore,
    archive: ImageArchive,
    score: Callable[[list[Example]], list[np.ndarray]],
    version: int,
    budget: int,
    patches: int,
    order: str = DEFAULT_VARIANT,
    page_size: int = RESCORE_PAGE,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> list[str]:
    """The ``budget`` candidates a whole-pool pre-screen ranks highest, best first: every
    unlabeled candidate is scored by ``score`` (the new version) on its recipe's first
    ``patches`` patches only, and ranked by ``order`` computed from those (a variant's entropy
    and diversity over them, or margin from their mean). The pass reads the pool a page at a
    time and keeps only the best ``budget`` (a heap), so memory is bounded by the budget; its
    work is ``patches`` over the recipe's count of an exact re-scoring's. Candidates whose image
    is not archived are left out. A stopped pass starts over (the version and the pool decide
    the same choice again); the exact scoring after it goes on where it stopped. ``shard``: only
    that part of the pool (the candidates' random keys cut into parts, as an exact re-scoring
    shards), so that n workers each take the best of their part.

    Raises:
        ValueError: ``order`` is neither an AIFT variant nor margin, or ``patches`` < 1.
    """
    if order not in VARIANTS and order != MARGIN:
        raise ValueError(f"a pre-screen ranks by an AIFT variant or margin, not {order!r}")
    if patches < 1:
        raise ValueError(f"a pre-screen scores at least one patch a candidate, not {patches}")
    best: list[tuple[float, _IdFirst]] = []  # a min-heap of the best ``budget``
    with tqdm(
        total=store.pool.pool_count(None, shard),
        desc=f"pre-screening pool with v{version} ({patches} patches)",
        unit="cand",
        disable=not progress,
        leave=False,
    ) as bar:
        for page in _pool_pages(store, page_size, None, shard):
            pool, _ = archived(
                sorted(map(pool_example, page), key=lambda e: e.image_sha256), archive
            )
            short = [replace(e, recipe=first_patches(e.recipe, patches)) for e in pool]
            for e, proxy in zip(pool, _proxies(score(short), order), strict=True):
                item = (proxy, _IdFirst(e.candidate_id))
                if len(best) < budget:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
            bar.update(len(page))
    return [key.id for _, key in sorted(best, reverse=True)]


class _IdFirst:
    """A candidate id that ranks above larger ids: ties in the pre-screen break as the queue
    breaks them (score descending, then id ascending)."""

    __slots__ = ("id",)

    def __init__(self, candidate_id: str) -> None:
        self.id = candidate_id

    def __lt__(self, other: _IdFirst) -> bool:
        return self.id > other.id


def first_patches(spec: str, patches: int) -> str:
    """The recipe ``spec`` cut to its first ``patches`` patches (unchanged if it has no more)."""
    recipe = parse_recipe(spec)
    return spec if patches >= recipe.count else f"{recipe.name}:{patches}"


def _proxies(probs: list[np.ndarray], order: str) -> list[float]:
    """``order``'s score of each candidate from its patch predictions: one vectorised pass per
    patch-array shape (a page mixes recipes only where the pool does)."""
    out = np.empty(len(probs))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(probs):
        by_shape.setdefault(np.shape(p), []).append(i)
    for indices in by_shape.values():
        batch = np.stack([probs[i] for i in indices])
        if order == MARGIN:
            out[indices] = -np.abs(candidate_probability(batch) - 0.5)
        else:
            out[indices] = aift_scores(batch, order)
    return out.tolist()


@contextmanager
def _screening(
    registry: ModelRegistry,
    info: VersionInfo,
    store: SqlLabelStore,
    archive: ImageArchive,
    patches: int,
    precision: str,
    threads: int,
    shard: tuple[int, int] | None,
) -> Iterator[Callable[[list[Example]], list[np.ndarray]] | None]:
    """The pre-screen's scorer where it differs from the exact one's (None: the same): the
    version's int8 variant, published or quantised here for this pass."""
    if precision == "fp32":
        yield None
        return
    published = registry.variant(info.version, precision)
    if published is not None:
        log.info("pre-screen: v%s's published %s variant", info.version, precision)
        yield _onnx_scorer(published, archive, threads)
        return
    calibration = _calibration(store, archive, info, patches, shard)
    if calibration is None:  # nothing to screen
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="cad-prescreen-") as tmp:
        probe = reduced_model(info, precision, calibration, Path(tmp))
        log.info(
            "pre-screen: v%s quantised to %s on %d of the pool's patches",
            info.version,
            precision,
            len(calibration),
        )
        yield _onnx_scorer(probe, archive, threads)


def _calibration(
    store: SqlLabelStore,
    archive: ImageArchive,
    info: VersionInfo,
    patches: int,
    shard: tuple[int, int] | None,
) -> np.ndarray | None:
    """Up to :data:`CALIBRATION_PATCHES` of the pool's first page's patches, cut as a pre-screen
    on ``patches`` patches cuts them (None: no archived candidate)."""
    source = PatchSource(archive, info.manifest.input_size)
    out: list[np.ndarray] = []
    cut = 0
    for page in _pool_pages(store, RESCORE_PAGE, None, shard):
        pool, _ = archived(sorted(map(pool_example, page), key=lambda e: e.image_sha256), archive)
        for e in pool:
            out.append(source.patches(replace(e, recipe=first_patches(e.recipe, patches))))
            cut += len(out[-1])
            if cut >= CALIBRATION_PATCHES:
                return np.concatenate(out)[:CALIBRATION_PATCHES]
        break  # the first page is sample enough
    return np.concatenate(out) if out else None


def _scorer(
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
    return _onnx_scorer(info, archive, threads)


def _onnx_scorer(
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
        store.queue.put_queue_keys(method, str(version), rows)
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
