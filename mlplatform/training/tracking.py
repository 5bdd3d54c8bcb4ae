"""One MLflow run per training: what every trainer logs, the same way.

A trainer hands over its params, per-step history, final validation metrics, a validation
frame and a ``log_model`` callback; :func:`log_training_run` writes the run (params, tags with
feature versions and the git commit, per-step metrics in batches, final metrics, evaluation,
SHAP and reference-profile artifacts, the model with its signature and input example) and
returns the run id and model URI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.config import PlatformConfig
from mlplatform.features.training_set import read_training_set_manifest
from mlplatform.training.config import TrainConfig


@dataclass(frozen=True)
class TrainResult:
    """Where a training run ended up."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    checkpoint_path: str | None
    params: dict[str, Any] = field(default_factory=dict)


def flat_params(params: dict[str, Any]) -> dict[str, Any]:
    """MLflow params: lists and dicts as JSON strings."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()}


def log_training_run(platform: PlatformConfig, config: TrainConfig, *, trainer: str,
                     params: dict[str, Any], history: dict[str, list[float]],
                     metrics: dict[str, float], features_path: Path,
                     log_model: Callable[[], Any], artifacts: dict[str, Any] | None = None,
                     checkpoint_path: str | None = None,
                     validation_frame: pd.DataFrame | None = None,
                     validation_scores: Any = None,
                     predict_fn: Callable[[pd.DataFrame], Any] | None = None,
                     reference_frame: pd.DataFrame | None = None,
                     explain_model: Any = None) -> TrainResult:
    """Log one finished training as an MLflow run; returns the run id and the model URI.

    Args:
        trainer: ``xgboost`` or ``torch`` (tag ``mlplatform.trainer``).
        params: Run params (model params, scaling, split boundaries ...).
        history: Metric name -> value per round/epoch (logged with its step).
        metrics: Final validation metrics.
        log_model: Called inside the run; logs the model and returns mlflow's ModelInfo.
        artifacts: Extra JSON artifacts, path -> object.
        validation_frame: Bounded validation rows (``config.feature_columns`` and
            ``config.label``): with it the run gets the evaluation artifacts, SHAP importance
            and ``eval_*`` metrics (:func:`~mlplatform.training.evaluation.log_evaluation_artifacts`).
        validation_scores: The model's predictions on ``validation_frame`` (None:
            ``predict_fn``).
        predict_fn: DataFrame of the feature columns -> predictions (needed unless
            ``validation_scores`` and ``explain_model`` cover both uses).
        reference_frame: Bounded sample of the training rows, profiled for drift monitoring.
        explain_model: An ``xgboost.Booster`` for exact TreeSHAP; None: SHAP explains
            ``predict_fn``.
    """
    import mlflow

    from mlplatform import _mlflow

    lineage = read_training_set_manifest(features_path)
    experiment_id = _mlflow.ensure_experiment(platform, config.experiment_name,
                                              lineage.get("project"))
    tags = {"features_path": str(features_path), "mlplatform.trainer": trainer,
            "mlplatform.task": config.task or "binary",
            **({"mlplatform.project": lineage["project"],
                "mlplatform.project_file": lineage.get("project_file", "")}
               if lineage.get("project") else {}),
            **{f"feature_version.{v}": ver
               for v, ver in lineage.get("feature_versions", {}).items()},
            **config.tags}
    commit = _mlflow.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(experiment_id=experiment_id, run_name=config.run_name) as run:
        mlflow.log_params(flat_params(params))
        mlflow.set_tags(tags)
        log_history(run.info.run_id, history)
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"feature_columns": config.feature_columns, "label": config.label,
                         "task": config.task, "classes": config.classes},
                        "training/features.json")
        for path, obj in (artifacts or {}).items():
            mlflow.log_dict(obj, path)
        if validation_frame is not None:
            from mlplatform.training.evaluation import log_evaluation_artifacts

            log_evaluation_artifacts(
                validation_frame, validation_frame[config.label].to_numpy(), validation_scores,
                predict_fn, config.feature_columns, trainer, model=explain_model,
                reference_frame=reference_frame, task=config.task or "binary",
                classes=config.classes)
        info = log_model()
    return TrainResult(run_id=run.info.run_id, model_uri=info.model_uri, metrics=metrics,
                       checkpoint_path=checkpoint_path, params=params)


def log_history(run_id: str, history: dict[str, list[float]]) -> None:
    """Log every step's metrics, in batches (one write per 1000 values, not one per value)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, float(value), now, step)
               for name, values in history.items() for step, value in enumerate(values)]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
