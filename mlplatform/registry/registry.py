"""The MLflow model registry, through aliases (``champion``, ``challenger``, ...) and tags.

Stages are deprecated since MLflow 2.9 and are never used. Serving and rollout resolve models
only through this module. Every action appends an event to the hash-chained audit log
(:mod:`mlplatform.registry.audit`) and mirrors it to MLflow tags; promotion through gates,
rollback and alias history live in :mod:`mlplatform.registry.promotion`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig
from mlplatform.errors import ModelNotFound
from mlplatform.models.version import ModelVersion

_REF = re.compile(r"^(?P<name>[^@/:]+)(?:@(?P<alias>[A-Za-z_][\w-]*)|/(?P<version>\d+))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_URI = re.compile(r"^(runs:/[0-9a-f]{32}/|models:/)[A-Za-z0-9_.@/-]+$")


def check_model_name(name: str) -> str:
    """A registered model name that is safe in paths and URIs: letters, digits, ``_.-``, not
    starting with a dot, no ``..``. Returns it.

    Raises:
        ValueError: Naming the name and the rule.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' "
                         "(up to 128, starting with a letter or digit, no '..'); paths, URL "
                         "fragments and queries are not names")
    return name


def check_alias(alias: str) -> str:
    """An alias name MLflow accepts and that cannot be confused with a version."""
    if not isinstance(alias, str) or not _ALIAS.match(alias) or alias.lower() == "latest" \
            or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"invalid alias {alias!r}: letters, digits, '_' and '-', starting with a "
                         "letter or '_'; 'latest' and 'v<number>' are reserved by MLflow")
    return alias


def check_model_uri(uri: str) -> str:
    """A model URI the registry registers: ``runs:/<run_id>/<path>`` or ``models:/...``, with no
    ``..`` segment, absolute path, URL fragment, query or escape. Returns it.

    Raises:
        ValueError: Naming the URI and the accepted forms.
    """
    bad = not isinstance(uri, str) or not _URI.match(uri) or any(
        part in ("..", ".") for part in uri.split("/"))
    if bad:
        raise ValueError(f"invalid model URI {uri!r}: use runs:/<run_id>/<artifact path> or "
                         "models:/<name>/<version> | models:/m-<id>, without '..', absolute "
                         "paths, '#', '?' or '%'")
    return uri


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """Split ``"churn@champion"`` / ``"churn/3"`` / ``"churn"`` into (name, alias, version).

    A bare name means alias ``champion``.

    Raises:
        ValueError: The reference is not of one of those forms.
    """
    m = _REF.match(ref.strip()) if isinstance(ref, str) else None
    if not m:
        raise ValueError(f"invalid model reference {ref!r}: use 'name@alias' (e.g. churn@champion) "
                         "or 'name/version' (e.g. churn/3)")
    check_model_name(m["name"])
    alias, version = m["alias"], m["version"]
    if alias is None and version is None:
        alias = "champion"
    return m["name"], alias, version


class ModelRegistry:
    """Register, alias and resolve models in the MLflow registry of a ``PlatformConfig``.

    Example:
        >>> reg = ModelRegistry(PlatformConfig.load())            # doctest: +SKIP
        >>> mv = reg.register(result.model_uri, "churn", alias="champion")  # doctest: +SKIP
        >>> reg.resolve("churn@champion").version                  # doctest: +SKIP
        '1'
    """

    def __init__(self, config: PlatformConfig | None = None):
        from mlplatform import _mlflow
        from mlplatform.registry.audit import AuditLog

        self.config = config or PlatformConfig.load()
        self._client = _mlflow.client(self.config)
        self.audit = AuditLog(self.config)

    # ------------------------------------------------------------------ register / alias ----
    def register(
        self,
        model_uri: str,
        name: str,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
        alias: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ModelVersion:
        """Register a logged model as a new version, or return the version it already has.

        The version is tagged with what its training run recorded: ``metric.*`` (final
        metrics), ``feature_version.*``, ``features_path``, ``git_commit`` and
        ``signature.inputs``. Registering the same run again returns its existing version
        (idempotent: re-submitted pipelines make no duplicates).

        Args:
            model_uri: ``runs:/<run_id>/model``, ``models:/m-<id>``, or a bare run id.
            name: Registered model name (created if new).
            description: Version description.
            tags: Extra version tags (values are stringified).
            alias: If given, point this alias at the version.
            actor, reason: For the audit trail (default actor: ``$MLP_ACTOR`` or user@host).

        Raises:
            ValueError: The name or URI is unsafe or malformed.
            ModelRefused: The model is a pickle or of a format the platform does not load
                (nothing is registered; the message says how to convert it to ONNX).
        """
        import mlflow

        check_model_name(name)
        if alias is not None:
            check_alias(alias)
        if isinstance(model_uri, str) and _RUN_ID.match(model_uri):
            model_uri = f"runs:/{model_uri}/model"
        check_model_uri(model_uri)
        self._check_loadable(model_uri)
        run_id = self._run_of(model_uri)
        existing = self.find_version_for_run(name, run_id) if run_id else None
        if existing is not None:
            self._record("register", name, existing.version, actor=actor, reason=reason,
                         outcome="exists", details={"model_uri": model_uri})
            if alias and alias not in existing.aliases:
                self.set_alias(name, alias, existing.version, actor=actor, reason=reason)
            return self.resolve(f"{name}/{existing.version}")
        all_tags = {**self._lineage_tags(run_id, model_uri), **{k: str(v) for k, v in
                                                                 (tags or {}).items()}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mv = mlflow.register_model(model_uri, name, tags=all_tags)
        if description:
            self._client.update_model_version(name, mv.version, description=description)
        self._record("register", name, mv.version, actor=actor, reason=reason,
                     details={"model_uri": model_uri, "run_id": run_id})
        if alias:
            self.set_alias(name, alias, mv.version, actor=actor, reason=reason)
        return self.resolve(f"{name}/{mv.version}")

    def _check_loadable(self, model_uri: str) -> None:
        """Refuse a model serving would refuse (a pickle, an unknown format), before registering.

        Raises:
            ModelRefused: See :func:`mlplatform.models.check_flavors`.
            ModelNotFound: The URI holds no MLmodel.
        """
        import mlflow
        from mlflow.exceptions import MlflowException

        from mlplatform.models import check_flavors

        try:
            info = mlflow.models.get_model_info(model_uri)
        except (MlflowException, OSError) as exc:
            raise ModelNotFound(f"{model_uri} holds no MLflow model: {exc}") from None
        check_flavors({"flavors": info.flavors}, model_uri)

    def find_version_for_run(self, name: str, run_id: str) -> ModelVersion | None:
        """The (oldest) version of ``name`` registered from ``run_id``, if any."""
        check_model_name(name)
        if not _RUN_ID.match(run_id or ""):
            raise ValueError(f"invalid run id {run_id!r}")
        found = [v for v in self.list_versions(name) if v.run_id == run_id]
        return min(found, key=lambda v: int(v.version)) if found else None

    def set_alias(self, name: str, alias: str, version: str | int, actor: str | None = None,
                  reason: str | None = None) -> None:
        """Point ``alias`` of model ``name`` at ``version`` (moving it if it points elsewhere),
        without gates; recorded in the alias history and the audit trail. Use :meth:`promote`
        to move ``champion`` through the gates."""
        check_alias(alias)
        self.resolve(f"{name}/{version}")  # raises ModelNotFound with a clear message
        with self.audit.locked():
            before = self.alias_holder(name, alias)
            self._client.set_registered_model_alias(name, alias, str(version))
            self._record("alias_set", name, version, alias=alias, actor=actor, reason=reason,
                         details={"from_version": before, "to_version": str(version)},
                         locked=True)

    def alias_holder(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at now, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    # ------------------------------------------------------------ promotion and history ----
    def promote(self, name: str, version: str | int, to: str = "champion", gates: Any = None,
                holdout: Any = None, actor: str | None = None, reason: str | None = None,
                project: Any = None):
        """Move ``to`` to ``version`` only if every gate passes (see
        :func:`mlplatform.registry.promotion.promote`)."""
        from mlplatform.registry.promotion import promote

        return promote(self, name, str(version), to, gates, holdout, actor, reason, project)

    def rollback(self, name: str, alias: str = "champion", to_version: str | int | None = None,
                 actor: str | None = None, reason: str | None = None):
        """Move ``alias`` back to its previous holder, or to ``to_version``."""
        from mlplatform.registry.promotion import rollback

        return rollback(self, name, alias, to_version, actor, reason)

    def history(self, name: str, alias: str | None = None):
        """Every alias move (and refused promotion) of ``name``, oldest first."""
        from mlplatform.registry.promotion import history

        return history(self, name, alias)

    def approve(self, name: str, version: str | int, approver: str, note: str | None = None
                ) -> dict[str, Any]:
        """Record ``approver``'s approval of ``version`` (counted by the approvals gate)."""
        self.resolve(f"{name}/{version}")
        if not approver or not approver.strip():
            raise ValueError("approver must name a person (e.g. --approver alice)")
        event = self._record("approve", name, version, reason=note,
                             details={"approver": approver.strip()})
        self._client.set_model_version_tag(name, str(version), f"approval.{approver.strip()}",
                                           f"{event['time']} {note or ''}".strip()[:5000])
        return event

    def approvals(self, name: str, version: str | int) -> list[str]:
        """Distinct approvers of ``version`` from the audit trail."""
        return sorted({e["details"]["approver"] for e in
                       self.audit.events(model=name, action="approve", version=str(version))})

    def record_deploy(self, name: str, version: str | int, target: str,
                      actor: str | None = None) -> None:
        """Audit that ``target`` (e.g. a Serve deployment) started serving ``version``."""
        self._record("deploy", name, version, actor=actor, details={"target": target})

    # ----------------------------------------------------------------------- internals ----
    def _record(self, action: str, name: str, version: str | int | None, *, alias=None,
                actor=None, reason=None, outcome="ok", details=None, locked=False):
        """Append an audit event, then mirror it to MLflow tags (version: ``audit.<seq>``;
        model: ``audit.last``)."""
        event = self.audit.append(action, model=name, version=version, alias=alias, actor=actor,
                                  reason=reason, outcome=outcome, details=details,
                                  _locked=locked)
        summary = (f"{event['time']} {action}{'@' + alias if alias else ''} {outcome} by "
                   f"{event['actor']}{': ' + reason if reason else ''}")[:5000]
        try:
            if version is not None:
                self._client.set_model_version_tag(name, str(version),
                                                   f"audit.{event['seq']:06d}", summary)
            self._client.set_registered_model_tag(name, "audit.last", f"#{event['seq']} {summary}")
        except Exception as exc:   # the log is the record; a tag mirror failure must not hide it
            warnings.warn(f"audit event #{event['seq']} was logged but not mirrored to MLflow "
                          f"tags: {exc}", stacklevel=2)
        return event

    def _run_of(self, model_uri: str) -> str | None:
        if model_uri.startswith("runs:/"):
            return model_uri.split("/")[1]
        if model_uri.startswith("models:/m-"):
            import mlflow

            return mlflow.get_logged_model(model_uri.split("/")[1]).source_run_id
        return None

    def _lineage_tags(self, run_id: str | None, model_uri: str) -> dict[str, str]:
        """Version tags from the training run: metrics, feature versions, commit, signature."""
        if not run_id:
            return {}
        import json

        import mlflow

        run = self._client.get_run(run_id)
        tags = {f"metric.{k}": f"{v:.6f}" for k, v in run.data.metrics.items()
                if k.startswith(("val_", "eval_"))}
        tags.update({k: v for k, v in run.data.tags.items()
                     if k.startswith("feature_version.") or k == "features_path"})
        commit = run.data.tags.get("mlflow.source.git.commit")
        if commit:
            tags["git_commit"] = commit
        tags["run_id"] = run_id
        from mlplatform import _mlflow

        threshold = _mlflow.run_threshold(self.config, run_id)
        if threshold is not None:
            # Serving's decision threshold: the one the training run chose on validation rows.
            tags["decision_threshold"] = f"{threshold:.6f}"
        try:
            sig = mlflow.models.get_model_info(model_uri).signature
            if sig is not None:
                tags["signature.inputs"] = json.dumps(sig.inputs.input_names())[:5000]
        except Exception:   # no MLmodel / signature: the signature gate reports it
            pass
        return tags

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
        check_model_name(name)
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
