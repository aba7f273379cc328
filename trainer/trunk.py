"""Frozen-trunk activations, cached per (trunk weights, image, box, recipe, size).

A round that tunes only the top of the network (``--depth fire9``, ``fc6``, ...)
never changes the layers below: every version of a model trained at that depth
has the same trunk as its parent, bit for bit. Their activations on a
candidate's patches are then the same in every epoch, every round, every
re-scoring of the pool and every evaluation, so they are computed once and
kept. The key includes a digest of the trunk's weights, so a trunk that did
change (a deeper round, another model) can never be served a stale entry.

The cache lives in the process (``cad train watch`` and experiments run rounds
one after another in one process) and is bounded by ``CAD_TRUNK_CACHE_MB``;
least recently used entries go first. Frozen layers always run in eval mode
(dropout inside the frozen trunk is off), so their output is deterministic.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import torch

from trainer.network import Trunk


def trunk_digest(trunk: Trunk) -> str:
    """SHA-256 of the trunk's structure and tensors (parameters and buffers, in order)."""
    h = hashlib.sha256(repr(trunk.body).encode())
    for name, tensor in [*trunk.named_parameters(), *trunk.named_buffers()]:
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def is_trivial(trunk: Trunk) -> bool:
    """An empty trunk (everything trained): caching would only store normalised pixels."""
    return len(trunk.body) == 0


class TrunkCache:
    """Activations of frozen trunks, keyed by (trunk digest, candidate key), bounded in bytes."""

    def __init__(self, max_bytes: int | None = None) -> None:
        if max_bytes is None:
            from trainer.settings import TrainerSettings

            max_bytes = int(TrainerSettings().trunk_cache_mb * (1 << 20))
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, Hashable], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @torch.no_grad()
    def features(
        self,
        trunk: Trunk,
        digest: str,
        key: Hashable,
        patches: Callable[[], np.ndarray],
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """The trunk's output on one candidate's patches (computed on a miss; read-only), on
        ``device`` (the trunk's; an entry computed elsewhere is copied there)."""
        full = (digest, key)
        with self._lock:
            hit = self._entries.get(full)
            if hit is not None:
                self._entries.move_to_end(full)
                self.hits += 1
                return hit if device is None else hit.to(device)
        trunk.eval()
        out = trunk(torch.from_numpy(patches()).to(device or "cpu")).contiguous()
        size = out.numel() * out.element_size()
        with self._lock:
            self.misses += 1
            if size <= self.max_bytes:
                self._entries[full] = out
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, old = self._entries.popitem(last=False)
                    self._bytes -= old.numel() * old.element_size()
        return out


CACHE = TrunkCache()
"""The process's trunk cache (used by fine-tuning, evaluation and re-scoring)."""
