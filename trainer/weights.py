"""Initial weights of a new model, resolved the same way for every architecture.

``imagenet`` looks, in order, at:

1. an explicit file (``CAD_PRETRAINED_WEIGHTS`` / ``--weights PATH``),
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/<torchvision's file name>``),
3. the weights shipped with this package (SqueezeNet v1.0 only: ``trainer/weights/``),
4. torchvision's download, only when the caller allows it (``--allow-download``).

Nothing is fetched otherwise. ``random`` is an explicit seeded random start. The
result says where the weights came from (source, file, sha256, licence); the
manifest records it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cad.models.manifest import Pretrained
from trainer.network import DEFAULT_ARCHITECTURE, CadNet

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class KnownWeights:
    url: str
    """torchvision's download address (its file name is the hub cache's)."""
    licence: str
    shipped: str = ""
    """File name under :data:`SHIPPED_DIR`, if the package carries ImageNet weights."""
    shipped_sha256: str = ""
    shipped_licence: str = ""
    shipped_licence_file: str = ""

    @property
    def cache_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


KNOWN: dict[str, KnownWeights] = {
    "alexnet": KnownWeights(
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "BSD-3-Clause (torchvision)"
    ),
    "squeezenet1_0": KnownWeights(
        "https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth",
        "BSD-3-Clause (torchvision)",
        shipped="squeezenet1_0-imagenet-deepcompression.pth",
        shipped_sha256="4ba88a9c544cef063b50949ffb505fd862eb226585bc642a79f264fcaee6d59c",
        shipped_licence="BSD-2-Clause (DeepScale SqueezeNet / Deep Compression, Song Han)",
        shipped_licence_file="LICENSE-squeezenet",
    ),
}

CHOICES = ("imagenet", "random")


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for and none could be had (one line: what to place where)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_cache_path(architecture: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / KNOWN[architecture].cache_name


def shipped_path(architecture: str) -> Path | None:
    known = KNOWN[architecture]
    return SHIPPED_DIR / known.shipped if known.shipped else None


def _download(architecture: str) -> Path:
    known = KNOWN[architecture]
    target = hub_cache_path(architecture)
    try:
        torch.hub.download_url_to_file(known.url, str(target), progress=True)
    except Exception as exc:  # noqa: BLE001 (any network failure is the same one line)
        raise WeightsUnavailable(
            f"download of {known.url} failed ({type(exc).__name__}); place the file at {target} "
            "or name it with CAD_PRETRAINED_WEIGHTS"
        ) from None
    return target


def resolve(
    architecture: str,
    choice: str | Path | None,
    explicit: Path | None = None,
    allow_download: bool = False,
) -> Pretrained | None:
    """Where the initial weights come from; None means a (seeded) random start.

    ``choice``: ``"imagenet"`` (required: :class:`WeightsUnavailable` if not found),
    ``"random"``, a file path, or None (the default: ImageNet where found locally, else
    a loud random start).

    Raises:
        WeightsUnavailable: ``imagenet`` asked for and not found (or download failed).
        FileNotFoundError: an explicit file does not exist.
    """
    if architecture not in KNOWN:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(KNOWN)}")
    known = KNOWN[architecture]
    if choice == "random":
        return Pretrained("random-init")
    if choice is not None and choice != "imagenet":
        path = Path(choice)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        return Pretrained("file", "explicit", str(path), file_sha256(path), "as supplied")
    if explicit is not None:
        if not explicit.is_file():
            raise FileNotFoundError(
                f"pretrained weights file {explicit} (CAD_PRETRAINED_WEIGHTS) does not exist"
            )
        return Pretrained(
            "imagenet", "explicit", str(explicit), file_sha256(explicit), "as supplied"
        )
    cached = hub_cache_path(architecture)
    if cached.is_file():
        return Pretrained("imagenet", "hub-cache", str(cached), file_sha256(cached), known.licence)
    shipped = shipped_path(architecture)
    if shipped is not None and shipped.is_file():
        digest = file_sha256(shipped)
        if digest != known.shipped_sha256:
            raise WeightsUnavailable(
                f"shipped weights {shipped} are damaged (sha256 {digest[:12]}...)"
            )
        return Pretrained("imagenet", "shipped", str(shipped), digest, known.shipped_licence)
    if allow_download:
        path = _download(architecture)
        return Pretrained("imagenet", "download", str(path), file_sha256(path), known.licence)
    if choice == "imagenet":
        raise WeightsUnavailable(
            f"no ImageNet {architecture} weights here and downloads are off: place {known.cache_name} "
            f"at {cached} or name a file with CAD_PRETRAINED_WEIGHTS (or pass --allow-download)"
        )
    return None


HEAD_KEYS = {"alexnet": "classifier.6.", "squeezenet1_0": "classifier.1."}


def load_backbone(net: CadNet, path: Path) -> None:
    """Load a torchvision state dict of ``net``'s architecture into everything but the new head.

    Raises:
        ValueError: the file is not such a state dict.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    head = HEAD_KEYS[net.architecture]
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        missing, unexpected = net.backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(
            f"{path} is not a torchvision {net.architecture} state dict: {exc}"
        ) from None
    if unexpected or set(missing) != {f"{head}weight", f"{head}bias"}:
        raise ValueError(
            f"{path} is not a torchvision {net.architecture} state dict (missing {missing}, "
            f"unexpected {unexpected})"
        )


def build_initial(
    architecture: str = DEFAULT_ARCHITECTURE,
    choice: str | Path | None = None,
    explicit: Path | None = None,
    allow_download: bool = False,
    seed: int = 0,
    input_size: int = 224,
) -> tuple[CadNet, Pretrained]:
    """The initial network (new 2-way head, seeded) and where its weights came from (:func:`resolve`)."""
    torch.manual_seed(seed)
    net = CadNet(input_size=input_size, architecture=architecture)
    pretrained = resolve(architecture, choice, explicit, allow_download)
    if pretrained is None:
        log.warning(
            "ImageNet %s weights are not available locally (torch hub cache %s, CAD_PRETRAINED_WEIGHTS, "
            "or shipped weights); starting from RANDOM INITIALISATION (seed %d). Nothing is downloaded.",
            architecture,
            hub_cache_path(architecture).parent,
            seed,
        )
        return net, Pretrained("random-init")
    if pretrained.source == "random-init":
        log.warning("%s: RANDOM INITIALISATION asked for (seed %d)", architecture, seed)
        return net, pretrained
    load_backbone(net, Path(pretrained.path))
    log.info(
        "initialised %s from %s weights %s (%s; the 2-way head is new)",
        architecture,
        pretrained.source,
        pretrained.path,
        pretrained.found,
    )
    return net, pretrained
