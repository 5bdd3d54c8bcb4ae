"""Behavioural checks of a model, through the same path a scoring request takes.

A project declares them (``evaluation.behavioural`` in ``mlplatform.yaml``). Each holdout row
holds the request fields and looked-up features it was made from, so a check changes a request
field and recomputes every model input with the project's own transformation, exactly as
serving would, then scores both versions:

- invariance (``invariance: [field, ...]``): a new value of the field (an id: ``"<id>-x"``; a
  number: +1) yields identical inputs and an identical prediction;
- directional (``directional: [{field, multiply | add, expect, tolerance, when}]``): the change
  does not move the prediction the other way than ``expect`` (binary: the score; regression:
  the value; multiclass: the probability of ``output``) on more than ``tolerance`` of the rows
  judged: every row, or those where the model input ``when.input`` is, after the change, within
  ``[when.min, when.max]`` (NaN: not judged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

_MIN_DELTA = 1e-6             # a prediction moved by less is float noise, not a move


def _changed(values: pd.Series, kind: str) -> pd.Series:
    """Another value of a field for an invariance check."""
    if kind in ("int", "float"):
        return values + 1
    if kind == "timestamp":
        return pd.to_datetime(values, utc=True) + pd.Timedelta(seconds=1)
    if kind == "bool":
        return ~values.astype(bool)
    return values.map(lambda v: None if v is None else f"{v}-x")


def judged_output(predictions: Any, task: str, classes: list[Any] | None, output: Any) -> np.ndarray:
    """The number a directional check watches: the score or value per row, or (multiclass) the
    probability of class ``output``."""
    values = np.asarray(predictions, dtype=np.float64)
    if task != "multiclass":
        return values.reshape(-1)
    index = [str(c) for c in (classes or [])].index(str(output))
    return values[:, index]


def check_batch(frame: pd.DataFrame, predict: Callable[[pd.DataFrame], Any], feature_names: list[str],
                project, task: str, classes: list[Any] | None = None) -> pd.DataFrame:
    """Per-row results of every check of ``project`` for one batch (:func:`summarize` adds
    them up).

    Args:
        frame: Holdout rows of the training-set layout (request fields, looked-up features, the
            model inputs).
        predict: DataFrame of the model's inputs -> predictions.
        feature_names: The model's input columns, in its order.
        project: The :class:`~mlplatform.project.Project` whose transformation and checks run.
        task, classes: The model's task and classes.

    Returns:
        ``raw_input_diff`` (largest |input rebuilt from the request - input in the data|), and
        per invariance field ``inv:<field>:inputs`` / ``inv:<field>:output`` (bool: unchanged),
        per directional check ``dir<i>:delta`` (the watched output's change) and
        ``dir<i>:judged`` (bool).
    """
    from mlplatform.features.training_set import raw_frame
    from mlplatform.project import model_inputs

    inputs = model_inputs(project)
    raw = raw_frame(frame, inputs.raw_columns)
    for name in inputs.fields:          # optional fields a holdout may not carry
        if name not in raw.columns:
            raw[name] = None
    kinds = {name: spec.type for name, spec in project.request.fields.items()}

    def inputs_of(rows: pd.DataFrame) -> pd.DataFrame:
        return inputs.frame(rows)

    def predictions(x: pd.DataFrame) -> Any:
        return predict(x[feature_names])

    base = inputs_of(raw)
    base_pred = np.asarray(predictions(base), dtype=np.float64)
    out: dict[str, Any] = {}
    a = base.to_numpy(dtype=np.float64)
    stored_cols = [c for c in base.columns if c in frame.columns]
    stored = frame[stored_cols].to_numpy(dtype=np.float64, na_value=np.nan)
    diff = np.abs(a[:, [list(base.columns).index(c) for c in stored_cols]] - stored)
    diff[np.isnan(diff) & np.isnan(stored)] = 0.0
    diff[np.isnan(diff)] = np.inf   # missing on one side only: not the same input
    out["raw_input_diff"] = diff.max(axis=1) if diff.size else np.zeros(len(frame))
    spec = project.evaluation.behavioural
    for field in spec.invariance:
        other = inputs_of(raw.assign(**{field: _changed(raw[field], kinds[field])}))
        b = other.to_numpy(dtype=np.float64)
        out[f"inv:{field}:inputs"] = ((a == b) | (np.isnan(a) & np.isnan(b))).all(axis=1)
        other_pred = np.asarray(predictions(other), dtype=np.float64)
        same = (base_pred == other_pred) | (np.isnan(base_pred) & np.isnan(other_pred))
        out[f"inv:{field}:output"] = same.reshape(len(frame), -1).all(axis=1)
    for i, check in enumerate(spec.directional):
        values = pd.to_numeric(raw[check.field], errors="coerce")
        new = values * check.multiply if check.multiply is not None else values + check.add
        scaled = inputs_of(raw.assign(**{check.field: new}))
        before = judged_output(base_pred, task, classes, check.output)
        after = judged_output(predictions(scaled), task, classes, check.output)
        out[f"dir{i}:delta"] = after - before
        judged = np.ones(len(frame), dtype=bool)
        if check.when is not None:
            w = scaled[check.when.input].to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                judged = ~np.isnan(w)
                if check.when.min is not None:
                    judged &= w >= check.when.min
                if check.when.max is not None:
                    judged &= w <= check.when.max
        out[f"dir{i}:judged"] = judged
    return pd.DataFrame(out, index=frame.index)


def summarize(rows: pd.DataFrame, project) -> dict[str, dict[str, Any]]:
    """Pass/fail with counts for each check, from the rows :func:`check_batch` returned.

    A directional check fails when no row qualifies (nothing was checked).
    """
    def num(col: str) -> np.ndarray:
        return rows[col].to_numpy(dtype=np.float64, na_value=np.nan)

    n = int(len(rows))
    spec = project.evaluation.behavioural
    out: dict[str, dict[str, Any]] = {}
    max_diff = float(num("raw_input_diff").max()) if n else 0.0
    for field in spec.invariance:
        changed_inputs = int((~rows[f"inv:{field}:inputs"].to_numpy(dtype=bool)).sum())
        changed_out = int((~rows[f"inv:{field}:output"].to_numpy(dtype=bool)).sum())
        out[f"invariance_{field}"] = {
            "passed": changed_inputs == 0 and changed_out == 0, "rows": n,
            "changed_inputs": changed_inputs, "changed_scores": changed_out,
            "max_input_diff_vs_dataset": max_diff,
            "description": f"{field} replaced: the model inputs and the prediction must not "
                           "change"}
    for i, check in enumerate(spec.directional):
        delta = num(f"dir{i}:delta")
        judged = rows[f"dir{i}:judged"].to_numpy(dtype=bool)
        wrong = delta < -_MIN_DELTA if check.expect == "up" else delta > _MIN_DELTA
        m = int(judged.sum())
        bad = int(wrong[judged].sum())
        share = bad / m if m else 1.0
        how = (f"x{check.multiply:g}" if check.multiply is not None else f"{check.add:+g}")
        where = "" if check.when is None else (
            f" where {check.when.input} (after the change) is in "
            f"[{check.when.min if check.when.min is not None else '-inf'}, "
            f"{check.when.max if check.when.max is not None else 'inf'}]")
        name = f"directional_{check.field}" + (f"_{i}" if f"directional_{check.field}" in out
                                               else "")
        out[name] = {
            "passed": m > 0 and share <= check.tolerance, "rows": m, "expect": check.expect,
            "change": how, "lowered" if check.expect == "up" else "raised": bad,
            "share_lowered" if check.expect == "up" else "share_raised": share,
            "tolerance": check.tolerance,
            "moved_as_expected": int((~wrong[judged] & (np.abs(delta[judged]) > _MIN_DELTA)
                                      ).sum()),
            "mean_delta": float(delta[judged].mean()) if m else 0.0,
            "min_delta": float(delta[judged].min()) if m else 0.0,
            "all_rows": {"rows": n, "wrong_way": int(wrong.sum()),
                         "share_wrong_way": float(wrong.mean()) if n else 0.0},
            "description": f"{check.field} {how} (inputs recomputed by the project's "
                           f"transformation) must not move the prediction "
                           f"{'down' if check.expect == 'up' else 'up'} on more than "
                           f"{check.tolerance:.0%} of the rows{where}"}
    return out
