"""Learning parameters of the AIFT paper's Table 3 as named presets, and tuning depth (TMI Table II)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum; per-epoch decay; fc8 has its own rate; bias rate = 2x weight rate."""

    momentum: float
    lr: float
    """Learning rate of the layers below fc8."""
    lr_last: float
    """Learning rate of the new last layer (fc8)."""
    gamma: float
    """The rate is multiplied by gamma after every epoch."""
    epochs: int


@dataclass(frozen=True)
class Preset:
    name: str
    first: Schedule
    later: Schedule
    scratch: Schedule
    """Learning from scratch (random initialisation, same labeled sets)."""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "frames",
            first=Schedule(0.9, 1e-4, 1e-3, 0.95, 20),
            later=Schedule(0.9, 1e-4, 1e-4, 0.95, 15),
            scratch=Schedule(0.9, 1e-4, 1e-3, 0.95, 20),
        ),
        Preset(
            "polyp",
            first=Schedule(0.9, 1e-3, 1e-2, 0.95, 5),
            later=Schedule(0.9, 1e-4, 1e-3, 0.10, 3),
            scratch=Schedule(0.9, 1e-3, 1e-2, 0.95, 10),
        ),
        Preset(
            "pe",
            first=Schedule(0.9, 1e-3, 1e-2, 0.95, 10),
            later=Schedule(0.9, 1e-3, 1e-2, 0.10, 5),
            scratch=Schedule(0.9, 1e-3, 1e-2, 0.95, 20),
        ),
    )
}

# AlexNet layers, bottom to top, with their module paths inside torchvision's AlexNet.
LAYERS: tuple[tuple[str, str], ...] = (
    ("conv1", "features.0"),
    ("conv2", "features.3"),
    ("conv3", "features.6"),
    ("conv4", "features.8"),
    ("conv5", "features.10"),
    ("fc6", "classifier.1"),
    ("fc7", "classifier.4"),
    ("fc8", "classifier.6"),
)
DEPTHS = tuple(name for name, _ in LAYERS)
"""Tuning depth: the lowest trained layer. "fc8" = fc8 only ... "conv1" = conv1-fc8 (deep tuning)."""


def trained_layers(depth: str) -> list[tuple[str, str]]:
    """The layers trained at a tuning depth (from ``depth`` up to fc8)."""
    if depth not in DEPTHS:
        raise ValueError(f"unknown tuning depth {depth!r}; choose one of {', '.join(DEPTHS)}")
    return list(LAYERS[DEPTHS.index(depth):])
