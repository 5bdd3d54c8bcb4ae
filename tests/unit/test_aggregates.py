"""Windowed aggregates equal a straightforward pandas computation (brute force per row)."""

import numpy as np
import pandas as pd
import pytest

from mlplatform.datasets import make_transactions
from mlplatform.features import load_repo
from mlplatform.features.aggregates import _Locator, window_aggregates
from tests.projects import FRAUD

REPO = load_repo(FRAUD / "mlplatform.yaml")


def _reference(df: pd.DataFrame, view, keys: list[str]) -> pd.DataFrame:
    """Row by row, with boolean masks: obviously right, too slow for real data."""
    ts = view.timestamp_field
    rows = []
    for key, g in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for t in g[ts].unique():
            r = {**dict(zip(keys, key, strict=True)), ts: t}
            for f in view.features:
                if f.agg == "event_time":
                    r[f.name] = t.timestamp()
                elif f.agg == "time_since_prev":
                    prev = g.loc[g[ts] < t, ts]
                    r[f.name] = (t - prev.max()).total_seconds() if len(prev) else np.nan
                elif f.agg == "label_rate":
                    known = g[(g[ts] > t - f.window) & (g[ts] < t - f.label_delay)]
                    r[f.name] = known[f.column].mean() if len(known) else np.nan
                else:
                    win = g[(g[ts] > t - f.window) & (g[ts] <= t)]
                    r[f.name] = len(win) if f.agg == "count" else getattr(win[f.column], f.agg)()
            rows.append(r)
    return pd.DataFrame(rows)


def _data(seed=3):
    df = make_transactions(1500, n_users=25, n_merchants=8, days=20, seed=seed)
    # Adversarial: two events of one user at the same instant, and an exact duplicate time
    # exactly one window (1h) after another event of that user.
    df.loc[5, ["user_id", "event_timestamp"]] = df.loc[4, ["user_id", "event_timestamp"]].values
    df.loc[9, "user_id"] = df.loc[8, "user_id"]
    df.loc[9, "event_timestamp"] = df.loc[8, "event_timestamp"] + pd.Timedelta(hours=1)
    return df.sample(frac=1.0, random_state=seed)  # unsorted input


def _sorted(df, keys, ts):
    return df.sort_values([*keys, ts]).reset_index(drop=True)


@pytest.mark.parametrize("view_name", [v.name for v in REPO.feature_views])
def test_every_view_matches_the_brute_force_reference(view_name):
    view = REPO.view(view_name)
    keys = REPO.join_keys(view)
    df = _data()
    got = _sorted(window_aggregates(df, view, keys), keys, view.timestamp_field)
    ref = _sorted(_reference(df, view, keys), keys, view.timestamp_field)
    assert len(got) == len(ref)
    assert (got[keys].to_numpy() == ref[keys].to_numpy()).all()
    for f in view.feature_names:
        np.testing.assert_allclose(got[f].to_numpy(float), ref[f].to_numpy(float), rtol=1e-9,
                                   atol=1e-9, err_msg=f)


def test_window_edge_is_exclusive_and_same_time_rows_agree():
    view = REPO.view("user_activity")
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    df = pd.DataFrame({
        "user_id": ["u"] * 4,
        "event_timestamp": [t0, t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(hours=1),
                            t0 + pd.Timedelta(hours=1, seconds=1)],
        "amount": [10.0, 20.0, 30.0, 40.0], "country": ["US", "US", "FR", "US"],
        "device_type": ["desktop"] * 4})
    out = window_aggregates(df, view, ["user_id"]).set_index("event_timestamp")
    assert len(out) == 3                                    # one row per (user, time)
    at_1h = out.loc[t0 + pd.Timedelta(hours=1)]
    assert at_1h["user_txn_count_1h"] == 2                  # the event at t - 1h has left
    assert at_1h["user_txn_count_24h"] == 3                 # both same-time events counted
    assert at_1h["user_amount_mean_1h"] == pytest.approx(25.0)
    assert at_1h["user_distinct_countries_7d"] == 2
    assert at_1h["user_secs_since_prev"] == pytest.approx(3600.0)
    assert np.isnan(out.iloc[0]["user_amount_std_24h"])     # one value: no std


def test_label_rate_uses_only_labels_known_before_the_event():
    view = REPO.view("merchant_risk")                       # label_delay 1d, window 30d
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    times = [t0, t0 + pd.Timedelta(hours=12), t0 + pd.Timedelta(days=1),
             t0 + pd.Timedelta(days=1, seconds=1)]
    df = pd.DataFrame({"merchant_id": ["m"] * 4, "event_timestamp": times,
                       "amount": [1.0] * 4, "is_fraud": [1, 0, 1, 1]})
    out = window_aggregates(df, view, ["merchant_id"])["merchant_fraud_rate_30d"].tolist()
    # t0+12h: no label known yet; t0+1d: the t0 label arrives exactly now -> not yet known;
    # t0+1d+1s: only the t0 label (1) is known.
    assert np.isnan(out[0]) and np.isnan(out[1]) and np.isnan(out[2])
    assert out[3] == 1.0


def test_start_end_keep_history_but_filter_rows():
    view = REPO.view("user_activity")
    df = _data()
    full = window_aggregates(df, view, ["user_id"])
    start, end = pd.Timestamp("2026-01-05", tz="UTC"), pd.Timestamp("2026-01-09", tz="UTC")
    part = window_aggregates(df, view, ["user_id"], start=start, end=end)
    ts = full["event_timestamp"]
    expect = full[(ts >= start) & (ts < end)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expect)


def test_rank_fallback_gives_identical_results(monkeypatch):
    view = REPO.view("user_activity")
    df = _data()
    normal = window_aggregates(df, view, ["user_id"])

    def ranked(self, gid, t):
        self.gid, self.t0 = gid, int(t.min())
        self._ranked(t)

    monkeypatch.setattr(_Locator, "__init__", ranked)
    pd.testing.assert_frame_equal(window_aggregates(df, view, ["user_id"]), normal)


def test_std_is_exact_for_large_similar_amounts():
    view = REPO.view("user_activity")
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    n = 2000
    df = pd.DataFrame({"user_id": np.repeat(["a", "b"], n // 2),
                       "event_timestamp": [t0 + pd.Timedelta(minutes=i) for i in range(n)],
                       "amount": 1e6 + np.tile([0.0, 0.01], n // 2),
                       "country": "US", "device_type": "desktop"})
    out = window_aggregates(df, view, ["user_id"])
    ref = df.set_index("event_timestamp").groupby("user_id")["amount"].rolling("7D").std()
    np.testing.assert_allclose(out["user_amount_std_7d"].to_numpy(), ref.to_numpy(), rtol=1e-6,
                               atol=1e-9)


def test_empty_input_gives_typed_empty_output():
    view = REPO.view("user_activity")
    df = make_transactions(10, seed=0).iloc[:0]
    out = window_aggregates(df, view, ["user_id"])
    assert out.empty and list(out.columns) == ["user_id", "event_timestamp", *view.feature_names]
