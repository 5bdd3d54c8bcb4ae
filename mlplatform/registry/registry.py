"""The MLflow model registry, through aliases (``champion``, ``challenger``, ...) and tags.

Stages are deprecated since MLflow 2.9 and are never used. Serving and rollout resolve models
only through this module. Issue #5 adds promotion gates, rollback, history and the audit trail.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig
from mlplatform.errors import ModelNotFound

_REF = re.compile(r"^(?P<name>[^@/:]+)(?:@(?P<alias>[A-Za-z_][\w-]*)|/(?P<version>\d+))?$")


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


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """Split ``"fraud@champion"`` / ``"fraud/3"`` / ``"fraud"`` into (name, alias, version).

    A bare name means alias ``champion``.

    Raises:
        ValueError: The reference is not of one of those forms.
    """
    m = _REF.match(ref.strip()) if isinstance(ref, str) else None
    if not m:
        raise ValueError(f"invalid model reference {ref!r}: use 'name@alias' (e.g. fraud@champion) "
                         "or 'name/version' (e.g. fraud/3)")
    alias, version = m["alias"], m["version"]
    if alias is None and version is None:
        alias = "champion"
    return m["name"], alias, version


class ModelRegistry:
    """Register, alias and resolve models in the MLflow registry of a ``PlatformConfig``.

    Example:
        >>> reg = ModelRegistry(PlatformConfig.load())            # doctest: +SKIP
        >>> mv = reg.register(result.model_uri, "fraud", alias="champion")  # doctest: +SKIP
        >>> reg.resolve("fraud@champion").version                  # doctest: +SKIP
        '1'
    """

    def __init__(self, config: PlatformConfig | None = None):
        from mlplatform import _mlflow

        self.config = config or PlatformConfig.load()
        self._client = _mlflow.client(self.config)

    def register(
        self,
        model_uri: str,
        name: str,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
        alias: str | None = None,
    ) -> ModelVersion:
        """Register a logged model (``models:/m-...`` or ``runs:/<id>/model``) as a new version.

        Args:
            model_uri: URI of the logged model.
            name: Registered model name (created if new).
            description: Version description.
            tags: Version tags (values are stringified).
            alias: If given, point this alias at the new version.

        Returns:
            The new version.
        """
        import mlflow

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
        if description:
            self._client.update_model_version(name, mv.version, description=description)
        if alias:
            self.set_alias(name, alias, mv.version)
        return self.resolve(f"{name}/{mv.version}")

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` of model ``name`` at ``version`` (moving it if it points elsewhere)."""
        self.resolve(f"{name}/{version}")  # raises ModelNotFound with a clear message
        self._client.set_registered_model_alias(name, alias, str(version))

    def resolve(self, ref: str) -> ModelVersion:
        """Look up ``name@alias`` or ``name/version``.

        Raises:
            ModelNotFound: The model, alias or version does not exist; the message lists what does.
        """
        from mlflow.exceptions import MlflowException

        name, alias, version = parse_model_ref(ref)
        try:
            if alias is not None:
                mv = self._client.get_model_version_by_alias(name, alias)
            else:
                mv = self._client.get_model_version(name, version)
        except MlflowException:
            raise ModelNotFound(self._not_found_message(name, alias, version)) from None
        return _to_version(mv)

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, newest first."""
        found = self._client.search_model_versions(f"name = '{name}'")
        if not found:
            return []
        # Search results carry no aliases; the registered model has them all (alias -> version).
        by_version: dict[str, list[str]] = {}
        for alias, version in (self._client.get_registered_model(name).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        versions = (_to_version(mv, by_version.get(str(mv.version), ())) for mv in found)
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    def download(self, ref: str, dst: str | Path) -> tuple[ModelVersion, Path]:
        """Download the artifacts of ``ref`` into ``dst``; return the version and the folder."""
        import mlflow

        mv = self.resolve(ref)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=mv.uri, dst_path=str(dst), tracking_uri=self.config.mlflow_tracking_uri)
        return mv, Path(path)

    def _not_found_message(self, name: str, alias: str | None, version: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            rm = self._client.get_registered_model(name)
        except MlflowException:
            models = [m.name for m in self._client.search_registered_models(max_results=20)]
            return (f"registered model '{name}' does not exist in {self.config.mlflow_registry_uri}; "
                    f"existing models: {models or 'none'}. Train and register one first "
                    "(e.g. `mlp demo`).")
        if alias is not None:
            return (f"model '{name}' has no alias '{alias}'; its aliases are "
                    f"{sorted(rm.aliases) if rm.aliases else 'none'}.")
        versions = sorted(int(v.version) for v in self._client.search_model_versions(f"name = '{name}'"))
        return f"model '{name}' has no version {version}; versions: {versions}."


def _to_version(mv, aliases=None) -> ModelVersion:
    """An MLflow ``ModelVersion`` entity as the platform's frozen ``ModelVersion``."""
    return ModelVersion(name=mv.name, version=str(mv.version), source=mv.source, run_id=mv.run_id,
                        aliases=tuple(sorted(aliases if aliases is not None else (mv.aliases or ()))),
                        tags=dict(mv.tags or {}))
