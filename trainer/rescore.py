"""Re-scoring the unlabelled pool with the version servers follow (the queue ranks by what it
writes): all of it, or a budget chosen off the indexes or by a pre-screen
(:mod:`trainer.prescreen`); and the keyed baselines' queue keys beside it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from cad.aift import DEFAULT_VARIANT, KEYED, VARIANTS
from cad.aift.baselines import MARGIN
from cad.labels.archive import ImageArchive
from cad.labels.store import SqlLabelStore
from cad.labels.store.records import PoolRow
from cad.models.registry import ModelRegistry
from trainer.baselines import queue_keys
from trainer.data import Example, PatchSource, labeled_examples, unlabeled_examples
from trainer.device import resolve_device
from trainer.pool import (
    RESCORE_PAGE,
    archived,
    load_net,
    page_examples,
    pool_pages,
    row_pages,
    score_row,
    scorer,
)
from trainer.prescreen import PRESCREEN_PRECISIONS, prescreened_selection, screening
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

TOP_SHARE, RECENT_SHARE = 0.5, 0.25
"""A budgeted re-scoring's parts: the top of the ranking, the newest arrivals, and (the rest) a
uniform random sample."""


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
    prescreen_window: int = 0,
    window_top: float = TOP_SHARE,  # CAD_RESCORE_PRESCREEN_WINDOW_TOP's default
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
    still scored in full precision. ``prescreen_window`` > 0: it screens only that many, chosen
    as :func:`budgeted_selection` chooses (work no longer grows with the pool), ``window_top``
    of it the top as served; with a shard, each worker chooses the window and screens its part
    of it (workers started together choose the same window; one started after another has
    written scores may choose a few past its end: a slightly different screen, never a
    candidate scored twice, since the shards are disjoint).
    ``threads``: ONNX Runtime's intra-op threads (0: one per core).

    With a tuning ``depth`` that leaves a frozen trunk, the version's torch network scores
    through the trunk cache (the trunk is the one every round at that depth shares, so only the
    top runs); otherwise its ONNX model does, as servers run it. Parity between the two is
    checked at every export (max |dp| <= the parity tolerance).

    Raises:
        ValueError: a budget chosen off the indexes with a shard (that choice is one
            worker's), a pre-screen without a budget, or an ``order`` the store cannot rank by.
    """
    _check(shard, budget, prescreen, prescreen_precision, prescreen_window, window_top)
    version = registry.target()
    if version is None:
        return 0
    info = registry.get(version)
    skip = None if again else str(version)
    score = scorer(info, archive, depth, device, threads)
    if budget:
        if prescreen:
            part = budget if shard is None else -(-budget // shard[1])  # its share, rounded up
            window = _window(store, registry, version, prescreen_window, order, window_top)
            with screening(
                registry, info, store, archive, prescreen, prescreen_precision, threads, shard
            ) as screen:
                ids = prescreened_selection(
                    store, archive, screen or score, version, part, prescreen, order, page_size,
                    progress, shard, window,
                )  # fmt: skip
        else:
            ids = budgeted_selection(store, version, budget, order, previous=_before(registry))
        chosen = store.pool.pool_rows(ids, skip)
        total = len(chosen)
        pages: Iterator[list[PoolRow]] = row_pages(chosen, page_size)
    else:
        total = store.pool.pool_count(skip, shard)
        pages = pool_pages(store, page_size, skip, shard)
    return _score_pages(store, archive, score, version, pages, total, progress)


def _check(
    shard: tuple[int, int] | None,
    budget: int,
    prescreen: int,
    prescreen_precision: str,
    prescreen_window: int,
    window_top: float,
) -> None:
    """:func:`rescore_pool`'s refusals."""
    if not 0.0 <= window_top <= 1.0:
        raise ValueError(f"a window's share of the top is in [0, 1], not {window_top}")
    if prescreen_window and not prescreen:
        raise ValueError("a pre-screen's window needs a pre-screen")
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
            pool, lost = page_examples(page, archive)
            missing += lost
            if pool:
                rows = [score_row(e, p) for e, p in zip(pool, score(pool), strict=True)]
                store.pool.update_predictions(str(version), rows)
            done += len(pool)
            bar.update(len(page))
    if missing:
        log.warning(
            "re-scoring: %d unlabeled candidates have no archived image and keep their old scores",
            missing,
        )
    return done


def _window(
    store: SqlLabelStore,
    registry: ModelRegistry,
    version: int,
    size: int,
    order: str,
    top_share: float,
) -> list[str] | None:
    """A pre-screen's window of ``size`` chosen off the indexes (None: the whole pool)."""
    if not size:
        return None
    return budgeted_selection(store, version, size, order, False, _before(registry), top_share)


def _before(registry: ModelRegistry) -> str | None:
    """The version published before the one servers follow, if any."""
    target = registry.target()
    previous = max((v for v in registry.versions() if target and v < target), default=None)
    return None if previous is None else str(previous)


def budgeted_selection(
    store: SqlLabelStore,
    version: int,
    budget: int,
    order: str = DEFAULT_VARIANT,
    skip_scored: bool = True,
    previous: str | None = None,
    top_share: float = TOP_SHARE,
) -> list[str]:
    """At most ``budget`` candidate ids to re-score after version ``version`` was published,
    read off the store's indexes (the cost does not grow with the pool):

    - the top ``top_share`` of the budget by ``order``, the ranking reviewers are served, those
      the ``previous`` version scored first (as a queue with ``CAD_QUEUE_FRESH_FIRST`` serves
      them): the items a queue serves, so stale scores there are the ones that matter;
    - the ``RECENT_SHARE`` newest arrivals, less where ``top_share`` leaves less (those
      recorded before the servers swapped were scored by the old version at Classify time);
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
    top_n = int(budget * top_share)
    recent_n = int(budget * min(RECENT_SHARE, 1.0 - top_share))
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
