"""A model version as the platform sees it (registered, or a logged model addressed by URI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version, as the platform sees it."""

    name: str
    version: str
    source: str
    run_id: str | None
    aliases: tuple[str, ...]
    tags: Mapping[str, str]

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: pins this exact version."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class UriVersion(ModelVersion):
    """A model addressed by its URI rather than as a registered version."""

    @property
    def uri(self) -> str:
        return self.source
