import numpy as np
import pandas as pd
import pytest

from mlplatform.datasets import make_transactions
from mlplatform.features import FEATURE_COLUMNS, KEY_COLUMNS, encode, user_history_features
from mlplatform.features.transforms import user_bucket


def _tx(rows):
    df = pd.DataFrame(rows, columns=["transaction_id", "user_id", "merchant_id", "event_timestamp",
                                     "amount", "merchant_category", "country", "device_type",
                                     "is_fraud"])
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df


HISTORY = _tx([
    ("t1", "u1", "m1", "2026-01-01 10:00", 10.0, "grocery", "US", "mobile_ios", 0),
    ("t2", "u1", "m1", "2026-01-01 12:00", 12.0, "grocery", "US", "mobile_ios", 0),
    ("t3", "u1", "m2", "2026-01-02 12:00", 11.0, "gas", "US", "mobile_ios", 0),
    ("t4", "u1", "m3", "2026-01-03 03:00", 900.0, "crypto", "NG", "desktop", 1),
    ("t5", "u2", "m1", "2026-01-01 09:00", 50.0, "grocery", "GB", "desktop", 0),
])


def test_output_columns_and_first_transaction_defaults():
    out = user_history_features(HISTORY)
    assert list(out.columns) == KEY_COLUMNS + FEATURE_COLUMNS + ["is_fraud"]
    first = out[out.transaction_id == "t1"].iloc[0]
    assert first.user_txn_count == 0 and first.amount_z_user == 0.0
    assert first.amount_ratio_user == 1.0 and first.hours_since_prev == 720.0
    assert first.country_share_user == 0.0 and first.device_share_user == 0.0


def test_history_features_use_only_earlier_rows():
    out = user_history_features(HISTORY).set_index("transaction_id")
    assert out.loc["t2", "hours_since_prev"] == pytest.approx(2.0)
    assert out.loc["t4", "user_txn_count"] == 3
    assert out.loc["t4", "country_share_user"] == 0.0       # NG never seen before
    assert out.loc["t4", "device_share_user"] == 0.0
    assert out.loc["t3", "country_share_user"] == 1.0
    assert out.loc["t4", "amount_z_user"] > 5                 # 900 vs ~11 usual
    assert out.loc["t4", "is_night"] == 1 and out.loc["t4", "hour_of_day"] == 3
    assert out.loc["t5", "user_txn_count"] == 0               # u2 has its own history


def test_no_leakage_from_the_future():
    """Adding later transactions must not change any earlier row's features."""
    df = make_transactions(3_000, seed=4)
    cutoff = df["event_timestamp"].quantile(0.6)
    early = user_history_features(df[df.event_timestamp <= cutoff]).set_index("transaction_id")
    full = user_history_features(df).set_index("transaction_id").loc[early.index]
    pd.testing.assert_frame_equal(early[FEATURE_COLUMNS], full[FEATURE_COLUMNS])


def test_batch_of_many_users_equals_one_user_at_a_time():
    df = make_transactions(2_000, seed=8)
    together = user_history_features(df).set_index("transaction_id").sort_index()
    apart = pd.concat(user_history_features(g) for _, g in df.groupby("user_id"))
    apart = apart.set_index("transaction_id").sort_index()
    pd.testing.assert_frame_equal(together[FEATURE_COLUMNS], apart[FEATURE_COLUMNS])


def test_label_does_not_feed_features():
    flipped = HISTORY.assign(is_fraud=1 - HISTORY["is_fraud"])
    a, b = user_history_features(HISTORY), user_history_features(flipped)
    pd.testing.assert_frame_equal(a[FEATURE_COLUMNS], b[FEATURE_COLUMNS])


def test_encode_unknown_is_minus_one():
    assert encode("country", pd.Series(["US", "ZZ"])).tolist() == [0, -1]


def test_user_bucket_is_stable_and_in_range():
    ids = pd.Series([f"u{i:06d}" for i in range(1000)])
    b1, b2 = user_bucket(ids, 16), user_bucket(ids.copy(), 16)
    assert np.array_equal(b1, b2) and b1.min() >= 0 and b1.max() < 16
    assert len(np.unique(b1)) == 16
