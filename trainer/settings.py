"""Trainer settings: ``CAD_*`` environment variables, read once in the command's ``main``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    """Settings of ``cad model ...`` and ``cad train ...``."""

    model_config = SettingsConfigDict(env_prefix="CAD_", extra="ignore")

    registry_root: Path = Field(Path("registry"), description="Model registry root folder.")
    model_name: str = Field("cad", description="Model name, a folder under the registry.")
    pretrained_weights: Path | None = Field(
        None,
        description=(
            "torchvision AlexNet ImageNet weights (.pth). Unset: the torch hub cache is looked "
            "at; nothing is ever downloaded."
        ),
    )
    input_size: int = Field(224, ge=32, description="Square patch size the network takes.")
    recipe: str = Field("polyp", description="Default patch recipe recorded in the manifest.")
    seed: int = Field(0, description="Seed for random initialisation and training.")
    parity_tolerance: float = Field(
        1e-4, gt=0, description="Max |p_onnx - p_torch| accepted when exporting."
    )
