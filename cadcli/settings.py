"""Settings of the ``cad model`` commands that are not the trainer's, and the trainer's own
as a ``cad train`` or ``cad model`` command reads them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cad.settings import from_flags

if TYPE_CHECKING:  # the trainer is imported where used: `cad serve` never imports torch
    from trainer.settings import TrainerSettings


class CliSettings(BaseSettings):
    """Read once per command. No default store: a command records its registry change in the
    audit trail only where a store is named, instead of creating one at a default path."""

    model_config = SettingsConfigDict(env_prefix="CAD_", extra="ignore")

    store_url: str | None = Field(
        None,
        description="cad model commands: the label store where pins live (as servers read them) and "
        "whose audit trail records each change.",
    )


def trainer_settings(args: argparse.Namespace, **extra: object) -> TrainerSettings:
    """The trainer's settings from its environment, with the command's flags on top (a flag
    given wins)."""
    from trainer.settings import TrainerSettings

    flags = {
        name: name
        for name in (
            "store_url",
            "archive_root",
            "preset",
            "depth",
            "seed",
            "val_fraction",
            "start_version",
            "auc_tolerance",
            "min_new_labels",
            "watch_poll_s",
            "hq",
            "allow_unvalidated",
        )
    }
    flags.update(
        registry="registry_root", metrics_port="watch_metrics_port", batch_size="train_batch_size"
    )
    return from_flags(TrainerSettings, args, flags, **extra)
