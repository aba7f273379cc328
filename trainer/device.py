"""Where the trainer computes: ``CAD_DEVICE`` = ``auto`` (CUDA when torch sees one, else the
CPU), ``cpu``, ``cuda`` or ``cuda:N``. Networks live on that device while they train, evaluate,
re-score and fill the trunk cache; tensors follow the network they are fed to. Export and its
parity check run on the CPU, against ONNX Runtime, whatever the device (the published model is
the same either way)."""

from __future__ import annotations

import re

import torch
from torch import nn

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(setting: str) -> torch.device:
    """The device ``setting`` names. ``auto``: ``cuda`` (device 0) when torch sees a usable
    CUDA device, else the CPU.

    Raises:
        ValueError: not one of auto, cpu, cuda, cuda:N; or CUDA named and torch sees none, or
            not that many (the message says what torch sees).
    """
    if not re.fullmatch(DEVICE_PATTERN, setting or ""):
        raise ValueError(f"device {setting!r}: choose auto, cpu, cuda or cuda:N")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise ValueError(
                f"device {setting!r}: torch sees {count} usable CUDA device(s) here"
                + ("" if count else " (a CPU build of torch, or no driver); use cpu or auto")
            )
    return device


def device_of(net: nn.Module) -> torch.device:
    """Where ``net``'s parameters are (tensors fed to it go there)."""
    return next(net.parameters()).device


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:N (the card's name)`` for the manifest."""
    if device.type != "cuda":
        return device.type
    index = device.index or 0
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
