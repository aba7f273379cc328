"""Settings of the ``cad model`` commands that are not the trainer's."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    """Read once per command. No default store: a command records its registry change in the
    audit trail only where a store is named, instead of creating one at a default path."""

    model_config = SettingsConfigDict(env_prefix="CAD_", extra="ignore")

    store_url: str | None = Field(
        None,
        description="cad model commands: the label store where pins live (as servers read them) and "
        "whose audit trail records each change.",
    )
