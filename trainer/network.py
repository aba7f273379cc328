"""The CAD network: torchvision AlexNet with a 2-way last layer, normalisation inside.

Input is float32 ``[batch, 3, S, S]`` pixel values 0..255 (what the shared
patch code produces); ``forward`` returns logits, :class:`Probabilities`
wraps it with the softmax for export, matching the server's model contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import AlexNet_Weights, alexnet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSES = ("background", "finding")


class CadNet(nn.Module):
    """Normalisation + AlexNet; ``num_classes``-way last layer (fc8).

    For inputs smaller than 224 px whose last feature map is 1, 2 or 3 px, the
    adaptive 6x6 average pool (which then only replicates pixels) is replaced
    by the identical nearest-neighbour upsampling, which ONNX can export.
    Parameters are unchanged, so ImageNet weights load either way.
    """

    def __init__(self, num_classes: int = len(CLASSES), input_size: int = 224) -> None:
        super().__init__()
        self.backbone = alexnet(weights=None)
        self.backbone.classifier[6] = nn.Linear(4096, num_classes)
        with torch.no_grad():
            side = int(self.backbone.features(torch.zeros(1, 3, input_size, input_size)).shape[-1])
        if side < 6 and 6 % side == 0:
            self.backbone.avgpool = nn.Upsample(scale_factor=6 // side, mode="nearest")
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


class Probabilities(nn.Module):
    """Softmax over a network's logits: the exported graph outputs probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


@dataclass(frozen=True)
class Pretrained:
    """Where the initial weights came from, recorded in the manifest."""

    source: str
    """``imagenet`` or ``random-init``."""
    path: str = ""


def imagenet_weights_path(explicit: Path | None) -> Path | None:
    """The local ImageNet AlexNet weights: the explicit path, else the torch hub cache, else None.

    Raises:
        FileNotFoundError: an explicit path was given and does not exist.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise FileNotFoundError(f"pretrained weights file {explicit} does not exist")
        return explicit
    url = AlexNet_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return cached if cached.is_file() else None


def build_initial(weights: Path | None, seed: int, input_size: int = 224) -> tuple[CadNet, Pretrained]:
    """AlexNet with ImageNet weights when available locally, else seeded random initialisation."""
    torch.manual_seed(seed)
    net = CadNet(input_size=input_size)
    path = imagenet_weights_path(weights)
    if path is None:
        log.warning(
            "ImageNet AlexNet weights are not available locally (torch hub cache %s or "
            "CAD_PRETRAINED_WEIGHTS); starting from RANDOM INITIALISATION (seed %d). "
            "Nothing is downloaded.",
            Path(torch.hub.get_dir()) / "checkpoints",
            seed,
        )
        return net, Pretrained("random-init")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    missing, unexpected = net.backbone.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"classifier.6.weight", "classifier.6.bias"}:
        raise ValueError(
            f"{path} is not a torchvision AlexNet state dict (missing {missing}, "
            f"unexpected {unexpected})"
        )
    log.info("initialised from ImageNet AlexNet weights %s (fc8 is new, 2-way)", path)
    return net, Pretrained("imagenet", str(path))
