"""Model evaluation: the artifacts every training run logs, and ``evaluate`` for any model URI.

:func:`log_evaluation_artifacts` runs inside a trainer's MLflow run: the evaluation report on
the validation rows with its figures (binary: PR curve, confusion matrix at the chosen
threshold, calibration; multiclass: confusion matrix and per-class precision/recall/F1;
regression: predicted vs actual and residuals), as PNG and JSON under ``evaluation/``; global
SHAP importance (``explain/``) and the reference profile of the training features
(``profile/reference_profile.json``, read by drift monitoring).

:func:`evaluate` scores a dataset with a model loaded from MLflow without pickle, on Ray Data
for Parquet paths and Datasets, and returns overall metrics, metrics per slice (the project's
``evaluation.slices``), and the project's behavioural checks
(:mod:`mlplatform.training.behaviour`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import _mlflow
from mlplatform.errors import DataValidationError
from mlplatform.training import behaviour, plots
from mlplatform.training.metrics import evaluation_report
from mlplatform.training.metrics_tasks import multiclass_report, regression_report

__all__ = ["bounded_sample", "evaluate", "evaluation_report", "log_evaluation_artifacts",
           "task_report"]

#: Validation rows a trainer hands to :func:`log_evaluation_artifacts` (all are scored).
EVAL_ROWS = 50_000
#: Training rows sampled for the reference profile.
PROFILE_ROWS = 100_000
#: Scalars of a report written to ``evaluation/metrics.json`` and logged as ``eval_<name>``.
SCALARS = {
    "binary": ("auc_pr", "auc_roc", "log_loss", "brier", "threshold", "precision", "recall",
               "f1", "flagged_share", "base_rate"),
    "multiclass": ("accuracy", "log_loss", "brier", "macro_f1", "weighted_f1"),
    "regression": ("rmse", "mae", "r2", "mape", "median_absolute_error", "mean_error"),
}
#: Figures of a slice.
_SLICE_KEYS = {
    "binary": ("rows", "positives", "base_rate", "auc_pr", "auc_roc", "log_loss", "brier",
               "precision", "recall", "f1", "flagged_share"),
    "multiclass": ("rows", "accuracy", "log_loss", "macro_f1"),
    "regression": ("rows", "rmse", "mae", "r2", "mean_error"),
}
_BATCH_ROWS = 65_536


def bounded_sample(ds, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """At most ``max_rows`` rows of a Ray Dataset as pandas: all of them when it is that small,
    else a seeded uniform sample (not the first rows, which may all come from one period)."""
    n = ds.count()
    if n > max_rows:
        ds = ds.random_sample(min(1.0, 1.05 * max_rows / n), seed=seed)
    return ds.limit(max_rows).to_pandas()


def task_report(task: str, y_true, predictions, threshold: float | None = None,
                classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """The evaluation report of ``task``: :func:`evaluation_report` (binary, with the decision
    threshold), :func:`multiclass_report` or :func:`regression_report`."""
    if task == "multiclass":
        return multiclass_report(y_true, predictions, list(classes or []))
    if task == "regression":
        return regression_report(y_true, predictions)
    return evaluation_report(y_true, predictions, threshold)


def log_evaluation_artifacts(frame: pd.DataFrame, y_true, scores,
                             predict_fn: Callable[[pd.DataFrame], Any] | None,
                             feature_columns: list[str], model_kind: str, *, model: Any = None,
                             reference_frame: pd.DataFrame | None = None,
                             threshold: float | None = None, task: str = "binary",
                             classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """Log evaluation, explanation and reference-profile artifacts to the active MLflow run.

    Args:
        frame: Validation rows (bounded: every row is scored and plotted) with the features.
        y_true: Their labels (0/1, class indices, or values).
        scores: The model's predictions on them (None: computed with ``predict_fn``).
        predict_fn: DataFrame of ``feature_columns`` -> predictions; SHAP explains it when
            ``model`` is not an XGBoost booster.
        feature_columns: The model's inputs, in order.
        model_kind: ``xgboost`` or ``torch`` (recorded with the importance).
        model: The ``xgboost.Booster`` for exact TreeSHAP (optional).
        reference_frame: A bounded sample of the training rows to profile (None: no profile).
        threshold: Binary decision threshold (default: maximal F1 on ``frame``).
        task: ``binary``, ``multiclass`` or ``regression``.
        classes: Multiclass: the class values in index order.

    Returns:
        The evaluation report plus ``importance``.

    Raises:
        ValueError: No ``predict_fn`` where one is needed.
    """
    import mlflow

    tree = model_kind == "xgboost" and model is not None
    if predict_fn is None and (scores is None or not tree):
        raise ValueError("log_evaluation_artifacts needs predict_fn (to score the rows and/or "
                         "explain them) unless both the scores and an XGBoost booster are given")
    if scores is None:
        scores = predict_fn(frame[feature_columns])
    report = task_report(task, y_true, scores, threshold, classes)
    scalars = {k: report.get(k) for k in SCALARS[task]}
    summary = {**scalars, "task": task, "rows": report["rows"]}
    if task == "binary":
        summary.update(positives=report["positives"], threshold_source=report["threshold_source"],
                       confusion_matrix=report["confusion_matrix"])
    elif task == "multiclass":
        summary.update(classes=list(classes or []), confusion_matrix=report["confusion_matrix"],
                       per_class=report["per_class"])
    mlflow.log_dict(summary, "evaluation/metrics.json")
    mlflow.log_metrics({f"eval_{k}": float(v) for k, v in scalars.items() if v is not None})
    for name, (data, fig) in _figures(task, report).items():
        mlflow.log_dict(data, f"evaluation/{name}.json")
        mlflow.log_figure(fig, f"evaluation/{name}.png")
    from mlplatform.training.explain import shap_importance

    importance = {"model_kind": model_kind, **shap_importance(
        frame, feature_columns, model=model if tree else None, predict_fn=predict_fn,
        task=task)}
    mlflow.log_dict(importance, "explain/shap_importance.json")
    mlflow.log_figure(plots.importance_figure(importance), "explain/shap_importance.png")
    if reference_frame is not None:
        from mlplatform.monitoring import reference_profile

        mlflow.log_dict(reference_profile(reference_frame, feature_columns),
                        "profile/reference_profile.json")
    return {**report, "importance": importance["importance"]}


def _figures(task: str, report: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """name -> (JSON data, figure) of the task's evaluation figures."""
    if task == "multiclass":
        return {"confusion_matrix": (report["confusion_matrix"],
                                     plots.multiclass_confusion_figure(report)),
                "per_class": (report["per_class"], plots.per_class_figure(report))}
    if task == "regression":
        return {"predicted_vs_actual": (report["residuals"],
                                        plots.predicted_vs_actual_figure(report)),
                "residuals": (report["residuals"]["percentiles"], plots.residuals_figure(report))}
    return {
        "pr_curve": ({**report["pr_curve"], "auc_pr": report["auc_pr"],
                      "base_rate": report["base_rate"]}, plots.pr_curve_figure(report)),
        "confusion_matrix": ({"threshold": report["threshold"], **report["confusion_matrix"],
                              "precision": report["precision"], "recall": report["recall"],
                              "f1": report["f1"]}, plots.confusion_figure(report)),
        "calibration": (report["calibration"], plots.calibration_figure(report)),
    }


def evaluate(model_uri: str, dataset, *, project=None, platform=None,
             threshold: float | None = None, checks: bool = True) -> dict[str, Any]:
    """Evaluate a logged or registered model on a labelled dataset.

    Args:
        model_uri: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/m-<id>``
            or ``runs:/<run_id>/model``; loaded without pickle.
        dataset: Rows of the training-set layout (the model's inputs and the label; slices and
            behavioural checks also read the request fields and features): a pandas DataFrame
            (scored in this process), a Parquet path or a Ray Dataset (scored with Ray Data).
        project: The model's :class:`~mlplatform.project.Project` (its label, slices and
            checks). Default: the project the model's training run names.
        platform: Where MLflow lives (default: ``PlatformConfig.load()``).
        threshold: Binary decision threshold. Default: the one the model's training run chose
            (``evaluation/metrics.json``), else maximal F1 on this dataset.
        checks: Run the project's behavioural checks.

    Returns:
        ``model`` (uri, name, version, run_id, kind, task), ``rows``, ``task``, ``threshold``
        and ``threshold_source`` (binary), ``overall`` (:func:`task_report`), ``slices``
        (``{field: {value: metrics}}``, largest first), ``checks`` (``{name: {"passed",
        counts ...}}``) and ``passed`` (every check passed).

    Raises:
        ModelNotFound: The URI does not resolve to a model mlplatform loads.
        DataValidationError: The dataset lacks a needed column or has no rows, or the project
            is unknown.

    Example:
        >>> out = evaluate("models:/churn@champion", "training_sets/churn")  # doctest: +SKIP
        >>> out["overall"]["auc_pr"], out["passed"]                           # doctest: +SKIP
    """
    from mlplatform.config import PlatformConfig
    from mlplatform.models import load_model_uri

    platform = platform or PlatformConfig.load()
    model = load_model_uri(model_uri, platform)
    project = project if project is not None else run_project(platform, model.version.run_id)
    if project is None:
        raise DataValidationError(
            f"evaluate: {model_uri}'s training run names no project (tag mlplatform.project_file)"
            "; pass project= (mlplatform.project.load_project(<folder>))")
    from mlplatform.project import load_project, model_inputs

    project = load_project(project)
    task, classes = model.task, model.classes or project.task.classes
    label = project.task.label
    slices = list(project.evaluation.slices)
    spec = project.evaluation.behavioural
    checks = checks and bool(spec.invariance or spec.directional)
    raw_needed = model_inputs(project).raw_columns if checks else []
    score = _scorer(model, label, slices, checks, project, task, classes)
    rows = _score_rows(dataset, score, list(dict.fromkeys(
        [*model.feature_names, label, *slices, *raw_needed])), slices, checks, raw_needed)
    if rows.empty:
        raise DataValidationError(f"evaluate: the dataset {_describe(dataset)} has no rows")
    y, predictions = rows["label"].to_numpy(), _predictions(rows, task)
    source = None
    if task == "binary":
        source = "given"
        if threshold is None:
            threshold = _mlflow.run_threshold(platform, model.version.run_id)
            source = "run" if threshold is not None else "max_f1"
    overall = task_report(task, y, predictions, threshold, classes)
    result = {
        "model": {"uri": model_uri, "name": model.version.name, "version": model.version.version,
                  "run_id": model.version.run_id, "kind": model.kind, "task": task},
        "rows": int(len(rows)), "task": task,
        "overall": overall,
        "slices": {col: _slices(rows, col, task, overall.get("threshold"), classes)
                   for col in slices},
        "checks": behaviour.summarize(rows, project) if checks else {},
    }
    if task == "binary":
        overall["threshold_source"] = source
        result.update(threshold=overall["threshold"], threshold_source=source)
    result["passed"] = all(c["passed"] for c in result["checks"].values())
    return result


def run_project(platform, run_id: str | None):
    """The project a training run names (tag ``mlplatform.project_file``), loaded; None when
    the run names none or its file is gone."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    from mlplatform.errors import ProjectError
    from mlplatform.project import load_project

    try:
        path = _mlflow.client(platform).get_run(run_id).data.tags.get("mlplatform.project_file")
    except MlflowException:
        return None
    if not path or not Path(path).is_file():
        return None
    try:
        return load_project(path, check=False)
    except ProjectError:
        return None


def _scorer(model, label: str, slices: list[str], checks: bool, project, task: str,
            classes) -> Callable[[pd.DataFrame], pd.DataFrame]:
    from mlplatform.features.training_set import raw_frame

    def score(batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        pred = np.asarray(model.predict(batch), dtype=np.float64)
        out = pd.DataFrame({"label": batch[label].to_numpy()}, index=batch.index)
        if task == "multiclass":
            for j in range(pred.shape[1]):
                out[f"__p{j}"] = pred[:, j]
        else:
            out["__pred"] = pred.reshape(-1)
        raw = raw_frame(batch, slices)
        for col in slices:
            out[f"__slice:{col}"] = raw[col].astype(str).to_numpy()
        if checks:
            out = out.join(behaviour.check_batch(batch, model.predict, model.feature_names,
                                                 project, task, classes))
        return out

    return score


def _predictions(rows: pd.DataFrame, task: str) -> np.ndarray:
    if task == "multiclass":
        cols = sorted((c for c in rows.columns if c.startswith("__p")), key=lambda c: int(c[3:]))
        return rows[cols].to_numpy(dtype=np.float64)
    return rows["__pred"].to_numpy(dtype=np.float64)


def _score_rows(dataset, score: Callable[[pd.DataFrame], pd.DataFrame], needed: list[str],
                slices: list[str], checks: bool, raw_needed: list[str]) -> pd.DataFrame:
    """Apply ``score`` to every row: locally for a DataFrame, with Ray Data otherwise."""
    from mlplatform.features.training_set import RAW_PREFIX

    def wanted(present: Sequence[str]) -> list[str]:
        cols = []
        for c in needed:
            if RAW_PREFIX + c in present:
                cols.append(RAW_PREFIX + c)
            if c in present:
                cols.append(c)
            elif RAW_PREFIX + c not in present and (c in slices or c not in raw_needed):
                cols.append(c)        # missing: _require names it
        return list(dict.fromkeys(cols))

    if isinstance(dataset, pd.DataFrame):
        cols = wanted(list(dataset.columns))
        _require(cols, list(dataset.columns), dataset, checks)
        frame = dataset[cols]
        parts = [score(frame.iloc[i:i + _BATCH_ROWS]) for i in range(0, len(frame), _BATCH_ROWS)]
        return _plain(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()
    if isinstance(dataset, (str, Path)):
        import pyarrow.parquet as pq

        from mlplatform._ray import read_parquet

        if not Path(dataset).exists():
            raise DataValidationError(f"evaluate: dataset {dataset} does not exist")
        names = pq.ParquetDataset(str(dataset)).schema.names
        cols = wanted(names)
        _require(cols, names, dataset, checks)
        ds = read_parquet(str(dataset), columns=cols)
    else:
        names = dataset.schema().names
        cols = wanted(names)
        _require(cols, names, dataset, checks)
        ds = dataset.select_columns(cols)
    return _plain(ds.map_batches(score, batch_format="pandas", batch_size=_BATCH_ROWS).to_pandas())


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """numpy columns (bool, str for slices, or float64 with NaN for missing): Ray Data hands
    pandas frames back with Arrow-backed nullable dtypes, whose NA breaks numpy arithmetic."""
    out = {}
    for c in frame.columns:
        if c.startswith("__slice:"):
            out[c] = frame[c].astype(str).to_numpy(dtype=object)
        elif pd.api.types.is_bool_dtype(frame[c].dtype):
            out[c] = frame[c].to_numpy(dtype=bool)
        else:
            out[c] = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.DataFrame(out)


def _require(needed: list[str], present: list[str], dataset, checks: bool) -> None:
    missing = [c for c in needed if c not in present]
    if missing:
        hint = (" (the behavioural checks read the request fields and features the model "
                "inputs come from: pass checks=False to skip them)") if checks else ""
        raise DataValidationError(f"evaluate: the dataset {_describe(dataset)} lacks column(s) "
                                  f"{missing}{hint}; it has {present}.")


def _describe(dataset) -> str:
    return str(dataset) if isinstance(dataset, (str, Path)) else type(dataset).__name__


def _slices(rows: pd.DataFrame, column: str, task: str, threshold: float | None,
            classes) -> dict[str, dict[str, Any]]:
    names = rows[f"__slice:{column}"].to_numpy(dtype=object)
    preds = _predictions(rows, task)
    out = {}
    for name, idx in pd.Series(np.arange(len(rows))).groupby(names).groups.items():
        idx = np.asarray(idx)
        y = rows["label"].to_numpy()[idx]
        try:
            r = task_report(task, y, preds[idx], threshold, classes)
        except ValueError:      # e.g. a single row: report what can be said
            r = {"rows": int(len(idx))}
        mean = preds[idx].max(axis=1).mean() if task == "multiclass" else preds[idx].mean()
        out[str(name)] = {**{k: r.get(k) for k in _SLICE_KEYS[task]},
                          "mean_score" if task != "regression" else "mean_prediction":
                          float(mean)}
    return dict(sorted(out.items(), key=lambda kv: -(kv[1]["rows"] or 0)))
