"""Global feature importance: mean |SHAP value| per feature.

XGBoost models use XGBoost's own TreeSHAP (``pred_contribs=True``): exact and fast, no extra
library. Any other model (the torch net) goes through SHAP's model-agnostic permutation
explainer on a small background sample, with the rows explained and the model calls bounded.
The scale follows the task: log-odds for binary models (a torch model's probability is turned
into log-odds, so both kinds report on one scale), the margin of each class for multiclass
(averaged over the classes), the predicted value for regression.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

#: Rows explained exactly (TreeSHAP is cheap: linear in rows x trees x depth).
TREE_ROWS = 5_000
#: Rows explained, and background rows masked with, by the model-agnostic explainer, and the
#: random feature orderings (each forward and back) per row. Model rows scored: EXPLAIN_ROWS x
#: PERMUTATIONS x (2 x features + 1) x BACKGROUND_ROWS (200 x 3 x 43 x 30 = 774k for 21 features).
EXPLAIN_ROWS = 200
BACKGROUND_ROWS = 30
PERMUTATIONS = 3
_EPS = 1e-7


def shap_importance(frame: pd.DataFrame, feature_columns: list[str], *, model: Any = None,
                    predict_fn: Callable[[pd.DataFrame], Any] | None = None,
                    max_rows: int | None = None, seed: int = 0,
                    task: str = "binary") -> dict[str, Any]:
    """Mean |SHAP| per feature over a bounded sample of ``frame``.

    Args:
        frame: Rows to explain (e.g. the validation split), with ``feature_columns``.
        feature_columns: The model's inputs, in order.
        model: An ``xgboost.Booster``: explained exactly with TreeSHAP.
        predict_fn: Otherwise, a function DataFrame -> probabilities, explained with SHAP's
            permutation explainer (log-odds of its output).
        max_rows: Rows explained (default :data:`TREE_ROWS` or :data:`EXPLAIN_ROWS`).
        seed: Sampling seed.
        task: ``binary`` (log-odds), ``multiclass`` (per-class margins or probabilities,
            averaged over classes) or ``regression`` (the value).

    Returns:
        ``{"method", "output", "rows", "base_value", "importance": {feature: mean |SHAP|}
        (largest first), "mean_shap": {feature: mean SHAP}}``.

    Raises:
        ValueError: Neither a booster nor a predict function was given, or ``frame`` is empty.
    """
    if frame.empty:
        raise ValueError("shap_importance: no rows to explain")
    x = frame[feature_columns]
    if model is not None and type(model).__module__.startswith("xgboost"):
        values, base, method = _tree_shap(model, _sample(x, max_rows or TREE_ROWS, seed))
        output = {"binary": "log-odds", "multiclass": "class margin (log-odds)",
                  "regression": "value"}[task]
    elif predict_fn is not None:
        values, base, method = _permutation_shap(predict_fn, x, max_rows or EXPLAIN_ROWS, seed,
                                                 task)
        output = {"binary": "log-odds", "multiclass": "class probability",
                  "regression": "value"}[task]
    else:
        raise ValueError("shap_importance needs an xgboost Booster (model=) or a predict_fn")
    if values.ndim == 3:     # rows x features x classes: averaged over the classes
        values, base = values.mean(axis=2), float(np.mean(base))
    mean_abs = np.abs(values).mean(axis=0)
    order = np.argsort(-mean_abs, kind="mergesort")
    return {"method": method, "output": output, "rows": int(values.shape[0]),
            "base_value": float(base),
            "importance": {feature_columns[i]: float(mean_abs[i]) for i in order},
            "mean_shap": {feature_columns[i]: float(values[:, i].mean()) for i in order}}


def _sample(x: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return x if len(x) <= n else x.sample(n=n, random_state=seed)


def _tree_shap(booster, x: pd.DataFrame) -> tuple[np.ndarray, float, str]:
    """TreeSHAP values (rows x features, or rows x features x classes) and the base value."""
    import xgboost

    contribs = booster.predict(xgboost.DMatrix(x), pred_contribs=True)
    if contribs.ndim == 3:    # multiclass: rows x classes x (features + 1)
        return (np.transpose(contribs[:, :, :-1], (0, 2, 1)), float(contribs[:, :, -1].mean()),
                "xgboost TreeSHAP (pred_contribs)")
    return contribs[:, :-1], float(contribs[:, -1].mean()), "xgboost TreeSHAP (pred_contribs)"


def _permutation_shap(predict_fn, x: pd.DataFrame, rows: int, seed: int,
                      task: str = "binary") -> tuple[np.ndarray, float, str]:
    import warnings

    with warnings.catch_warnings():  # shap's colormaps use calls matplotlib deprecates
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    columns = list(x.columns)

    def logit(a: np.ndarray) -> np.ndarray:
        out = np.asarray(predict_fn(pd.DataFrame(a, columns=columns)), dtype=np.float64)
        if task != "binary":     # class probabilities or values, explained as they are
            return out
        p = np.clip(out, _EPS, 1 - _EPS)
        return np.log(p / (1 - p))

    background = _sample(x, BACKGROUND_ROWS, seed + 1).to_numpy(dtype=np.float64, na_value=np.nan)
    explain = _sample(x, rows, seed).to_numpy(dtype=np.float64, na_value=np.nan)
    explainer = shap.PermutationExplainer(
        logit, shap.maskers.Independent(background, max_samples=BACKGROUND_ROWS), seed=seed)
    # Averaged over hundreds of rows, a few orderings per row make a stable global ranking.
    out = explainer(explain, max_evals=PERMUTATIONS * (2 * len(columns) + 1), silent=True)
    return (np.asarray(out.values), float(np.mean(out.base_values)),
            f"shap PermutationExplainer ({BACKGROUND_ROWS} background rows)")
