import numpy as np
import pandas as pd
import pytest

from mlplatform.datasets import DRIFT_KEYS, TRANSACTION_COLUMNS, make_transactions

N = 40_000


@pytest.fixture(scope="module")
def df():
    return make_transactions(N, seed=5)


def test_schema_and_types(df):
    assert list(df.columns) == TRANSACTION_COLUMNS
    assert len(df) == N
    assert str(df["event_timestamp"].dt.tz) == "UTC"
    assert df["transaction_id"].is_unique
    assert df["event_timestamp"].is_monotonic_increasing
    assert set(df["is_fraud"].unique()) == {0, 1}
    assert (df["amount"] > 0).all()


def test_same_seed_same_data_other_seed_differs():
    a, b = make_transactions(5_000, seed=1), make_transactions(5_000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c = make_transactions(5_000, seed=2)
    assert not a["amount"].equals(c["amount"])


def test_fraud_rate_is_realistic(df):
    assert 0.01 <= df["is_fraud"].mean() <= 0.03


def test_amounts_are_heavy_tailed(df):
    assert df["amount"].mean() > 1.3 * df["amount"].median()
    assert df["amount"].quantile(0.999) > 10 * df["amount"].median()


def test_fraud_follows_learnable_patterns(df):
    fraud, legit = df[df.is_fraud == 1], df[df.is_fraud == 0]
    night = df["event_timestamp"].dt.hour < 6
    assert df[night].is_fraud.mean() > 3 * df[~night].is_fraud.mean()
    # Users have a home country; fraud happens abroad far more often.
    home = df.groupby("user_id")["country"].agg(lambda s: s.mode().iloc[0])
    abroad = df["country"] != df["user_id"].map(home)
    assert df[abroad].is_fraud.mean() > 5 * df[~abroad].is_fraud.mean()
    risky = df["merchant_category"].isin(["gift_cards", "crypto", "jewelry", "electronics"])
    assert fraud[["amount"]].median().iloc[0] > legit[["amount"]].median().iloc[0]
    assert risky[df.is_fraud == 1].mean() > 2 * risky[df.is_fraud == 0].mean()


def test_users_have_habits(df):
    # Most of a user's transactions use the same device type.
    top_share = df.groupby("user_id")["device_type"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    assert top_share.median() > 0.6


@pytest.mark.parametrize("key,strength", [("amount", 0.8), ("country", 0.3),
                                          ("device_type", 0.4), ("merchant_category", 0.3),
                                          ("hour", 0.3)])
def test_drift_shifts_named_column_only(key, strength):
    base = make_transactions(20_000, seed=9)
    drifted = make_transactions(20_000, seed=9, drift={key: strength})
    col = {"hour": "event_timestamp"}.get(key, key)

    def dist(frame, c):
        if c == "amount":
            return np.log(frame["amount"]).mean()
        if c == "event_timestamp":
            return (frame["event_timestamp"].dt.hour < 6).mean()
        if c == "country":
            return (frame["country"] != "US").mean()
        if c == "device_type":
            # Share of each user's rows not on the user's most common device.
            top = frame.groupby("user_id")["device_type"].transform(lambda s: s.mode().iloc[0])
            return (frame["device_type"] != top).mean()
        return frame[c].isin(["online_retail", "gaming"]).mean()

    assert abs(dist(drifted, col) - dist(base, col)) > 0.05
    others = [c for c in ("amount", "event_timestamp", "country", "merchant_category") if c != col]
    for other in others:
        if key == "device_type" or (key == "country" and other == "amount"):
            continue
        assert abs(dist(drifted, other) - dist(base, other)) < 0.02, other


def test_fraud_rate_drift():
    base = make_transactions(20_000, seed=3)["is_fraud"].mean()
    more = make_transactions(20_000, seed=3, drift={"fraud_rate": 2.0})["is_fraud"].mean()
    assert more > 1.6 * base


@pytest.mark.parametrize("drift,match", [({"amout": 1.0}, "unknown drift key 'amout'"),
                                         ({"country": 1.5}, "within \\[0, 1\\]"),
                                         ({"fraud_rate": 0}, "> 0")])
def test_bad_drift_is_rejected_with_allowed_keys(drift, match):
    with pytest.raises(ValueError, match=match) as exc:
        make_transactions(100, drift=drift)
    if "unknown" in match:
        for key in DRIFT_KEYS:
            assert key in str(exc.value)


def test_bad_sizes():
    with pytest.raises(ValueError, match="n_rows"):
        make_transactions(0)
