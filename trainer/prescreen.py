"""A budget's candidates chosen by a cheap pass over the whole pool: every unlabelled candidate
scored on its recipe's first patches only (in fp32, or by an int8 model), the budget going to
the best; :func:`trainer.rescore.rescore_pool` then scores those exactly (issue 39)."""

from __future__ import annotations

import heapq
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

import trainer.pool as scoring
from cad.aift import DEFAULT_VARIANT, VARIANTS
from cad.aift.baselines import MARGIN
from cad.aift.patches import parse_recipe
from cad.aift.scoring import aift_scores, candidate_probability
from cad.labels.archive import ImageArchive
from cad.labels.store import SqlLabelStore
from cad.labels.store.records import PoolRow
from cad.models.registry import ModelRegistry, VersionInfo
from trainer.data import Example, PatchSource
from trainer.pool import RESCORE_PAGE, page_examples, pool_pages, row_pages
from trainer.quantize import reduced_model

log = logging.getLogger(__name__)


PRESCREEN_PRECISIONS = ("fp32", "int8")
CALIBRATION_PATCHES = 256
"""Patches an int8 pre-screen is calibrated on (MinMax): the pool's first page's, cut as the
pre-screen cuts them, so the same pool and version give the same model again."""


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
    window: Sequence[str] | None = None,
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
    shards), so that n workers each take the best of their part. ``window``: only these
    candidates (those still in the pool; with a shard, those of the window in it), not the
    whole pool: the pass then costs the window's size, whatever the pool's.

    Raises:
        ValueError: ``order`` is neither an AIFT variant nor margin, or ``patches`` < 1.
    """
    if order not in VARIANTS and order != MARGIN:
        raise ValueError(f"a pre-screen ranks by an AIFT variant or margin, not {order!r}")
    if patches < 1:
        raise ValueError(f"a pre-screen scores at least one patch a candidate, not {patches}")
    pages: Iterator[list[PoolRow]]
    if window is None:
        total = store.pool.pool_count(None, shard)
        pages = pool_pages(store, page_size, None, shard)
    else:
        rows = store.pool.pool_rows(window, shard=shard)
        total = len(rows)
        pages = row_pages(rows, page_size)
    best: list[tuple[float, _IdFirst]] = []  # a min-heap of the best ``budget``
    with tqdm(
        total=total,
        desc=f"pre-screening pool with v{version} ({patches} patches)",
        unit="cand",
        disable=not progress,
        leave=False,
    ) as bar:
        for page in pages:
            pool, _ = page_examples(page, archive)
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
def screening(
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
        yield scoring.onnx_scorer(published, archive, threads)
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
        yield scoring.onnx_scorer(probe, archive, threads)


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
    for page in pool_pages(store, RESCORE_PAGE, None, shard):
        pool, _ = page_examples(page, archive)
        for e in pool:
            out.append(source.patches(replace(e, recipe=first_patches(e.recipe, patches))))
            cut += len(out[-1])
            if cut >= CALIBRATION_PATCHES:
                return np.concatenate(out)[:CALIBRATION_PATCHES]
        break  # the first page is sample enough
    return np.concatenate(out) if out else None
