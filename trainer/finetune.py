"""Continuous fine-tuning: SGD with per-layer rates, fc8's own rate, bias at 2x, decay per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainer.data import Example, PatchSource, balanced_epoch, batches, labels_of
from trainer.device import device_of
from trainer.network import CadNet
from trainer.presets import Schedule, trained_layers
from trainer.trunk import CACHE, TrunkCache, is_trivial, trunk_digest


def param_groups(net: CadNet, schedule: Schedule, depth: str) -> list[dict[str, object]]:
    """One group per trained layer and parameter kind; layers below ``depth`` are frozen.

    The head (AlexNet fc8, SqueezeNet's 1x1 conv) gets the schedule's last-layer rate, every
    other trained layer the base rate; biases twice their layer's rate.
    """
    for p in net.parameters():
        p.requires_grad_(False)
    groups: list[dict[str, object]] = []
    modules = dict(net.backbone.named_modules())
    for layer in trained_layers(net.architecture, depth):
        rate = schedule.lr_last if layer.head else schedule.lr
        params = list(modules[layer.module].named_parameters())
        weights = [p for n, p in params if not n.endswith("bias")]
        biases = [p for n, p in params if n.endswith("bias")]
        for p in weights + biases:
            p.requires_grad_(True)
        groups.append({"params": weights, "lr": rate, "name": f"{layer.name}.weight"})
        groups.append({"params": biases, "lr": 2.0 * rate, "name": f"{layer.name}.bias"})
    return groups


class SplitNet:
    """A network split at its tuning depth: the frozen trunk's outputs come from the trunk cache
    (:mod:`trainer.trunk`), the trained top runs on them. At the lowest depth (everything trained)
    the trunk is only the normalisation and nothing is cached."""

    def __init__(
        self, net: CadNet, depth: str, source: PatchSource, cache: TrunkCache | None = CACHE
    ) -> None:
        self.net = net
        self.trunk, self.top = net.split(depth)
        self.source = source
        self.cache = cache if not is_trivial(self.trunk) else None
        self.digest = trunk_digest(self.trunk) if self.cache is not None else ""
        self.device = device_of(net)
        """Where the net is: its inputs go there."""

    def inputs(self, example: Example) -> torch.Tensor:
        """The top's input for one candidate's patches."""
        if self.cache is None:
            with torch.no_grad():
                self.trunk.eval()
                return self.trunk(torch.from_numpy(self.source.patches(example)).to(self.device))
        return self.cache.features(
            self.trunk,
            self.digest,
            self.source.key(example),
            lambda: self.source.patches(example),
            self.device,
        )

    def train(self) -> None:
        """Train mode for the top only; frozen layers stay in eval mode (dropout off)."""
        self.net.train()
        self.trunk.eval()


@dataclass(frozen=True)
class TrainResult:
    epochs: int
    losses: list[float]
    examples: int
    patches_seen: int


def fine_tune(
    net: CadNet,
    examples: Sequence[Example],
    source: PatchSource,
    schedule: Schedule,
    depth: str,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``net`` in place on labeled examples, class-balanced, seeded.

    A batch holds whole candidates (all their patches), ``batch_size // patches`` of them.
    Layers below ``depth`` are frozen and their outputs come from the trunk cache.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.SGD(param_groups(net, schedule, depth), momentum=schedule.momentum)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=schedule.gamma)
    loss_fn = nn.CrossEntropyLoss()
    split = SplitNet(net, depth, source)
    labels = labels_of(examples)
    per_patch = max(source.recipe(e).count for e in examples)
    per_batch = max(1, batch_size // per_patch)
    losses, seen = [], 0
    split.train()
    for epoch in range(schedule.epochs):
        order = balanced_epoch(labels, rng)
        total, count = 0.0, 0
        bar = tqdm(
            list(batches(order, per_batch)),
            desc=f"epoch {epoch + 1}/{schedule.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for batch in bar:
            parts = [split.inputs(examples[i]) for i in batch]
            x = torch.cat(parts)
            y = torch.cat(
                [
                    torch.full((len(p),), labels[i], dtype=torch.long, device=split.device)
                    for p, i in zip(parts, batch, strict=True)
                ]
            )
            optimizer.zero_grad()
            loss = loss_fn(split.top(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        seen += count
        losses.append(total / max(count, 1))
        decay.step()
    net.eval()
    return TrainResult(schedule.epochs, losses, len(examples), seen)


@torch.no_grad()
def candidate_probabilities(
    net: CadNet,
    examples: Sequence[Example],
    source: PatchSource,
    batch_size: int = 64,
    desc: str = "scoring",
    progress: bool = True,
    depth: str | None = None,
) -> list[np.ndarray]:
    """Patch probabilities ``(m, 2)`` of each candidate under ``net`` (eval mode).

    With ``depth``, the layers below it come from the trunk cache (same function: the cache
    holds exactly what the trunk computes), and the top runs on batches of about ``batch_size``
    patches gathered across candidates."""
    net.eval()
    device = device_of(net)
    split = SplitNet(net, depth, source) if depth else None
    out: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if not pending:
            return
        assert split is not None  # noqa: S101  an invariant, not input checking
        probs = torch.softmax(split.top(torch.cat(pending)), dim=1).cpu().numpy()
        start = 0
        for part in pending:
            out.append(probs[start : start + len(part)])
            start += len(part)
        pending.clear()

    for ex in tqdm(examples, desc=desc, unit="cand", disable=not progress, leave=False):
        if split is not None:
            pending.append(split.inputs(ex))
            if sum(len(p) for p in pending) >= batch_size:
                flush()
        else:
            patches = torch.from_numpy(source.patches(ex)).to(device)
            probs = torch.cat(
                [torch.softmax(net(chunk), dim=1) for chunk in patches.split(batch_size)]
            )
            out.append(probs.cpu().numpy())
    flush()
    return out
