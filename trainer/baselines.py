"""The keyed literature baselines' inputs and keys: penultimate features and dropout samples of
every unlabelled candidate under the version servers follow, turned into the queue's keys by
:mod:`cad.aift.baselines` and written to the store (``CAD_QUEUE_KEYS``).

The network's top (above its tuning depth) is split at its last dropout: the part below runs once
in eval mode and its output, averaged over space and over the candidate's patches, is the
candidate's feature vector (SqueezeNet: fire9's 512 channels; AlexNet: fc7's 4096 at the fc
depths); the part from the dropout up runs ``passes`` times with dropout on (MC dropout; only that
last dropout is sampled, SqueezeNet's only one). A depth above the last dropout has no dropout to
sample: BALD is then refused with a clear error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cad.aift.baselines import (
    BALD,
    CORESET,
    KEYED,
    MC_PASSES,
    TYPICLUST,
    bald_scores,
    kcenter_greedy,
    typiclust_keys,
)
from trainer.data import Example, PatchSource
from trainer.finetune import SplitNet
from trainer.network import CadNet

log = logging.getLogger(__name__)


class NoDropout(ValueError):
    """BALD asked of a network whose trained top holds no dropout."""


@dataclass(frozen=True)
class Views:
    """What the keyed baselines read of each candidate."""

    features: np.ndarray
    """``(n, d)`` penultimate features, mean over the candidate's patches."""
    samples: np.ndarray | None
    """``(n, T, K)`` candidate class probabilities under ``T`` dropout masks (None: not asked)."""


def _split_at_dropout(net: CadNet, depth: str, split: SplitNet) -> tuple[nn.Module, nn.Module]:
    modules = list(split.top.children())
    drops = [i for i, m in enumerate(modules) if isinstance(m, nn.Dropout)]
    if not drops:
        raise NoDropout(
            f"{net.architecture} tuned from {depth} has no dropout above its frozen layers: "
            "MC-dropout BALD needs one (tune from a lower depth)"
        )
    at = drops[-1]
    return nn.Sequential(*modules[:at]), nn.Sequential(*modules[at:])


def candidate_views(
    net: CadNet,
    examples: Sequence[Example],
    source: PatchSource,
    depth: str,
    passes: int = 0,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> Views:
    """Features (and, with ``passes`` >= 2, dropout samples) of every candidate."""
    net.eval()
    split = SplitNet(net, depth, source)
    below, above = _split_at_dropout(net, depth, split)
    features: list[np.ndarray] = []
    samples: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)

    def flush() -> None:
        if not pending:
            return
        with torch.no_grad():
            h = below(torch.cat(pending))
            emb = h.mean(dim=(2, 3)) if h.ndim == 4 else h
            runs = []
            if passes >= 2:
                above.train()  # only dropout differs between modes up here
                for _ in range(passes):
                    runs.append(torch.softmax(above(h), dim=1))
                above.eval()
        start = 0
        for part in pending:
            stop = start + len(part)
            features.append(emb[start:stop].mean(dim=0).cpu().numpy())
            if runs:  # the candidate's probability under each mask: its mean over patches
                samples.append(np.stack([r[start:stop].mean(dim=0).cpu().numpy() for r in runs]))
            start = stop
        pending.clear()

    try:
        for ex in tqdm(
            examples, desc="baseline views", unit="cand", disable=not progress, leave=False
        ):
            pending.append(split.inputs(ex))
            if sum(len(p) for p in pending) >= batch_size:
                flush()
        flush()
    finally:
        torch.random.set_rng_state(generator_state)
    width = features[0].shape[0] if features else 0
    return Views(
        np.stack(features) if features else np.zeros((0, width)),
        np.stack(samples) if samples else None,
    )


def queue_keys(
    methods: Sequence[str],
    net: CadNet,
    pool: Sequence[Example],
    labeled: Sequence[Example],
    source: PatchSource,
    depth: str,
    budget: int,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """Each keyed baseline's keys for the unlabelled ``pool`` given the ``labeled`` candidates:
    ``{method: [(candidate_id, key), ...]}``; ``budget``: the batch Core-Set and TypiClust plan
    for (the next round's labels)."""
    unknown = [m for m in methods if m not in KEYED]
    if unknown:
        raise ValueError(f"not keyed baselines: {', '.join(unknown)}; keyed: {', '.join(KEYED)}")
    if not methods or not pool:
        return {}
    wanted = set(methods)
    everything = [*pool, *labeled]
    views = candidate_views(
        net,
        everything if wanted & {CORESET, TYPICLUST} else pool,
        source,
        depth,
        passes=MC_PASSES if BALD in wanted else 0,
        seed=seed,
        progress=progress,
    )
    ids = [e.candidate_id for e in pool]
    out: dict[str, list[tuple[str, float]]] = {}
    n = len(pool)
    if BALD in wanted:
        assert views.samples is not None  # noqa: S101  an invariant, not input checking
        out[BALD] = list(zip(ids, bald_scores(views.samples[:n]).tolist(), strict=True))
    mask = np.zeros(len(views.features), dtype=bool)
    mask[n:] = True
    if CORESET in wanted:
        keys = kcenter_greedy(views.features, mask, budget)[:n]
        out[CORESET] = list(zip(ids, keys.tolist(), strict=True))
    if TYPICLUST in wanted:
        keys = typiclust_keys(views.features, mask, budget, seed=seed)[:n]
        out[TYPICLUST] = list(zip(ids, keys.tolist(), strict=True))
    log.info("queue keys for %s over %d candidates (%d labelled)", ", ".join(out), n, len(labeled))
    return out
