"""The base of every configuration section, for the service and for training alike."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    """A misspelt key is an error naming it, never a silently kept default."""

    model_config = ConfigDict(extra="forbid")
