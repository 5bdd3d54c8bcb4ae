"""Multiclass and regression metrics in numpy, and which way each metric improves.

The companion of :mod:`mlplatform.training.metrics` (binary scores) under the same rules: numpy
only, so training, evaluation and monitors share one definition; plain Python values, so a
report is logged as JSON as is; every figure checked against scikit-learn in the unit tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlplatform.training.metrics import _EPS, CALIBRATION_BINS, calibration

#: Largest allowed ``|row sum - 1|`` (and overshoot past [0, 1]) of a row of probabilities.
PROBA_TOLERANCE = 1e-6
#: (actual, predicted) points kept in a regression report, evenly spaced in order of actual.
MAX_RESIDUAL_POINTS = 200
#: Percentiles of the residuals (predicted - actual) in a regression report.
RESIDUAL_PERCENTILES = (5, 25, 50, 75, 95)

#: Metric name -> "max" (higher is better) or "min" (lower is better), for every scalar metric
#: of the binary, multiclass and regression reports and for XGBoost's ``eval_metric`` names
#: (trainers report those as ``val_<name>``: ``val_logloss``, ``val_error``, ...).
METRIC_DIRECTIONS: dict[str, str] = {
    # binary (metrics.evaluation_report)
    "auc_pr": "max", "auc_roc": "max", "log_loss": "min", "brier": "min", "precision": "max",
    "recall": "max", "f1": "max",
    # At equal recall a smaller flagged share is fewer rows for people to review.
    "flagged_share": "min",
    "ece": "min",
    # multiclass
    "accuracy": "max", "macro_f1": "max", "weighted_f1": "max",
    # regression
    "rmse": "min", "mae": "min", "r2": "max", "mape": "min", "median_absolute_error": "min",
    # XGBoost eval_metric names
    "logloss": "min", "mlogloss": "min", "error": "min", "merror": "min", "auc": "max",
    "aucpr": "max", "rmsle": "min",
}
#: Report figures that are not scores to optimise, and why (named in the error).
_NO_DIRECTION = {
    "mean_error": "a bias, best at 0: compare its absolute value",
    "base_rate": "a property of the data", "y_mean": "a property of the data",
    "pred_mean": "a level to compare with y_mean", "threshold": "a decision setting",
    "rows": "a count", "positives": "a count",
}
_PREFIXES = ("val_", "eval_")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (for sorting runs, gates and Tune's mode).

    Args:
        metric: A name of :data:`METRIC_DIRECTIONS`, bare or prefixed with ``val_`` (training
            runs) or ``eval_`` (holdout evaluation).

    Returns:
        True for "max" metrics, False for "min" ones.

    Raises:
        ValueError: The metric has no known direction (the message names it).

    Example:
        >>> higher_is_better("val_auc_pr"), higher_is_better("eval_rmse")
        (True, False)
    """
    name = metric
    if name not in METRIC_DIRECTIONS and name not in _NO_DIRECTION:
        name = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), name)
    if name in _NO_DIRECTION:
        raise ValueError(f"metric {metric!r} has no better direction ({_NO_DIRECTION[name]})")
    if name not in METRIC_DIRECTIONS:
        raise ValueError(f"unknown metric {metric!r}: no direction known. Known (bare or with a "
                         f"val_/eval_ prefix): {', '.join(sorted(METRIC_DIRECTIONS))}")
    return METRIC_DIRECTIONS[name] == "max"


def multiclass_report(y_true: ArrayLike, proba: ArrayLike, classes: Sequence[Any],
                      calibration_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Metrics of class probabilities against labels; the prediction is the top class.

    Args:
        y_true: Class indices 0..K-1, one per row.
        proba: (rows, K) probabilities; each row sums to 1 within :data:`PROBA_TOLERANCE`.
        classes: The K class labels (JSON scalars), in column order; ``str(label)`` names a
            class in the output.
        calibration_bins: Equal-width reliability bins over [0, 1] for the top-class probability.

    Returns:
        ``rows``; ``class_counts`` (name -> rows); ``accuracy``; ``log_loss`` (probability of the
        true class clipped to [1e-15, 1 - 1e-15]); ``brier`` (mean over rows of the summed
        squared gap to the one-hot label); ``macro_f1``; ``weighted_f1`` (by support);
        ``per_class`` (name -> ``precision``, ``recall``, ``f1``, ``support``; 0 where undefined);
        ``confusion_matrix`` (``labels``: the names; ``matrix``: K x K counts, rows actual,
        columns predicted); ``calibration``: the bins of
        :func:`~mlplatform.training.metrics.calibration` over the top-class probability, where
        ``mean_score`` is the mean top probability and ``positive_rate`` the accuracy of the bin,
        plus ``ece``. Ties in a row go to the first class, as ``numpy.argmax``.

    Raises:
        ValueError: Shapes or lengths differ, no rows, duplicate or non-scalar class names,
            labels that are NaN, not integers or out of 0..K-1, probabilities NaN, outside
            [0, 1] or rows not summing to 1.

    Example:
        >>> r = multiclass_report([0, 1, 2], [[.8, .1, .1], [.2, .7, .1], [.5, .2, .3]], ["a", "b", "c"])
        >>> r["accuracy"], r["confusion_matrix"]["matrix"]
        (0.6666666666666666, [[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    """
    y, p, names = _check_multiclass(y_true, proba, classes)
    n, k = p.shape
    pred = p.argmax(axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    # 2tp / (2tp + fp + fn): equal to 2PR / (P + R) and defined (0) when both are 0.
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
    true_p = np.clip(p[np.arange(n), y], _EPS, 1 - _EPS)
    onehot = np.eye(k)[y]
    correct = (pred == y).astype(np.float64)
    return {
        "rows": int(n),
        "class_counts": {name: int(c) for name, c in zip(names, support, strict=True)},
        "accuracy": float(correct.mean()),
        "log_loss": float(-np.mean(np.log(true_p))),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float(np.sum(f1 * support) / n),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(names)},
        "confusion_matrix": {"labels": names, "matrix": cm.tolist()},
        "calibration": calibration(correct, p.max(axis=1), calibration_bins),
    }


def regression_report(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, Any]:
    """Error metrics of predictions against targets, with a bounded residual summary to plot.

    Args:
        y_true: Targets.
        y_pred: Predictions, same length.

    Returns:
        ``rows``, ``rmse``, ``mae``, ``r2`` (None when ``y_true`` is constant), ``mape`` (mean
        of |error| / |actual| over rows whose actual is not 0, a fraction; None if there are
        none), ``median_absolute_error``, ``mean_error`` (bias: mean of predicted - actual),
        ``y_mean``, ``pred_mean`` and ``residuals``: ``actual`` and ``predicted`` lists (at most
        :data:`MAX_RESIDUAL_POINTS` rows evenly spaced in order of actual, ends included) and
        ``percentiles`` of predicted - actual over all rows (``p5``, ``p25``, ``p50``, ``p75``,
        ``p95``).

    Raises:
        ValueError: Lengths differ, there are no rows, or a value is NaN or infinite.

    Example:
        >>> r = regression_report([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
        >>> r["mae"], r["mean_error"], r["mape"]
        (0.5, -0.16666666666666666, 0.25)
    """
    y = _vector(y_true, "y_true")
    f = _vector(y_pred, "y_pred")
    if y.size != f.size:
        raise ValueError(f"y_true ({y.size}) and y_pred ({f.size}) differ in length")
    if not y.size:
        raise ValueError("no rows to evaluate")
    err = f - y
    abs_err = np.abs(err)
    nonzero = y != 0
    # A constant target leaves R^2 undefined (0 / 0); scikit-learn's 1.0 or 0.0 there would read
    # as a real score.
    constant = bool(y.max() == y.min())
    r2 = None if constant else 1.0 - float(np.sum(err ** 2) / np.sum((y - y.mean()) ** 2))
    order = np.argsort(y, kind="mergesort")
    keep = order[np.unique(np.linspace(0, y.size - 1, min(y.size, MAX_RESIDUAL_POINTS))
                           .round().astype(int))]
    pct = np.percentile(err, RESIDUAL_PERCENTILES)
    percentiles = {f"p{q}": float(v) for q, v in zip(RESIDUAL_PERCENTILES, pct, strict=True)}
    return {
        "rows": int(y.size),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "mae": float(abs_err.mean()),
        "r2": r2,
        "mape": float(np.mean(abs_err[nonzero] / np.abs(y[nonzero]))) if nonzero.any() else None,
        "median_absolute_error": float(np.median(abs_err)),
        "mean_error": float(err.mean()),
        "y_mean": float(y.mean()),
        "pred_mean": float(f.mean()),
        "residuals": {"actual": y[keep].tolist(), "predicted": f[keep].tolist(),
                      "percentiles": percentiles},
    }


def _check_multiclass(y_true: ArrayLike, proba: ArrayLike, classes: Sequence[Any]
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated labels (int64), probabilities (float64, clipped to [0, 1]) and class names."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be a (rows, classes) array, got shape {p.shape}")
    n, k = p.shape
    names = _class_names(classes)
    if len(names) != k:
        raise ValueError(f"classes has {len(names)} labels but proba has {k} columns")
    if k < 2:
        raise ValueError(f"a multiclass report needs at least 2 classes, got {k}")
    raw = np.asarray(y_true)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"y_true must be class indices 0..{k - 1}, got dtype {raw.dtype} (map "
                         "labels to their position in classes first)")
    yf = _column(raw, "y_true").astype(np.float64)
    if yf.size != n:
        raise ValueError(f"y_true ({yf.size}) and proba ({n} rows) differ in length")
    if not n:
        raise ValueError("no rows to evaluate")
    if np.isnan(yf).any():
        raise ValueError(f"{int(np.isnan(yf).sum())} label(s) in y_true are NaN")
    bad = (yf < 0) | (yf > k - 1) | (yf != np.floor(yf))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} label(s) in y_true are not class indices 0..{k - 1}, "
                         f"e.g. {np.unique(yf[bad])[:5].tolist()}")
    if not np.isfinite(p).all():
        raise ValueError(f"{int((~np.isfinite(p)).sum())} probabilities are NaN or infinite")
    if p.min() < -PROBA_TOLERANCE or p.max() > 1 + PROBA_TOLERANCE:
        raise ValueError(f"proba must be probabilities in [0, 1], got [{p.min()}, {p.max()}]")
    off = np.abs(p.sum(axis=1) - 1.0) > PROBA_TOLERANCE
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise ValueError(f"{int(off.sum())} proba row(s) do not sum to 1 (within "
                         f"{PROBA_TOLERANCE}), e.g. row {first} sums to {p[first].sum()}")
    return yf.astype(np.int64), np.clip(p, 0.0, 1.0), names


def _class_names(classes: Sequence[Any]) -> list[str]:
    names = []
    for c in classes:
        value = c.item() if isinstance(c, np.generic) else c
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ValueError(f"class labels must be JSON scalars, got {type(c).__name__} {c!r}")
        names.append(str(value))
    if len(set(names)) != len(names):
        dupes = sorted({x for x in names if names.count(x) > 1})
        raise ValueError(f"class labels must have distinct names, got {dupes} more than once")
    return names


def _column(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as 1-D: a vector or an (n, 1) column; anything wider is a caller's mistake."""
    if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
        raise ValueError(f"{name} must be one value per row, got shape {values.shape}")
    return values.reshape(-1)


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from None
    out = _column(arr, name)
    if not np.isfinite(out).all():
        raise ValueError(f"{int((~np.isfinite(out)).sum())} value(s) in {name} are NaN or infinite")
    return out
