"""Model inputs: a raw transaction plus its entities' looked-up features -> the model's columns.

This on-demand transformation runs in exactly two places with the same code: on the training
set (entity rows joined point-in-time from the offline store) and in the Serve replica (the
request joined with the online store). Stored features come from the views in the feature
definitions; what depends on the request itself (its amount against the user's usual, the time
since the user's last event, calendar fields, category codes) is computed here.
"""

from __future__ import annotations

from datetime import timezone

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


def encode(column: str, values) -> np.ndarray:
    """Map categorical values to the fixed integer codes of :data:`VOCABULARIES` (unknown: -1).

    ``values`` is a pandas Series (training sets: vectorised ``map``) or any sequence (a few
    request rows: a dict lookup each, without pandas' per-call overhead).
    """
    index = {v: i for i, v in enumerate(VOCABULARIES[column])}
    if isinstance(values, pd.Series):
        return values.map(index).fillna(-1).astype(np.int64).to_numpy()
    return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))


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
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    matrix = _inputs_matrix(
        amount=df["amount"].to_numpy(dtype=np.float64),
        event_s=ts.dt.as_unit("us").astype("int64").to_numpy() / 1e6,
        views={c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
               for c in VIEW_FEATURES},
        codes={col: encode(col, df[col]) for col in VOCABULARIES})
    return pd.DataFrame(matrix, columns=FEATURE_COLUMNS, index=df.index)


def model_inputs_matrix(records: list[dict], looked_up: dict[str, list]) -> np.ndarray:
    """:func:`model_inputs` for a few request rows, as a float64 matrix (rows x FEATURE_COLUMNS).

    The serving path: the same arithmetic (:func:`_inputs_matrix`) without building DataFrames,
    which cost ~9 ms per request against ~0.1 ms for this.

    Args:
        records: Request fields (:data:`REQUEST_COLUMNS`); ``event_timestamp`` a ``datetime``
            (naive means UTC).
        looked_up: :data:`VIEW_FEATURES` -> one value per record (None: unknown or expired).
    """
    def column(name: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in looked_up[name]], dtype=np.float64)

    return _inputs_matrix(
        amount=np.array([r["amount"] for r in records], dtype=np.float64),
        event_s=np.array([_epoch_s(r["event_timestamp"]) for r in records], dtype=np.float64),
        views={c: column(c) for c in VIEW_FEATURES},
        codes={col: encode(col, [r[col] for r in records]) for col in VOCABULARIES})


def _epoch_s(ts) -> float:
    """UTC epoch seconds of a datetime; a naive one is UTC (as ``pd.to_datetime(utc=True)``)."""
    return (ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts).timestamp()


def _fill_nan(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` with NaN replaced by ``fill`` (what ``np.nan_to_num(nan=fill)`` does to these
    columns, none of which can be infinite, at a tenth of its cost on the one-row serving path)."""
    return np.where(np.isnan(values), fill, values)


def _inputs_matrix(amount: np.ndarray, event_s: np.ndarray, views: dict[str, np.ndarray],
                   codes: dict[str, np.ndarray]) -> np.ndarray:
    """The on-demand transformation itself, on numpy columns (``event_s``: UTC epoch seconds)."""
    mean7, std7 = views["user_amount_mean_7d"], views["user_amount_std_7d"]
    out: dict[str, np.ndarray] = {"amount": amount, "amount_log": np.log1p(amount)}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["amount_z_user_7d"] = (amount - mean7) / np.maximum(_fill_nan(std7, 0.0), _MIN_STD)
        out["amount_ratio_user_7d"] = (amount + 1.0) / (mean7 + 1.0)
    for c in ("user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d",
              "user_distinct_countries_7d", "user_distinct_devices_7d",
              "user_country_txn_count_30d", "user_device_txn_count_30d", "merchant_txn_count_24h"):
        out[c] = _fill_nan(views[c], 0.0)   # no row in the TTL = nothing happened lately
    out["user_amount_std_7d"] = std7
    gap_h = (event_s - views["user_last_event_at"]) / 3600.0
    out["hours_since_prev"] = np.clip(_fill_nan(gap_h, _MAX_GAP_HOURS), 0.0, _MAX_GAP_HOURS)
    out["merchant_fraud_rate_30d"] = views["merchant_fraud_rate_30d"]
    # Calendar fields in UTC from epoch seconds (1970-01-01 was a Thursday: Monday = 0).
    days = np.floor(event_s / 86400.0)
    out["hour_of_day"] = np.floor((event_s - days * 86400.0) / 3600.0)
    out["is_night"] = (out["hour_of_day"] < 6).astype(np.float64)
    out["day_of_week"] = (days + 3.0) % 7.0
    for col, code in codes.items():
        out[f"{col}_code"] = code.astype(np.float64)
    return np.column_stack([out[c] for c in FEATURE_COLUMNS]).astype(np.float64, copy=False)
