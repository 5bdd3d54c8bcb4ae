"""Per-request SHAP explanations: what the Serve ``Explainer`` returns per row.

What is explained follows the task: the log-odds of the positive class (binary), the log-odds
(XGBoost: the margin) of the class the model predicts for the row (multiclass), or the value
(regression). XGBoost models get exact TreeSHAP (SHAP's ``TreeExplainer``, or XGBoost's own
``pred_contribs`` where SHAP cannot read the booster, and always for multiclass). Any other
model (the torch net, ONNX) gets SHAP's ``KernelExplainer`` over that quantity, integrated over
a small seeded sample of background rows the caller supplies. Both are additive by
construction: ``base_value + sum(contributions) == margin`` for every row, and each row reports
how far off it is, so a caller can tell a sound explanation from a broken one.

Example:
    >>> out = explain_rows(loaded, frame, background=reference_rows)    # doctest: +SKIP
    >>> out["explanations"][0]["contributions"]                          # doctest: +SKIP
    {'tenure_months': -1.92, 'support_calls_30d': 0.41, ...}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.training.explain import _EPS, _sample, _tree_shap

logger = logging.getLogger(__name__)

#: Background rows the model-agnostic explainer integrates over. Each explained row costs
#: ``nsamples x BACKGROUND_ROWS`` model rows (256 x 25 = 6,400), scored in one batch.
BACKGROUND_ROWS = 25


def explain_rows(loaded, frame: pd.DataFrame, *, background: pd.DataFrame | None = None,
                 nsamples: int = 256, seed: int = 0, tolerance: float = 1e-3) -> dict:
    """SHAP contributions of each input column to each row's prediction (see the module).

    Args:
        loaded: A :class:`~mlplatform.models.LoadedModel`.
        frame: Rows to explain, with the model's input columns (others are ignored). NaN is
            allowed: it is how ``model_inputs`` marks an unknown statistic, and both kinds of
            model score it as missing.
        background: Reference rows (e.g. a sample of the training set) that absent features
            are drawn from; required for non-tree models, unused for XGBoost. Larger ones are
            reduced to a seeded sample of :data:`BACKGROUND_ROWS` rows (not k-means: it would
            fail on NaN and average category codes into codes that do not exist).
        nsamples: Feature coalitions the model-agnostic explainer evaluates per row, at least
            twice the features (exact Shapley values once it reaches ``2**features - 2``; below
            that, an estimate that is still exactly additive). Unused for XGBoost.
        seed: Seed of the background sample and of the coalitions drawn.
        tolerance: Largest ``|base_value + sum(contributions) - margin|`` accepted as additive.

    Returns:
        ``{"method", "output", "base_value", "explanations": [{"contributions": {feature:
        value} (largest |value| first), "margin", "base_value", "prediction", "explained",
        "additivity_error"}, ...] (one per row, in order), "additivity_ok"}``;
        ``prediction`` is ``loaded.predict``'s (a score, the class probabilities, a value),
        ``margin`` the explained quantity and ``explained`` the class it is about (multiclass).

    Raises:
        ValueError: ``frame`` (or ``background``) is empty, lacks an input column, or has a
            non-numeric or infinite value (the column is named); ``background`` is missing for
            a non-tree model; ``nsamples`` or ``tolerance`` is out of range.
    """
    if not tolerance >= 0:  # also refuses NaN
        raise ValueError(f"explain_rows: tolerance must be >= 0, got {tolerance}")
    columns = loaded.feature_names
    x = _checked(frame, columns, "frame")
    task = getattr(loaded, "task", "binary")
    prediction = np.asarray(loaded.predict(x), dtype=np.float64)
    explained = None
    if loaded.kind == "xgboost" and task == "multiclass":
        values, base, margin, explained, method = _tree_explain_classes(loaded.booster, x)
    elif loaded.kind == "xgboost":
        values, base, margin, method = _tree_explain(loaded.booster, x)
    else:
        if background is None:
            raise ValueError(f"explain_rows: a {loaded.kind} model needs background= rows (e.g. "
                             "a sample of its training set) to explain against; only XGBoost "
                             "models are explained without one")
        if nsamples < 2 * len(columns):
            # Fewer cannot cover every single feature and its complement: the regression
            # behind Kernel SHAP is then singular and its values arbitrary.
            raise ValueError(f"explain_rows: nsamples must be at least 2 x {len(columns)} "
                             f"features = {2 * len(columns)}, got {nsamples}")
        bg = _sample(_checked(background, columns, "background"), BACKGROUND_ROWS, seed)
        if task == "multiclass":
            values, base, margin, explained, method = _kernel_explain_classes(
                loaded.predict, x, bg, nsamples, seed, prediction)
        else:
            values, base, margin, method = _kernel_explain(loaded.predict, x, bg, nsamples, seed,
                                                           task)
    base_rows = np.broadcast_to(np.asarray(base, dtype=np.float64), (len(x),))
    errors = np.abs(base_rows + values.sum(axis=1) - margin)
    classes = getattr(loaded, "classes", None) or []
    output = {"binary": "log-odds", "multiclass": "log-odds of the predicted class",
              "regression": "value"}[task]
    rows = []
    for i, (v, m, e) in enumerate(zip(values, margin, errors, strict=True)):
        row = _row(columns, v, float(m), prediction[i].tolist(), float(e))
        row["base_value"] = float(base_rows[i])
        if explained is not None:
            k = int(explained[i])
            row["explained"] = classes[k] if k < len(classes) else k
        rows.append(row)
    return {"method": method, "output": output, "base_value": float(np.mean(base_rows)),
            "explanations": rows, "additivity_ok": bool((errors <= tolerance).all())}


def _checked(frame: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    """``frame[columns]``, refusing what the explainers would silently mis-handle."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"explain_rows: {what} must be a pandas DataFrame, got "
                         f"{type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"explain_rows: {what} lacks input column(s) {missing}; the model takes "
                         f"{columns}")
    if frame.empty:
        raise ValueError(f"explain_rows: {what} has no rows (columns {list(frame.columns)})")
    x = frame[columns]
    for c in columns:
        if not pd.api.types.is_numeric_dtype(x[c]):
            raise ValueError(f"explain_rows: {what} column '{c}' is {x[c].dtype}, not numeric")
        if np.isinf(x[c].to_numpy(dtype=np.float64)).any():
            raise ValueError(f"explain_rows: {what} column '{c}' has an infinite value; send a "
                             "finite number, or NaN where the value is unknown")
    return x


def _row(columns: list[str], values: np.ndarray, margin: float, prediction: Any,
         error: float) -> dict[str, Any]:
    order = np.argsort(-np.abs(values), kind="mergesort")  # stable: ties keep column order
    return {"contributions": {columns[i]: float(values[i]) for i in order},
            "margin": margin, "prediction": prediction, "additivity_error": error}


def _tree_explain_classes(booster, x: pd.DataFrame):
    """Exact TreeSHAP of a multiclass booster, each row on the margin of its predicted class:
    (values, base value per row, margins, class index per row, method)."""
    import xgboost

    data = xgboost.DMatrix(x)
    margins = booster.predict(data, output_margin=True).astype(np.float64)
    contribs = booster.predict(data, pred_contribs=True).astype(np.float64)  # rows x K x (F+1)
    k = margins.argmax(axis=1)
    idx = np.arange(len(k))
    return (contribs[idx, k, :-1], contribs[idx, k, -1], margins[idx, k], k,
            "xgboost TreeSHAP (pred_contribs)")


def _tree_explain(booster, x: pd.DataFrame) -> tuple[np.ndarray, float, np.ndarray, str]:
    """Exact TreeSHAP of the margin (log-odds, or a regression's value): (values, base value,
    margins, method)."""
    import xgboost

    margin = booster.predict(xgboost.DMatrix(x), output_margin=True).astype(np.float64)
    explainer = _tree_explainer(booster)
    if explainer is None:
        values, base, method = _tree_shap(booster, x)
    else:
        # Additivity is measured and reported per row below, not raised on.
        values = explainer.shap_values(x, check_additivity=False)
        base, method = float(np.ravel(explainer.expected_value)[0]), "shap TreeExplainer"
    return np.asarray(values, dtype=np.float64), base, margin, method


@lru_cache(maxsize=4)
def _tree_explainer(booster):
    """SHAP's TreeExplainer of ``booster``, or None where SHAP cannot read it (XGBoost's
    ``pred_contribs`` then runs the same algorithm).

    Built once per booster (by identity; a served booster is never trained further): building
    parses every tree, 60 ms for 300 trees of depth 6 against 4 ms to explain a row.
    """
    try:
        return _import_shap().TreeExplainer(booster, model_output="raw")
    except Exception as exc:  # shap's booster parser lags XGBoost's format changes
        logger.warning("shap.TreeExplainer cannot read this booster (%s: %s); explaining it with "
                       "XGBoost's pred_contribs", type(exc).__name__, exc)
        return None


def _kernel_explain(predict: Callable[[pd.DataFrame], Any], x: pd.DataFrame,
                    background: pd.DataFrame, nsamples: int, seed: int, task: str = "binary",
                    column: int | None = None) -> tuple[np.ndarray, float, np.ndarray, str]:
    """Kernel SHAP of ``predict``'s log-odds (binary; with ``column``: of that class's
    probability) or value (regression): (values, base value, margins, method)."""
    shap = _import_shap()
    columns = list(x.columns)

    def explained(a: np.ndarray) -> np.ndarray:
        out = np.asarray(predict(pd.DataFrame(a, columns=columns)), dtype=np.float64)
        if column is not None:
            out = out[:, column]
        elif task == "regression":
            return out
        p = np.clip(out, _EPS, 1 - _EPS)
        return np.log(p / (1 - p))

    rows = x.to_numpy(dtype=np.float64, na_value=np.nan)
    with _seeded_numpy(seed):
        explainer = shap.KernelExplainer(explained, background.to_numpy(dtype=np.float64,
                                                                          na_value=np.nan))
        # l1_reg=False: shap's default keeps only 10 features non-zero when it samples.
        values = explainer.shap_values(rows, nsamples=nsamples, l1_reg=False, silent=True)
    return (np.asarray(values, dtype=np.float64).reshape(rows.shape),
            float(np.ravel(explainer.expected_value)[0]), explained(rows),
            f"shap KernelExplainer ({len(background)} background rows, {nsamples} samples)")


def _kernel_explain_classes(predict, x: pd.DataFrame, background: pd.DataFrame, nsamples: int,
                            seed: int, prediction: np.ndarray):
    """Kernel SHAP of a multiclass model, each row on the log-odds of its predicted class (the
    rows are explained in groups, one per class predicted)."""
    k = prediction.argmax(axis=1)
    values = np.zeros(x.shape, dtype=np.float64)
    base = np.zeros(len(x), dtype=np.float64)
    margin = np.zeros(len(x), dtype=np.float64)
    method = ""
    for cls in np.unique(k):
        rows = np.flatnonzero(k == cls)
        v, b, m, method = _kernel_explain(predict, x.iloc[rows], background, nsamples, seed,
                                          column=int(cls))
        values[rows], base[rows], margin[rows] = v, b, m
    return values, base, margin, k, method


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator (KernelExplainer draws from it) and restore it after.

    The global generator is shared: a thread drawing from it meanwhile would make the
    coalitions differ, not the additivity.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _import_shap():
    import warnings

    with warnings.catch_warnings():  # shap's colormaps use calls matplotlib deprecates
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap
    return shap
