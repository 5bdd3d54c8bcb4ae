"""Model inputs of the fraud project: a raw transaction plus its entities' looked-up features.

``mlplatform.yaml`` names :func:`model_inputs` (``model_inputs.function``). The platform runs it
on training sets (Ray Data, offline) and on request rows (Ray Serve, online) with the same column
types, so training and serving compute the same inputs. Stored features come from the feature
views; what depends on the transaction itself (its amount against the user's usual, the time
since the user's last event, calendar fields, category codes) is computed here.

Columns it gets (numpy batch format): ``amount`` and every looked-up feature as float64 (NaN:
unknown or expired), the category fields as object arrays of str, ``event_timestamp`` as
datetime64[us] (UTC).
"""

from __future__ import annotations

import numpy as np

from mlplatform.datasets.transactions import CATEGORIES, COUNTRIES, DEVICE_TYPES

#: Fixed vocabularies: a code means the same thing offline and online; unknown values get -1.
#: (The request schema's enums and the data contract list the same values; the example's tests
#: keep them in sync.)
VOCABULARIES: dict[str, list[str]] = {
    "merchant_category": list(CATEGORIES),
    "country": list(COUNTRIES),
    "device_type": list(DEVICE_TYPES),
}
_CODES = {col: {v: i for i, v in enumerate(vocab)} for col, vocab in VOCABULARIES.items()}
_MAX_GAP_HOURS = 720.0   # no event in the look-back (or a first event): capped at 30 days
_MIN_STD = 1.0           # floor of the user's amount spread, so z-scores stay finite
#: Counts: no row in the TTL means nothing happened lately (0), not unknown.
_COUNTS = ["user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d",
           "user_distinct_countries_7d", "user_distinct_devices_7d",
           "user_country_txn_count_30d", "user_device_txn_count_30d", "merchant_txn_count_24h"]


def encode(column: str, values: np.ndarray) -> np.ndarray:
    """Map categorical values to the fixed integer codes of :data:`VOCABULARIES` (unknown: -1)."""
    index = _CODES[column]
    return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def _fill_nan(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` with NaN replaced by ``fill`` (cheaper than ``np.nan_to_num`` on one row)."""
    return np.where(np.isnan(values), fill, values)


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's input columns (``model_inputs.columns``) for a batch of transactions.

    Unknown counts become 0; unknown statistics stay NaN, which the model treats as missing.
    """
    amount = batch["amount"]
    event_s = batch["event_timestamp"].astype("datetime64[us]").astype(np.int64) / 1e6
    mean7 = batch["user_amount_mean_7d"]
    std7 = batch["user_amount_std_7d"]
    out: dict[str, np.ndarray] = {"amount": amount, "amount_log": np.log1p(amount)}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["amount_z_user_7d"] = (amount - mean7) / np.maximum(_fill_nan(std7, 0.0), _MIN_STD)
        out["amount_ratio_user_7d"] = (amount + 1.0) / (mean7 + 1.0)
    for name in _COUNTS:
        out[name] = _fill_nan(batch[name], 0.0)
    out["user_amount_std_7d"] = std7
    gap_h = (event_s - batch["user_last_event_at"]) / 3600.0
    out["hours_since_prev"] = np.clip(_fill_nan(gap_h, _MAX_GAP_HOURS), 0.0, _MAX_GAP_HOURS)
    out["merchant_fraud_rate_30d"] = batch["merchant_fraud_rate_30d"]
    # Calendar fields in UTC from epoch seconds (1970-01-01 was a Thursday: Monday = 0).
    days = np.floor(event_s / 86400.0)
    hour = np.floor((event_s - days * 86400.0) / 3600.0)
    out["hour_of_day"] = hour
    out["is_night"] = (hour < 6).astype(np.float64)
    out["day_of_week"] = (days + 3.0) % 7.0
    for col in VOCABULARIES:
        out[f"{col}_code"] = encode(col, batch[col])
    return out
