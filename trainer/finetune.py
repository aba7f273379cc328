"""Continuous fine-tuning: SGD with per-layer rates, fc8's own rate, bias at 2x, decay per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainer.data import Example, PatchSource, balanced_epoch, batches
from trainer.network import CadNet
from trainer.presets import Schedule, trained_layers


def param_groups(net: CadNet, schedule: Schedule, depth: str) -> list[dict[str, object]]:
    """One group per trained layer and parameter kind; layers below ``depth`` are frozen."""
    trained = dict(trained_layers(depth))
    for p in net.parameters():
        p.requires_grad_(False)
    groups: list[dict[str, object]] = []
    modules = dict(net.backbone.named_modules())
    for name, path in trained.items():
        layer = modules[path]
        rate = schedule.lr_last if name == "fc8" else schedule.lr
        layer.weight.requires_grad_(True)
        layer.bias.requires_grad_(True)
        groups.append({"params": [layer.weight], "lr": rate, "name": f"{name}.weight"})
        groups.append({"params": [layer.bias], "lr": 2.0 * rate, "name": f"{name}.bias"})
    return groups


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
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.SGD(param_groups(net, schedule, depth), momentum=schedule.momentum)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=schedule.gamma)
    loss_fn = nn.CrossEntropyLoss()
    labels = [int(e.label) for e in examples]  # type: ignore[arg-type]
    per_patch = max(source.recipe(e).count for e in examples)
    per_batch = max(1, batch_size // per_patch)
    losses, seen = [], 0
    net.train()
    for epoch in range(schedule.epochs):
        order = balanced_epoch(labels, rng)
        total, count = 0.0, 0
        bar = tqdm(list(batches(order, per_batch)), desc=f"epoch {epoch + 1}/{schedule.epochs}",
                   unit="batch", disable=not progress, leave=False)
        for batch in bar:
            parts = [source.patches(examples[i]) for i in batch]
            x = np.concatenate(parts)
            y = np.concatenate([np.full(len(p), labels[i]) for p, i in zip(parts, batch, strict=True)])
            optimizer.zero_grad()
            loss = loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y).long())
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
    net: CadNet, examples: Sequence[Example], source: PatchSource, batch_size: int = 64,
    desc: str = "scoring", progress: bool = True,
) -> list[np.ndarray]:
    """Patch probabilities ``(m, 2)`` of each candidate under ``net`` (eval mode)."""
    net.eval()
    out = []
    for ex in tqdm(examples, desc=desc, unit="cand", disable=not progress, leave=False):
        patches = torch.from_numpy(source.patches(ex))
        probs = torch.cat([torch.softmax(net(chunk), dim=1) for chunk in patches.split(batch_size)])
        out.append(probs.numpy())
    return out
