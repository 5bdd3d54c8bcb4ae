"""Model evaluation: the artifacts every training run logs, and ``evaluate`` for any model URI.

:func:`log_evaluation_artifacts` runs inside a trainer's MLflow run: the evaluation report on
the validation rows (PR curve, confusion matrix at the chosen threshold, calibration, as PNG and
JSON under ``evaluation/``), global SHAP importance (``explain/``) and the reference profile of
the training features (``profile/reference_profile.json``, read by drift monitoring).

:func:`evaluate` scores a dataset with a model loaded from MLflow without pickle, on Ray Data
for Parquet paths and Datasets, and returns overall metrics, metrics per country and merchant
category, and the behavioural checks of :mod:`mlplatform.training.behaviour`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import _mlflow
from mlplatform.errors import DataValidationError
from mlplatform.features.transforms import FEATURE_COLUMNS, LABEL_COLUMN
from mlplatform.training import behaviour, plots
from mlplatform.training.metrics import evaluation_report

__all__ = ["bounded_sample", "evaluate", "evaluation_report", "log_evaluation_artifacts"]

#: Validation rows a trainer hands to :func:`log_evaluation_artifacts` (all are scored).
EVAL_ROWS = 50_000
#: Training rows sampled for the reference profile.
PROFILE_ROWS = 100_000
#: Scalars of a report written to ``evaluation/metrics.json`` and logged as ``eval_<name>``.
SCALARS = ("auc_pr", "auc_roc", "log_loss", "brier", "threshold", "precision", "recall", "f1",
           "flagged_share", "base_rate")
#: Slices :func:`evaluate` reports on (decoded from ``<column>_code``).
SLICE_COLUMNS = ("country", "merchant_category")
_SLICE_KEYS = ("rows", "positives", "base_rate", "auc_pr", "auc_roc", "log_loss", "brier",
               "precision", "recall", "f1", "flagged_share")
_KEYS = ("transaction_id", "user_id", "merchant_id", "event_timestamp")
_BATCH_ROWS = 65_536


def bounded_sample(ds, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """At most ``max_rows`` rows of a Ray Dataset as pandas: all of them when it is that small,
    else a seeded uniform sample (not the first rows, which may all come from one period)."""
    n = ds.count()
    if n > max_rows:
        ds = ds.random_sample(min(1.0, 1.05 * max_rows / n), seed=seed)
    return ds.limit(max_rows).to_pandas()


def log_evaluation_artifacts(frame: pd.DataFrame, y_true, scores,
                             predict_fn: Callable[[pd.DataFrame], Any] | None,
                             feature_columns: list[str], model_kind: str, *, model: Any = None,
                             reference_frame: pd.DataFrame | None = None,
                             threshold: float | None = None) -> dict[str, Any]:
    """Log evaluation, explanation and reference-profile artifacts to the active MLflow run.

    Args:
        frame: Validation rows (bounded: every row is scored and plotted) with the features.
        y_true: Their 0/1 labels.
        scores: The model's scores on them (None: computed with ``predict_fn``).
        predict_fn: DataFrame of ``feature_columns`` -> probabilities; SHAP explains it when
            ``model`` is not an XGBoost booster.
        feature_columns: The model's inputs, in order.
        model_kind: ``xgboost`` or ``torch`` (recorded with the importance).
        model: The ``xgboost.Booster`` for exact TreeSHAP (optional).
        reference_frame: A bounded sample of the training rows to profile (None: no profile).
        threshold: Decision threshold (default: maximal F1 on ``frame``).

    Returns:
        The evaluation report (see :func:`evaluation_report`) plus ``importance``.

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
    report = evaluation_report(y_true, scores, threshold)
    scalars = {k: report[k] for k in SCALARS}
    mlflow.log_dict({**scalars, "rows": report["rows"], "positives": report["positives"],
                     "threshold_source": report["threshold_source"],
                     "confusion_matrix": report["confusion_matrix"]},
                    "evaluation/metrics.json")
    mlflow.log_metrics({f"eval_{k}": float(v) for k, v in scalars.items() if v is not None})
    artifacts = {
        "pr_curve": ({**report["pr_curve"], "auc_pr": report["auc_pr"],
                      "base_rate": report["base_rate"]}, plots.pr_curve_figure(report)),
        "confusion_matrix": ({"threshold": report["threshold"], **report["confusion_matrix"],
                              "precision": report["precision"], "recall": report["recall"],
                              "f1": report["f1"]}, plots.confusion_figure(report)),
        "calibration": (report["calibration"], plots.calibration_figure(report)),
    }
    for name, (data, fig) in artifacts.items():
        mlflow.log_dict(data, f"evaluation/{name}.json")
        mlflow.log_figure(fig, f"evaluation/{name}.png")
    from mlplatform.training.explain import shap_importance

    importance = {"model_kind": model_kind, **shap_importance(
        frame, feature_columns, model=model if tree else None, predict_fn=predict_fn)}
    mlflow.log_dict(importance, "explain/shap_importance.json")
    mlflow.log_figure(plots.importance_figure(importance), "explain/shap_importance.png")
    if reference_frame is not None:
        from mlplatform.monitoring import reference_profile

        mlflow.log_dict(reference_profile(reference_frame, feature_columns),
                        "profile/reference_profile.json")
    return {**report, "importance": importance["importance"]}


def evaluate(model_uri: str, dataset, *, platform=None, threshold: float | None = None,
             label: str = LABEL_COLUMN, checks: bool = True, amount_factor: float = 10.0,
             directional_tolerance: float = behaviour.DIRECTIONAL_TOLERANCE,
             min_ratio: float = behaviour.MIN_RATIO) -> dict[str, Any]:
    """Evaluate a logged or registered model on a labelled dataset.

    Args:
        model_uri: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/m-<id>``
            or ``runs:/<run_id>/model``; loaded without pickle.
        dataset: Rows of the training-set layout (the model's features and ``label``; the
            behavioural checks need every column of
            :data:`~mlplatform.features.transforms.FEATURE_COLUMNS`): a pandas DataFrame
            (scored in this process), a Parquet path or a Ray Dataset (scored with Ray Data).
        platform: Where MLflow lives (default: ``PlatformConfig.load()``).
        threshold: Decision threshold. Default: the one the model's training run chose
            (``evaluation/metrics.json``), else maximal F1 on this dataset.
        label: The 0/1 label column.
        checks: Run the behavioural checks.
        amount_factor: Directional check: the amount multiplier.
        directional_tolerance: Directional check: largest share of judged rows allowed a lower
            score.
        min_ratio: Directional check: judge rows whose scaled amount is at least this multiple
            of the user's 7-day mean.

    Returns:
        ``model`` (uri, name, version, run_id), ``rows``, ``threshold``, ``threshold_source``,
        ``overall`` (:func:`evaluation_report`), ``slices`` (``{"country": {value: metrics},
        "merchant_category": {...}}``, largest first), ``checks`` (``{name: {"passed", counts
        ...}}``) and ``passed`` (every check passed).

    Raises:
        ModelNotFound: The URI does not resolve to a model mlplatform loads.
        DataValidationError: The dataset lacks a needed column or has no rows.

    Example:
        >>> out = evaluate("models:/fraud@champion", "training_sets/fraud")  # doctest: +SKIP
        >>> out["overall"]["auc_pr"], out["checks"]["directional_amount"]["passed"]  # doctest: +SKIP
    """
    from mlplatform.config import PlatformConfig
    from mlplatform.registry.loading import load_model_uri

    platform = platform or PlatformConfig.load()
    model = load_model_uri(model_uri, platform)
    features = model.feature_names

    def score(batch: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"label": batch[label].to_numpy(),
                            "score": np.asarray(model.predict(batch), dtype=np.float64)},
                           index=batch.index)
        for col in SLICE_COLUMNS:
            out[f"{col}_code"] = batch[f"{col}_code"].to_numpy()
        if checks:
            out = out.join(behaviour.check_batch(batch, model.predict, features, amount_factor))
        return out.reset_index(drop=True)

    rows = _score_rows(dataset, score, features, label, checks)
    if rows.empty:
        raise DataValidationError(f"evaluate: the dataset {_describe(dataset)} has no rows")
    source = "given"
    if threshold is None:
        threshold = _mlflow.run_threshold(platform, model.version.run_id)
        source = "run" if threshold is not None else "max_f1"
    y, s = rows["label"].to_numpy(), rows["score"].to_numpy()
    overall = evaluation_report(y, s, threshold)
    threshold = overall["threshold"]
    overall["threshold_source"] = source
    result = {
        "model": {"uri": model_uri, "name": model.version.name, "version": model.version.version,
                  "run_id": model.version.run_id, "kind": getattr(model, "kind", "xgboost")},
        "rows": int(len(rows)), "threshold": threshold, "threshold_source": source,
        "overall": overall,
        "slices": {col: _slices(rows, col, threshold) for col in SLICE_COLUMNS},
        "checks": behaviour.summarize(rows, amount_factor, directional_tolerance, min_ratio)
        if checks else {},
    }
    result["passed"] = all(c["passed"] for c in result["checks"].values())
    return result


def _score_rows(dataset, score: Callable[[pd.DataFrame], pd.DataFrame], features: list[str],
                label: str, checks: bool) -> pd.DataFrame:
    """Apply ``score`` to every row: locally for a DataFrame, with Ray Data otherwise."""
    needed = list(dict.fromkeys([*features, *(FEATURE_COLUMNS if checks else
                                              [f"{c}_code" for c in SLICE_COLUMNS]), label]))
    if isinstance(dataset, pd.DataFrame):
        _require(needed, list(dataset.columns), dataset, checks)
        frame = dataset[needed + [c for c in _KEYS if c in dataset.columns]]
        parts = [score(frame.iloc[i:i + _BATCH_ROWS]) for i in range(0, len(frame), _BATCH_ROWS)]
        return _plain(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()
    if isinstance(dataset, (str, Path)):
        import pyarrow.parquet as pq

        from mlplatform._ray import read_parquet

        if not Path(dataset).exists():
            raise DataValidationError(f"evaluate: dataset {dataset} does not exist")
        names = pq.ParquetDataset(str(dataset)).schema.names
        _require(needed, names, dataset, checks)
        ds = read_parquet(str(dataset), columns=needed + [c for c in _KEYS if c in names])
    else:
        names = dataset.schema().names
        _require(needed, names, dataset, checks)
        ds = dataset.select_columns(needed + [c for c in _KEYS if c in names])
    return _plain(ds.map_batches(score, batch_format="pandas", batch_size=_BATCH_ROWS).to_pandas())


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """numpy columns (bool or float64, NaN for missing): Ray Data hands pandas frames back with
    Arrow-backed nullable dtypes, whose NA breaks numpy arithmetic."""
    return pd.DataFrame({
        c: frame[c].to_numpy(dtype=bool) if pd.api.types.is_bool_dtype(frame[c].dtype)
        else frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in frame.columns})


def _require(needed: list[str], present: list[str], dataset, checks: bool) -> None:
    missing = [c for c in needed if c not in present]
    if missing:
        hint = " (the behavioural checks need every training-set feature: pass checks=False " \
               "to skip them)" if checks else ""
        raise DataValidationError(f"evaluate: the dataset {_describe(dataset)} lacks column(s) "
                                  f"{missing}{hint}; it has {present}.")


def _describe(dataset) -> str:
    return str(dataset) if isinstance(dataset, (str, Path)) else type(dataset).__name__


def _slices(rows: pd.DataFrame, column: str, threshold: float) -> dict[str, dict[str, Any]]:
    names = behaviour.decode(column, rows[f"{column}_code"])
    out = {}
    for name, idx in pd.Series(np.arange(len(rows))).groupby(names).groups.items():
        sub = rows.iloc[np.asarray(idx)]
        r = evaluation_report(sub["label"].to_numpy(), sub["score"].to_numpy(), threshold)
        out[str(name)] = {**{k: r[k] for k in _SLICE_KEYS}, "mean_score": float(sub["score"].mean())}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["rows"]))


