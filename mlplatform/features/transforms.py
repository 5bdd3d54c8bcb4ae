"""Model inputs: a raw transaction plus its entities' looked-up features -> the model's columns.

This on-demand transformation runs in exactly two places with the same code: on the training
set (entity rows joined point-in-time from the offline store) and in the Serve replica (the
request joined with the online store). Stored features come from the views in the feature
definitions; what depends on the request itself (its amount against the user's usual, the time
since the user's last event, calendar fields, category codes) is computed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlplatform.datasets.transactions import CATEGORIES, COUNTRIES, DEVICE_TYPES

#: What a scoring request carries: the raw transaction (label-free).
REQUEST_COLUMNS = ["transaction_id", "user_id", "merchant_id", "event_timestamp", "amount",
                   "merchant_category", "country", "device_type"]
#: Columns carried next to the model inputs in a training set (keys, time, label).
KEY_COLUMNS = ["transaction_id", "user_id", "merchant_id", "event_timestamp"]
LABEL_COLUMN = "is_fraud"

#: Stored features (from the feature views) the model reads, looked up per entity.
VIEW_FEATURES: list[str] = [
    "user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d",
    "user_amount_mean_24h", "user_amount_mean_7d", "user_amount_std_7d",
    "user_last_event_at", "user_distinct_countries_7d", "user_distinct_devices_7d",
    "merchant_fraud_rate_30d", "merchant_txn_count_24h",
    "user_country_txn_count_30d", "user_device_txn_count_30d",
]
#: Model inputs, in the order the model is trained and served with.
FEATURE_COLUMNS: list[str] = [
    "amount", "amount_log", "amount_z_user_7d", "amount_ratio_user_7d",
    "user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d", "user_amount_std_7d",
    "hours_since_prev", "user_distinct_countries_7d", "user_distinct_devices_7d",
    "user_country_txn_count_30d", "user_device_txn_count_30d",
    "merchant_fraud_rate_30d", "merchant_txn_count_24h",
    "hour_of_day", "is_night", "day_of_week",
    "merchant_category_code", "country_code", "device_type_code",
]

#: Fixed vocabularies: a code means the same thing offline and online; unknown values get -1.
VOCABULARIES: dict[str, list[str]] = {
    "merchant_category": list(CATEGORIES),
    "country": list(COUNTRIES),
    "device_type": list(DEVICE_TYPES),
}
_MAX_GAP_HOURS = 720.0   # no event in the look-back (or a first event): capped at 30 days
_MIN_STD = 1.0           # floor of the user's amount spread, so z-scores stay finite


def encode(column: str, values: pd.Series) -> np.ndarray:
    """Map categorical values to the fixed integer codes of :data:`VOCABULARIES` (unknown: -1)."""
    index = {v: i for i, v in enumerate(VOCABULARIES[column])}
    return values.map(index).fillna(-1).astype(np.int64).to_numpy()


def model_inputs(df: pd.DataFrame) -> pd.DataFrame:
    """The model's :data:`FEATURE_COLUMNS` for rows of request fields + looked-up features.

    Args:
        df: :data:`REQUEST_COLUMNS` (``event_timestamp`` is the transaction time) and
            :data:`VIEW_FEATURES` (None/NaN where the entity is unknown or its row expired).

    Returns:
        A frame with :data:`FEATURE_COLUMNS` (float64; unknown counts become 0, unknown
        statistics stay NaN, which the model treats as missing).
    """
    missing = [c for c in ["amount", "event_timestamp", *VOCABULARIES, *VIEW_FEATURES]
               if c not in df]
    if missing:
        raise KeyError(f"model_inputs needs column(s) {missing}")
    f = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
         for c in VIEW_FEATURES}
    amount = df["amount"].to_numpy(dtype=np.float64)
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    now_s = ts.dt.as_unit("us").astype("int64").to_numpy() / 1e6
    mean7, std7 = f["user_amount_mean_7d"], f["user_amount_std_7d"]
    out = pd.DataFrame(index=df.index)
    out["amount"] = amount
    out["amount_log"] = np.log1p(amount)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["amount_z_user_7d"] = (amount - mean7) / np.maximum(np.nan_to_num(std7, nan=0.0),
                                                                _MIN_STD)
        out["amount_ratio_user_7d"] = (amount + 1.0) / (mean7 + 1.0)
    for c in ("user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d",
              "user_distinct_countries_7d", "user_distinct_devices_7d",
              "user_country_txn_count_30d", "user_device_txn_count_30d", "merchant_txn_count_24h"):
        out[c] = np.nan_to_num(f[c], nan=0.0)     # no row in the TTL = nothing happened lately
    out["user_amount_std_7d"] = std7
    gap_h = (now_s - f["user_last_event_at"]) / 3600.0
    out["hours_since_prev"] = np.clip(np.nan_to_num(gap_h, nan=_MAX_GAP_HOURS), 0.0,
                                      _MAX_GAP_HOURS)
    out["merchant_fraud_rate_30d"] = f["merchant_fraud_rate_30d"]
    out["hour_of_day"] = ts.dt.hour.to_numpy().astype(np.float64)
    out["is_night"] = (out["hour_of_day"] < 6).astype(np.float64)
    out["day_of_week"] = ts.dt.dayofweek.to_numpy().astype(np.float64)
    for col in VOCABULARIES:
        out[f"{col}_code"] = encode(col, df[col]).astype(np.float64)
    return out[FEATURE_COLUMNS]
