"""The CAD network: torchvision AlexNet or SqueezeNet v1.0 with a 2-way head, normalisation inside.

Input is float32 ``[batch, 3, S, S]`` pixel values 0..255 (what the shared
patch code produces); ``forward`` returns logits, :class:`Probabilities`
wraps it with the softmax for export, matching the server's model contract.

Both architectures are run as one flat sequence of modules (:meth:`CadNet.sequence`),
so that a tuning depth can split the network into a frozen trunk and a trained
top (:meth:`CadNet.split`); the parameters keep torchvision's names under
``backbone.`` so ImageNet state dicts load unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import AlexNet, SqueezeNet, alexnet, squeezenet1_0

from cad.models.manifest import CLASSES

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("alexnet", "squeezenet1_0")
DEFAULT_ARCHITECTURE = "alexnet"
HEAD_INIT_STD = 1e-4
"""Std of SqueezeNet's new head weights (see :class:`CadNet`)."""


@dataclass(frozen=True)
class Layer:
    """A trainable layer, named as tuning depths name it."""

    name: str
    module: str
    """Module path inside the torchvision network (its parameters)."""
    cut: str
    """First module of the trained top when this is the lowest trained layer (the dropout
    in front of a layer belongs to the top, so it stays active in training)."""
    head: bool = False
    """The new 2-way layer: trained at the schedule's last-layer rate."""


LAYERS: dict[str, tuple[Layer, ...]] = {
    # AlexNet bottom to top (TMI Table II names).
    "alexnet": (
        Layer("conv1", "features.0", "features.0"),
        Layer("conv2", "features.3", "features.3"),
        Layer("conv3", "features.6", "features.6"),
        Layer("conv4", "features.8", "features.8"),
        Layer("conv5", "features.10", "features.10"),
        Layer("fc6", "classifier.1", "classifier.0"),
        Layer("fc7", "classifier.4", "classifier.3"),
        Layer("fc8", "classifier.6", "classifier.6", head=True),
    ),
    # SqueezeNet v1.0 bottom to top: conv1, the eight fire modules, the new 1x1 conv head.
    "squeezenet1_0": (
        Layer("conv1", "features.0", "features.0"),
        Layer("fire2", "features.3", "features.3"),
        Layer("fire3", "features.4", "features.4"),
        Layer("fire4", "features.5", "features.5"),
        Layer("fire5", "features.7", "features.7"),
        Layer("fire6", "features.8", "features.8"),
        Layer("fire7", "features.9", "features.9"),
        Layer("fire8", "features.10", "features.10"),
        Layer("fire9", "features.12", "features.12"),
        Layer("classifier", "classifier.1", "classifier.0", head=True),
    ),
}


def layers_of(architecture: str) -> tuple[Layer, ...]:
    if architecture not in LAYERS:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return LAYERS[architecture]


def depths_of(architecture: str) -> tuple[str, ...]:
    """Tuning depths of an architecture, bottom to top ("conv1" = everything is trained)."""
    return tuple(layer.name for layer in layers_of(architecture))


class CadNet(nn.Module):
    """Normalisation + AlexNet or SqueezeNet v1.0 with a ``num_classes``-way head.

    AlexNet: fc8 replaced. For inputs smaller than 224 px whose last feature map
    is 1, 2 or 3 px, the adaptive 6x6 average pool (which then only replicates
    pixels) is replaced by the identical nearest-neighbour upsampling, which ONNX
    can export.

    SqueezeNet: the final 1x1 convolution replaced (torchvision's fine-tuning
    recipe), initialised normal with std 1e-4 (torchvision uses 0.01 for its own
    weights; these Caffe-derived features are on Caffe's scale, mean ~60 and up to
    ~1000 at fire9, so 0.01 starts with logits ~20 apart and a training loss of
    25-160 in the first epoch; 1e-4 starts near p = 0.5), bias 0, and the
    ReLU after it removed: a ReLU on two logits gives 0 gradient whenever both
    are negative, which a fresh head hits on whole batches. Global average pooling
    takes any input size, so small inputs need nothing special.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        num_classes: int = len(CLASSES),
        input_size: int = 224,
        architecture: str = DEFAULT_ARCHITECTURE,
    ) -> None:
        super().__init__()
        layers_of(architecture)
        self.architecture = architecture
        self.backbone: AlexNet | SqueezeNet
        if architecture == "alexnet":
            self.backbone = alexnet(weights=None)
            self.backbone.classifier[6] = nn.Linear(4096, num_classes)
            with torch.no_grad():
                side = int(
                    self.backbone.features(torch.zeros(1, 3, input_size, input_size)).shape[-1]
                )
            if side < 6 and 6 % side == 0:
                self.backbone.avgpool = nn.Upsample(scale_factor=6 // side, mode="nearest")
        else:
            self.backbone = squeezenet1_0(weights=None)
            head = nn.Conv2d(512, num_classes, kernel_size=1)
            nn.init.normal_(head.weight, mean=0.0, std=HEAD_INIT_STD)
            assert head.bias is not None  # noqa: S101  an invariant, not input checking
            nn.init.zeros_(head.bias)
            self.backbone.classifier[1] = head
            self.backbone.classifier[2] = nn.Identity()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def sequence(self) -> list[tuple[str, nn.Module]]:
        """The whole forward pass after normalisation as (module path, module), in order."""
        b = self.backbone
        seq = [(f"features.{i}", m) for i, m in enumerate(b.features)]
        if self.architecture == "alexnet":
            seq += [("avgpool", b.avgpool), ("flatten", nn.Flatten(1))]
            seq += [(f"classifier.{i}", m) for i, m in enumerate(b.classifier)]
        else:
            seq += [(f"classifier.{i}", m) for i, m in enumerate(b.classifier)]
            seq += [("flatten", nn.Flatten(1))]
        return seq

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.backbone(self.normalise(x)) if self.architecture == "alexnet" else self._squeeze(x)
        )

    def _squeeze(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.backbone.classifier(self.backbone.features(self.normalise(x))), 1)

    def layer(self, name: str) -> Layer:
        for layer in layers_of(self.architecture):
            if layer.name == name:
                return layer
        raise ValueError(
            f"unknown tuning depth {name!r} for {self.architecture}; "
            f"choose one of {', '.join(depths_of(self.architecture))}"
        )

    def split(self, depth: str) -> tuple[Trunk, nn.Module]:
        """(trunk, top) at a tuning depth: ``top(trunk(x)) == forward(x)``.

        The trunk (normalisation and every module below ``depth``'s cut) is frozen at
        that depth; it is empty (identity on normalised input) at the lowest depth.
        """
        cut = self.layer(depth).cut
        seq = self.sequence()
        at = next(i for i, (path, _) in enumerate(seq) if path == cut)
        trunk = Trunk(self.mean, self.std, nn.Sequential(*[m for _, m in seq[:at]]))
        return trunk, nn.Sequential(*[m for _, m in seq[at:]])


class Trunk(nn.Module):
    """Normalisation and the frozen modules below a tuning depth (shares the net's tensors)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, body: nn.Sequential) -> None:
        super().__init__()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class Probabilities(nn.Module):
    """Softmax over a network's logits: the exported graph outputs probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)
