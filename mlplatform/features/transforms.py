"""Feature transformations, defined once and used by the offline pipeline and by tests.

Every per-user feature for a transaction at time t uses only that user's transactions strictly
before it (sorted by time, then id), so training sees exactly what serving could have known:
no leakage from the future or from the row's own label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlplatform.datasets.transactions import CATEGORIES, COUNTRIES, DEVICE_TYPES

#: Model inputs, in the order the model is trained and served with.
FEATURE_COLUMNS: list[str] = [
    "amount",
    "amount_log",
    "amount_z_user",
    "amount_ratio_user",
    "user_txn_count",
    "hours_since_prev",
    "country_share_user",
    "device_share_user",
    "hour_of_day",
    "is_night",
    "day_of_week",
    "merchant_category_code",
    "country_code",
    "device_type_code",
]
#: Columns carried through next to the features (keys, time, label).
KEY_COLUMNS = ["transaction_id", "user_id", "merchant_id", "event_timestamp"]
LABEL_COLUMN = "is_fraud"

#: Fixed vocabularies: a code means the same thing offline and online; unknown values get -1.
VOCABULARIES: dict[str, list[str]] = {
    "merchant_category": list(CATEGORIES),
    "country": list(COUNTRIES),
    "device_type": list(DEVICE_TYPES),
}
_MAX_GAP_HOURS = 720.0  # a user's first transaction (or a month of silence) caps here
_MIN_STD = 0.2          # floor for the user's log-amount spread, so z-scores stay finite
_MIN_HISTORY = 3        # fewer prior transactions than this: no z-score (0.0)


def encode(column: str, values: pd.Series) -> np.ndarray:
    """Map categorical values to the fixed integer codes of :data:`VOCABULARIES` (unknown: -1)."""
    index = {v: i for i, v in enumerate(VOCABULARIES[column])}
    return values.map(index).fillna(-1).astype(np.int64).to_numpy()


def user_history_features(df: pd.DataFrame) -> pd.DataFrame:
    """Per-transaction features, each computed from the same user's earlier transactions only.

    Works on any batch that holds *all* rows of the users it contains (one user or many): the
    pipeline guarantees that by grouping on a hash of ``user_id``.

    Args:
        df: Raw transactions (:data:`~mlplatform.datasets.TRANSACTION_COLUMNS`, label optional).

    Returns:
        ``KEY_COLUMNS + FEATURE_COLUMNS (+ is_fraud if present)``, one row per input row,
        sorted by user, then time, then transaction id.
    """
    g = df.sort_values(["user_id", "event_timestamp", "transaction_id"], kind="stable")
    g = g.reset_index(drop=True)
    user = g.groupby("user_id", sort=False)
    amount = g["amount"].to_numpy(dtype=np.float64)
    la = np.log1p(amount)
    n_prior = user.cumcount().to_numpy(dtype=np.float64)
    safe_n = np.maximum(n_prior, 1.0)
    la_s = pd.Series(la)
    mean = (la_s.groupby(g["user_id"], sort=False).cumsum().to_numpy() - la) / safe_n
    sq = (la_s * la_s).groupby(g["user_id"], sort=False).cumsum().to_numpy() - la * la
    std = np.maximum(np.sqrt(np.maximum(sq / safe_n - mean * mean, 0.0)), _MIN_STD)
    ts = pd.to_datetime(g["event_timestamp"], utc=True)
    gap_h = ts.groupby(g["user_id"], sort=False).diff().dt.total_seconds().to_numpy() / 3600.0

    out = g[KEY_COLUMNS].copy()
    out["amount"] = amount
    out["amount_log"] = la
    out["amount_z_user"] = np.where(n_prior >= _MIN_HISTORY, (la - mean) / std, 0.0)
    out["amount_ratio_user"] = np.where(n_prior >= 1, (amount + 1.0) / np.exp(mean), 1.0)
    out["user_txn_count"] = n_prior.astype(np.int64)
    out["hours_since_prev"] = np.clip(np.nan_to_num(gap_h, nan=_MAX_GAP_HOURS), 0.0, _MAX_GAP_HOURS)
    # cumcount over (user, value) = how many earlier rows of this user had the same value.
    for col, name in (("country", "country_share_user"), ("device_type", "device_share_user")):
        same = g.groupby(["user_id", col], sort=False).cumcount().to_numpy()
        out[name] = np.where(n_prior > 0, same / safe_n, 0.0)
    out["hour_of_day"] = ts.dt.hour.to_numpy().astype(np.int64)
    out["is_night"] = (out["hour_of_day"] < 6).astype(np.int64)
    out["day_of_week"] = ts.dt.dayofweek.to_numpy().astype(np.int64)
    for col in VOCABULARIES:
        out[f"{col}_code"] = encode(col, g[col])
    if LABEL_COLUMN in g:
        out[LABEL_COLUMN] = g[LABEL_COLUMN].astype(np.int64).to_numpy()
    return out


def user_bucket(user_ids: pd.Series, num_buckets: int) -> np.ndarray:
    """A stable (process- and run-independent) hash bucket of each user id."""
    return (pd.util.hash_pandas_object(user_ids.astype(str), index=False).to_numpy()
            % np.uint64(num_buckets)).astype(np.int64)
