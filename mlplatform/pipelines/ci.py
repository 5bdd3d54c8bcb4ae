"""Model CI/CD for one model of a project: validate data -> features -> train -> evaluate ->
behavioural tests -> register -> alias ``challenger`` -> (optional) promote to ``champion``
through the project's gates.

Every stage records its status (``ok`` / ``failed`` / ``skipped``), wall seconds and a message
in a :class:`PipelineReport`; the first failure stops the pipeline and marks the rest skipped.
Nothing touches the registry before the data, the model and its behaviour have passed, so a
failed check leaves the registry as it was, and bad data stops before any MLflow run exists.

Re-running is safe: the inputs (this config with its train config, the raw data's fingerprint
and the feature versions) hash to a digest that tags the training run
(``mlplatform.ci.input_digest``). A re-run finds the finished run with that digest and a logged
model and reuses it; registering it again returns the existing version (no duplicate). Feature
views and the training set are reused too while their source data and definitions are unchanged.

Example:
    >>> from mlplatform.config import PlatformConfig
    >>> ci = CIConfig(project="examples/churn", model="xgboost", promote=True)  # doctest: +SKIP
    >>> report = ModelCIPipeline(PlatformConfig.load()).run(ci)               # doctest: +SKIP
    >>> report.ok, report.version                                               # doctest: +SKIP
    (True, '3')
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError, MLPlatformError
from mlplatform.pipelines.ci_config import (
    STAGES,
    CIConfig,
    CIDataSection,
    CIRegisterSection,
    PipelineReport,
    StageReport,
    _jsonable,
)
from mlplatform.project import Project
from mlplatform.training import TrainConfig

#: MLflow run tag holding the digest of a CI run's inputs (the key of idempotent re-runs).
DIGEST_TAG = "mlplatform.ci.input_digest"
#: Where the pipeline report goes on the training run.
REPORT_ARTIFACT = "ci/report.json"


class StageFailed(MLPlatformError):
    """A stage's check failed; ``details`` go into the stage report."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.details = dict(details or {})


class _Skip(Exception):
    """A stage that has nothing to do (e.g. ``promote: false``)."""


# ----------------------------------------------------------------------------- pipeline -------
@dataclass
class _State:
    """What the stages hand to each other."""

    ci: CIConfig
    name: str
    project: Project
    gates: Any = None
    store: Any = None
    raw: Path | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    train_config: TrainConfig | None = None
    features_path: Path | None = None
    feature_versions: dict[str, str] = field(default_factory=dict)
    digest: str | None = None
    result: Any = None            # TrainResult
    holdout: Any = None           # pandas DataFrame
    evaluation: dict[str, Any] | None = None
    version: Any = None           # ModelVersion


class ModelCIPipeline:
    """Run the model CI/CD stages on the connected Ray cluster against the platform's MLflow.

    Args:
        platform: Where storage, MLflow and the registry live.
        echo: Called with one line as each stage starts and ends (progress); default print.
    """

    def __init__(self, platform: PlatformConfig, echo: Callable[[str], object] = print):
        self.platform = platform
        self.echo = echo

    def run(self, config: CIConfig | str | Path) -> PipelineReport:
        """Run every stage in order, stopping at the first failure.

        Args:
            config: A :class:`CIConfig` or the path of its YAML file.

        Returns:
            The report; ``report.ok`` is False when a stage failed (see
            ``report.failed_stage.message``). A refused promotion keeps the registered
            challenger (it passed every CI check) and moves no other alias.

        Raises:
            ConfigError: The config, its gates or the model name are invalid (before any work).
        """
        from mlplatform.pipelines import steps
        from mlplatform.registry import GateConfig, check_alias, check_model_name

        ci = config if isinstance(config, CIConfig) else CIConfig.from_yaml(config)
        project = steps.load(ci.project, self.platform)
        name = ci.registration.name or steps.register_spec(project, ci.model)[0]
        try:
            check_model_name(name)
            check_alias(ci.registration.alias)
        except ValueError as exc:
            raise ConfigError(f"register: {exc}") from None
        state = _State(ci, name, project)
        # The training config and the gates fail now, not after the data and training.
        state.train_config = steps.train_config(project, ci.model, **ci.train)
        if ci.promote:
            state.gates = (GateConfig.for_project(project) if ci.gates is None else
                           GateConfig.load(ci.gates, source="gates of the CI pipeline config"))
        report = PipelineReport(name, [StageReport(s) for s in STAGES])
        t0 = time.perf_counter()
        steps = {"validate": self._validate, "features": self._features, "train": self._train,
                 "evaluate": self._evaluate, "behavioural": self._behavioural,
                 "register": self._register, "challenger": self._challenger,
                 "promote": self._promote}
        for i, stage in enumerate(report.stages, 1):
            if report.failed_stage is not None:
                stage.message = f"not run: {report.failed_stage.name} failed"
                continue
            self.echo(f"[{i}/{len(STAGES)}] {stage.name}: {STAGES[stage.name]} ...")
            self._run_stage(stage, steps[stage.name], state)
            first = stage.message.splitlines()[0] if stage.message else ""
            self.echo(f"[{i}/{len(STAGES)}] {stage.name}: {stage.status} in "
                      f"{stage.seconds:.1f}s - {first}")
            if state.result is not None:
                report.run_id, report.model_uri = state.result.run_id, state.result.model_uri
            report.input_digest = state.digest
            report.reused_run = bool(report.stage("train").details.get("reused"))
            report.version = state.version.version if state.version is not None else None
        report.seconds = time.perf_counter() - t0
        if report.failed_stage is not None:
            self.echo(f"pipeline FAILED at {report.failed_stage.name}:\n"
                      f"{report.failed_stage.message}")
        if report.run_id:
            self._log_report(report)
        return report

    def _run_stage(self, stage: StageReport, step: Callable[[_State, StageReport], str],
                   state: _State) -> None:
        t0 = time.perf_counter()
        try:
            stage.message, stage.status = step(state, stage), "ok"
        except _Skip as exc:
            stage.message, stage.status = str(exc), "skipped"
        except StageFailed as exc:
            stage.message, stage.status = str(exc), "failed"
            stage.details.update(exc.details)
        except MLPlatformError as exc:
            stage.message, stage.status = str(exc), "failed"
            stage.details["error_type"] = type(exc).__name__
        except Exception as exc:  # a report must still come back, with what went wrong
            stage.message, stage.status = f"{type(exc).__name__}: {exc}", "failed"
            stage.details.update(error_type=type(exc).__name__,
                                 traceback=traceback.format_exc(limit=8))
        stage.seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------------- stages -------
    def _validate(self, s: _State, stage: StageReport) -> str:
        from mlplatform.features import FeatureStore
        from mlplatform.features.offline import source_snapshot
        from mlplatform.features.validation import validate
        from mlplatform.pipelines import steps

        project, data = s.project, s.ci.data
        if data.raw_path is None:
            steps.ensure_data(self.platform, project, data.generate_rows or None, data.seed,
                              echo=self.echo)
        if project.uses_feature_store:
            repo = project.feature_repo
            if data.raw_path is not None:
                raw = str(data.raw_path.expanduser().resolve())
                repo = repo.model_copy(update={"sources": [
                    src.model_copy(update={"path": raw}) if src.name == project.data.events
                    else src for src in repo.sources]})
            s.store = FeatureStore(self.platform, repo=repo)
            s.store.project = project
            contract = s.store.contract_path(project.data.events)
            s.raw = s.store.source_path(project.data.events)
            where = f"the project's `{project.data.events}` source"
        else:
            from mlplatform.features.training_set import table_path

            contract = project.path(project.data.contract) if project.data.contract else None
            s.raw = (data.raw_path.expanduser().resolve() if data.raw_path is not None
                     else table_path(self.platform, project))
            where = "the project's data.table"
        if contract is None:
            raise StageFailed(f"{where} declares no data contract; add `contract: <file>` to "
                              "it (in the project file) so CI can check the data")
        s.snapshot = source_snapshot(s.raw)
        result = validate(s.raw, contract)
        stage.details["validation"] = result.to_dict()
        if not result.passed:
            raise StageFailed(f"data {s.raw} breaks its contract ({contract}):\n"
                              f"{result.summary()}\nFix the data, or the contract if the data "
                              "is right. Nothing was trained or registered.")
        return f"{s.raw}: {result.summary()}"

    def _features(self, s: _State, stage: StageReport) -> str:
        from mlplatform.features.training_set import (
            TRAINING_SET_MANIFEST,
            build_training_set,
            read_training_set_manifest,
        )
        from mlplatform.training.data import training_data

        views = [v.name for v in s.store.repo.feature_views] if s.store is not None else []
        stale = [v for v in views if not self._view_is_current(s, v)]
        if stale:
            s.store.build(stale, validate=False)      # validated by the previous stage
        if s.store is not None:
            s.store.materialize_incremental()
        cfg = s.train_config
        if cfg.feature_views is not None:
            if cfg.feature_views.events is None:
                cfg = cfg.model_copy(update={"feature_views": cfg.feature_views.model_copy(
                    update={"events": s.raw})})
            path = training_data(cfg, self.platform, s.project)
            how = "joined from feature_views"
        else:
            versions = s.store.feature_versions() if s.store is not None else {}
            key = _digest({"project": s.project.name, "versions": versions,
                           "raw": s.snapshot["fingerprint"]})[:12]
            path = self.platform.path("training_sets", f"ci-{key}")
            how = "reused"
            if not (path / TRAINING_SET_MANIFEST).is_file():
                build_training_set(s.project, s.store, config=self.platform, out=path,
                                   events=None if s.store is not None else str(s.raw))
                how = "built"
        s.features_path = path
        s.feature_versions = read_training_set_manifest(path).get("feature_versions", {})
        s.train_config = cfg.model_copy(update={"features_path": path, "feature_views": None})
        s.digest = _digest({"project": s.project.model_dump(mode="json"),
                            "model": s.ci.model, "data": s.ci.data.model_dump(mode="json"),
                            "train": cfg.model_dump(mode="json"),
                            "raw": s.snapshot["fingerprint"],
                            "feature_versions": s.feature_versions})
        stage.details.update(built=stale, reused=[v for v in views if v not in stale],
                             training_set=str(path), feature_versions=s.feature_versions,
                             input_digest=s.digest)
        return (f"views built: {stale or 'none'}, reused: "
                f"{[v for v in views if v not in stale] or 'none'}; training set {how} at "
                f"{path}; input digest {s.digest[:12]}")

    def _train(self, s: _State, stage: StageReport) -> str:
        from mlplatform.cluster.cost import record_cost
        from mlplatform.cluster.job_usage import TrainingMeter
        from mlplatform.training import train

        experiment = (s.train_config.experiment_name or self.platform.experiment_name
                      or s.project.name)
        s.result = self._find_run(experiment, s.digest)
        stage.details["reused"] = s.result is not None
        metrics = ""
        if s.result is not None:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(s.result.metrics.items()))
            stage.details.update(run_id=s.result.run_id, metrics=s.result.metrics)
            return (f"reused run {s.result.run_id} (same input digest {s.digest[:12]}, finished, "
                    f"model logged): not trained again; {metrics}")
        cfg = s.train_config.model_copy(update={"tags": {**s.train_config.tags,
                                                         DIGEST_TAG: s.digest}})
        sc = cfg.scaling
        # GPU type from the nodes the Train workers ran on, as in jobs/train.py
        with TrainingMeter(sc.resources_per_worker, sc.num_workers, sc.use_gpu) as meter:
            s.result = train(cfg, self.platform)
        record_cost(self.platform, s.result.run_id, meter.usage(),
                    job="ci_pipeline", model=s.name, echo=self.echo)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(s.result.metrics.items()))
        stage.details.update(run_id=s.result.run_id, metrics=s.result.metrics)
        return f"trained {cfg.model} as run {s.result.run_id}: {metrics}"

    def _evaluate(self, s: _State, stage: StageReport) -> str:
        from mlplatform import _mlflow
        from mlplatform.training.data import holdout_rows
        from mlplatform.training.evaluation import evaluate

        client = _mlflow.client(self.platform)
        params = dict(client.get_run(s.result.run_id).data.params)
        try:
            s.holdout = holdout_rows(s.features_path, params)
        except MLPlatformError as exc:
            raise StageFailed(f"run {s.result.run_id}: {exc}") from None
        if s.holdout.empty:
            raise StageFailed(f"no holdout rows in {s.features_path} ({params.get('split')} "
                              "split)")
        s.evaluation = evaluate(s.result.model_uri, s.holdout, platform=self.platform,
                                project=s.project)
        client.log_dict(s.result.run_id, _jsonable(s.evaluation), "ci/evaluation.json")
        o = s.evaluation["overall"]
        shown = {"binary": ("auc_pr", "auc_roc", "log_loss", "precision", "recall", "f1",
                            "threshold"),
                 "multiclass": ("accuracy", "log_loss", "macro_f1"),
                 "regression": ("rmse", "mae", "r2")}[s.evaluation["task"]]
        stage.details.update(rows=s.evaluation["rows"],
                             split={k: params.get(k) for k in ("split", "split_cutoff",
                                                               "split_u_cutoff")},
                             overall={k: o[k] for k in shown if k in o})
        figures = ", ".join(f"{k} {o[k]:.4f}" for k in shown if o.get(k) is not None)
        return f"{s.evaluation['rows']:,} holdout rows ({params.get('split')} split): {figures}"

    def _behavioural(self, s: _State, stage: StageReport) -> str:
        checks = s.evaluation["checks"]
        stage.details["checks"] = checks
        failed = {k: c for k, c in checks.items() if not c["passed"]}
        if not s.evaluation["passed"]:
            raise StageFailed("behavioural checks failed: " + "; ".join(
                f"{k} ({_numbers(c)})" for k, c in failed.items())
                + ". Nothing was registered.")
        return "passed: " + "; ".join(f"{k} ({_numbers(c)})" for k, c in checks.items())

    def _register(self, s: _State, stage: StageReport) -> str:
        from mlplatform.registry import ModelRegistry

        reg = ModelRegistry(self.platform)
        before = reg.find_version_for_run(s.name, s.result.run_id)
        o = s.evaluation["overall"]
        tags = {DIGEST_TAG: s.digest, "ci.holdout_rows": s.evaluation["rows"],
                **{f"ci.holdout.{k}": f"{o[k]:.6f}" for k in ("auc_pr", "auc_roc", "recall",
                                                               "accuracy", "log_loss", "rmse",
                                                               "mae") if o.get(k) is not None},
                **{f"metric.{k}": f"{v:.6f}" for k, v in s.result.metrics.items()},
                **{f"feature_version.{k}": v for k, v in s.feature_versions.items()}}
        desc = s.ci.registration.description or (
            f"trained by the model CI pipeline (MLflow run {s.result.run_id}, input digest "
            f"{s.digest[:12]})")
        s.version = reg.register(s.result.model_uri, s.name, description=desc, tags=tags,
                                 actor=s.ci.actor, reason=s.ci.reason or "model CI pipeline")
        stage.details.update(version=s.version.version, existing=before is not None)
        if before is not None:
            return (f"{s.name} v{s.version.version} already holds run {s.result.run_id}: "
                    "reused, no duplicate version")
        return f"registered {s.name} v{s.version.version} from run {s.result.run_id}"

    def _challenger(self, s: _State, stage: StageReport) -> str:
        from mlplatform.registry import ModelRegistry

        reg, alias = ModelRegistry(self.platform), s.ci.registration.alias
        before = reg.alias_holder(s.name, alias)
        stage.details.update(alias=alias, from_version=before, to_version=s.version.version)
        if before == s.version.version:
            return f"@{alias} already points at v{before}"
        reg.set_alias(s.name, alias, s.version.version, actor=s.ci.actor,
                      reason=s.ci.reason or "model CI pipeline")
        return f"@{alias}: v{before or '-'} -> v{s.version.version}"

    def _promote(self, s: _State, stage: StageReport) -> str:
        from mlplatform.registry import ModelRegistry, PromotionRefused

        if not s.ci.promote:
            raise _Skip("promote: false (promote later with `mlp registry promote`)")
        try:
            decision = ModelRegistry(self.platform).promote(
                s.name, s.version.version, to="champion", gates=s.gates, holdout=s.holdout,
                actor=s.ci.actor, reason=s.ci.reason or "model CI pipeline",
                project=s.project)
        except PromotionRefused as exc:
            d = exc.decision
            raise StageFailed(
                f"{exc}\n@champion stays at v{d.from_version or '-'}; v{d.version} stays "
                f"registered as @{s.ci.registration.alias}.",
                {"gates": [asdict(g) for g in d.gates], "from_version": d.from_version}) from None
        stage.details.update(gates=[asdict(g) for g in decision.gates],
                             from_version=decision.from_version)
        return decision.summary()

    # ------------------------------------------------------------------------ helpers -------
    @staticmethod
    def _view_is_current(s: _State, view: str) -> bool:
        """The view's current offline version is a full build of this source snapshot with
        this definition (then building again would only write the same rows)."""
        from mlplatform.features.offline import FeatureStoreError

        try:
            m = s.store.offline.manifest(view).data
        except FeatureStoreError:
            return False
        src = m.get("source") or {}
        return (m.get("definition_hash") == s.store.repo.definition_hash(view)
                and src.get("path") == s.snapshot["path"]
                and src.get("fingerprint") == s.snapshot["fingerprint"]
                and not any((m.get("range") or {}).values()))

    def _find_run(self, experiment: str, digest: str):
        """The newest FINISHED run tagged with ``digest`` that has a READY logged model."""
        from mlplatform import _mlflow
        from mlplatform.training import TrainResult

        client = _mlflow.client(self.platform)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id],
                                  f"tags.`{DIGEST_TAG}` = '{digest}' and "
                                  "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=20)
        for run in runs:
            models = client.search_logged_models(
                [exp.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
            ready = [m for m in models if str(m.status).upper().endswith("READY")]
            if ready:
                metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("val_")}
                return TrainResult(run.info.run_id, f"models:/{ready[0].model_id}", metrics,
                                   None, dict(run.data.params))
        return None

    def _log_report(self, report: PipelineReport) -> None:
        from mlplatform import _mlflow

        try:
            _mlflow.client(self.platform).log_dict(report.run_id, report.to_dict(),
                                                   REPORT_ARTIFACT)
        except Exception as exc:   # the report is returned either way
            self.echo(f"warning: could not log {REPORT_ARTIFACT} to run {report.run_id}: {exc}")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _numbers(check: Mapping[str, Any]) -> str:
    """The scalar numbers of a behavioural check, e.g. ``rows=812, lowered=3, ...``."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in check.items()
                     if k != "passed" and isinstance(v, (int, float)) and not isinstance(v, bool))


__all__ = ["DIGEST_TAG", "REPORT_ARTIFACT", "STAGES", "CIConfig", "CIDataSection",
           "CIRegisterSection", "ModelCIPipeline", "PipelineReport", "StageFailed", "StageReport"]
