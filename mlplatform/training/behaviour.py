"""Behavioural checks of a fraud model, through the same path a scoring request takes.

A training-set row holds model inputs, not the request: :func:`raw_requests` rebuilds the
request fields and looked-up features that :func:`~mlplatform.features.transforms.model_inputs`
turns into those inputs (it is its inverse on the columns it reads), so a check can change a
request field (``transaction_id``, ``amount``) and recompute every input that depends on it
exactly as serving would.

- invariance: a different ``transaction_id`` yields identical inputs and an identical score;
- directional: ``amount`` x ``factor`` does not lower the score where the new amount is much
  larger than the user's usual (at least :data:`MIN_RATIO` times their 7-day mean). Rows where
  it is not (tiny "card-testing" charges stay below the usual even x10, and tiny charges are a
  fraud pattern the model rightly scores high) are reported apart, not judged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.features.transforms import (
    FEATURE_COLUMNS,
    VIEW_FEATURES,
    VOCABULARIES,
    model_inputs,
)

#: Value a code of -1 (outside the vocabulary) decodes to.
UNKNOWN = "<unknown>"
#: Directional check: pass while at most this share of the judged rows gets a lower score.
DIRECTIONAL_TOLERANCE = 0.02
#: Directional check: rows whose scaled amount is at least this multiple of the user's 7-day
#: mean (``amount_ratio_user_7d`` after scaling) are judged.
MIN_RATIO = 3.0
_MIN_DROP = 1e-6              # a score lower by less is float noise, not a lower score
_GAP_CAP_HOURS = 720.0       # transforms' cap of hours_since_prev: no previous event known
_COUNTS = ["user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d",
           "user_distinct_countries_7d", "user_distinct_devices_7d",
           "user_country_txn_count_30d", "user_device_txn_count_30d", "merchant_txn_count_24h",
           "merchant_fraud_rate_30d", "user_amount_std_7d"]
# A Monday: stands in for the date when rows carry no event_timestamp (only hour and weekday
# reach the model, and they are rebuilt exactly).
_EPOCH = pd.Timestamp("2024-01-01", tz="UTC")


def decode(column: str, codes) -> np.ndarray:
    """Integer codes of :data:`VOCABULARIES` ``column`` back to values (-1: :data:`UNKNOWN`)."""
    vocab = np.array([*VOCABULARIES[column], UNKNOWN], dtype=object)
    c = np.asarray(codes, dtype=np.float64)
    idx = np.where((c >= 0) & (c < len(vocab) - 1), np.nan_to_num(c, nan=-1), -1).astype(np.int64)
    return vocab[idx]


def raw_requests(frame: pd.DataFrame) -> pd.DataFrame:
    """Request fields + looked-up features that ``model_inputs`` maps back to ``frame``'s inputs.

    Args:
        frame: Training-set rows: every :data:`FEATURE_COLUMNS` column, optionally
            ``transaction_id``, ``user_id``, ``merchant_id`` and ``event_timestamp``.

    Returns:
        A frame with the request columns and :data:`VIEW_FEATURES`, same index. The user's
        7-day mean amount comes back from ``amount_ratio_user_7d`` and the time of the user's
        previous event from ``hours_since_prev``; features the model does not read
        (``user_amount_mean_24h``) are NaN.

    Raises:
        KeyError: A feature column is missing.
    """
    missing = [c for c in FEATURE_COLUMNS if c not in frame]
    if missing:
        raise KeyError(f"behavioural checks need the training-set column(s) {missing}")
    n = len(frame)
    raw = pd.DataFrame(index=frame.index)
    for col, default in (("transaction_id", None), ("user_id", "user"), ("merchant_id", "merchant")):
        if col in frame:
            raw[col] = frame[col].to_numpy()
        else:
            raw[col] = [f"row-{i}" for i in range(n)] if default is None else default
    amount = frame["amount"].to_numpy(dtype=np.float64)
    if "event_timestamp" in frame:
        ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    else:
        offset = (frame["day_of_week"].to_numpy() * 24 + frame["hour_of_day"].to_numpy()) * 3600
        ts = pd.Series(_EPOCH + pd.to_timedelta(offset + 1800, unit="s"), index=frame.index)
    raw["event_timestamp"] = ts.to_numpy()
    raw["amount"] = amount
    for col in VOCABULARIES:
        raw[col] = decode(col, frame[f"{col}_code"])
    for col in _COUNTS:
        raw[col] = frame[col].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw["user_amount_mean_7d"] = (amount + 1.0) / frame["amount_ratio_user_7d"].to_numpy(
            dtype=np.float64) - 1.0
    raw["user_amount_mean_24h"] = np.nan
    gap_h = frame["hours_since_prev"].to_numpy(dtype=np.float64)
    now_s = pd.to_datetime(ts, utc=True).dt.as_unit("us").astype("int64").to_numpy() / 1e6
    raw["user_last_event_at"] = np.where(gap_h >= _GAP_CAP_HOURS, np.nan, now_s - gap_h * 3600.0)
    return raw[[*(c for c in raw.columns if c not in VIEW_FEATURES), *VIEW_FEATURES]]


def check_batch(frame: pd.DataFrame, predict: Callable[[pd.DataFrame], Any],
                feature_names: list[str], factor: float = 10.0) -> pd.DataFrame:
    """Per-row results of both checks for one batch (summed up by :func:`summarize`).

    Returns:
        Columns ``inv_same_inputs`` / ``inv_same_score`` (bool), ``score_raw`` (the score via
        the request path), ``score_scaled`` (with ``amount`` x ``factor``) and
        ``raw_input_diff`` (largest |input rebuilt from the request - input in the data|) and
        ``scaled_ratio`` (``amount_ratio_user_7d`` after scaling; NaN: user has no history).
    """
    raw = raw_requests(frame)
    base = model_inputs(raw)
    changed = raw.assign(transaction_id=[f"{t}-x" for t in raw["transaction_id"].astype(str)])
    other = model_inputs(changed)
    scaled = model_inputs(raw.assign(amount=raw["amount"] * factor))
    s_base = np.asarray(predict(base[feature_names]), dtype=np.float64)
    s_other = np.asarray(predict(other[feature_names]), dtype=np.float64)
    s_scaled = np.asarray(predict(scaled[feature_names]), dtype=np.float64)
    a, b = base.to_numpy(dtype=np.float64), other.to_numpy(dtype=np.float64)
    same_inputs = ((a == b) | (np.isnan(a) & np.isnan(b))).all(axis=1)
    stored = frame[FEATURE_COLUMNS].to_numpy(dtype=np.float64)
    diff = np.abs(a - stored)
    diff[np.isnan(a) & np.isnan(stored)] = 0.0
    diff[np.isnan(diff)] = np.inf  # missing on one side only: not the same input
    return pd.DataFrame({"inv_same_inputs": same_inputs, "inv_same_score": s_base == s_other,
                         "score_raw": s_base, "score_scaled": s_scaled,
                         "raw_input_diff": diff.max(axis=1),
                         "scaled_ratio": scaled["amount_ratio_user_7d"].to_numpy()},
                        index=frame.index)


def summarize(rows: pd.DataFrame, factor: float = 10.0, tolerance: float = DIRECTIONAL_TOLERANCE,
              min_ratio: float = MIN_RATIO) -> dict[str, dict[str, Any]]:
    """Pass/fail with counts for each check, from the rows :func:`check_batch` returned.

    The directional check fails when no row qualifies (nothing was checked).
    """
    def num(col: str) -> np.ndarray:
        return rows[col].to_numpy(dtype=np.float64, na_value=np.nan)

    n = int(len(rows))
    inv_inputs = int((~rows["inv_same_inputs"].to_numpy(dtype=bool)).sum())
    inv_scores = int((~rows["inv_same_score"].to_numpy(dtype=bool)).sum())
    delta = num("score_scaled") - num("score_raw")
    down = delta < -_MIN_DROP
    with np.errstate(invalid="ignore"):
        judged = num("scaled_ratio") >= min_ratio     # NaN (no history): not judged
    m = int(judged.sum())
    lowered = int(down[judged].sum())
    share = lowered / m if m else 1.0
    return {
        "invariance_transaction_id": {
            "passed": inv_inputs == 0 and inv_scores == 0, "rows": n,
            "changed_inputs": inv_inputs, "changed_scores": inv_scores,
            "max_input_diff_vs_dataset": float(num("raw_input_diff").max()) if n else 0.0,
            "description": "transaction_id replaced: model_inputs and the score must not change"},
        "directional_amount": {
            "passed": m > 0 and share <= tolerance, "rows": m, "factor": factor,
            "min_ratio": min_ratio, "lowered": lowered, "share_lowered": share,
            "tolerance": tolerance,
            "raised": int((delta[judged] > _MIN_DROP).sum()),
            "mean_delta": float(delta[judged].mean()) if m else 0.0,
            "min_delta": float(delta[judged].min()) if m else 0.0,
            "all_rows": {"rows": n, "lowered": int(down.sum()),
                         "share_lowered": float(down.mean()) if n else 0.0},
            "description": f"amount x{factor:g} (amount-derived inputs recomputed by "
                           f"model_inputs) must not lower the score on more than {tolerance:.0%} "
                           f"of the rows where it makes the amount >= {min_ratio:g}x the "
                           "user's 7-day mean"},
    }
