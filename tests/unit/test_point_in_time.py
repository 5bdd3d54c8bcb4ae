"""The point-in-time join kernel against a brute-force reference, on adversarial data.

The Ray Data version (same kernel, shuffled by entity over many blocks) is checked against the
same reference in tests/integration/test_feature_store.py.
"""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlplatform.features.pit import join_local

T0 = pd.Timestamp("2026-01-01T00:00:00Z")
TTL = pd.Timedelta(hours=2)


def brute_force(entity: pd.DataFrame, feats: pd.DataFrame, keys, features, ttl) -> pd.DataFrame:
    """For each entity row: the latest feature row of its key with time <= t and > t - ttl."""
    out = entity.copy()
    for f in features:
        out[f] = np.nan
    for i, row in entity.iterrows():
        m = np.ones(len(feats), dtype=bool)
        for k in keys:
            m &= (feats[k] == row[k]).to_numpy()
        m &= (feats["ts"] <= row["as_of"]).to_numpy()
        if ttl is not None:
            m &= (feats["ts"] > row["as_of"] - ttl).to_numpy()
        cand = feats[m]
        if len(cand):
            best = cand[cand["ts"] == cand["ts"].max()].iloc[-1]
            for f in features:
                out.loc[i, f] = best[f]
    return out


def _run(entity, feats, keys, features, ttl):
    ttl_us = None if ttl is None else int(ttl.total_seconds() * 1e6)
    got = join_local(pa.Table.from_pandas(entity, preserve_index=False),
                     pa.Table.from_pandas(feats, preserve_index=False),
                     keys, features, "ts", "as_of", ttl_us).to_pandas()
    ref = brute_force(entity, feats, keys, features, ttl)
    order = ["row_id"]
    got, ref = got.sort_values(order).reset_index(drop=True), ref.sort_values(order).reset_index(drop=True)
    assert len(got) == len(entity)
    for f in features:
        np.testing.assert_allclose(got[f].to_numpy(float), ref[f].to_numpy(float), err_msg=f)
    return got


def test_adversarial_edges():
    h = pd.Timedelta(hours=1)
    feats = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b"],
        "ts": [T0, T0 + h, T0 + 3 * h, T0, T0],   # b: exact duplicate rows
        "x": [1.0, 2.0, 3.0, 7.0, 7.0]})
    entity = pd.DataFrame({
        "row_id": range(9),
        "user_id": ["a", "a", "a", "a", "a", "b", "b", "c", "a"],
        "as_of": [T0 - h,            # before any feature: null
                  T0,                # exactly at a feature time: visible
                  T0 + h - pd.Timedelta(microseconds=1),  # just before the 2nd row: 1st row
                  T0 + 3 * h,        # 2nd row is exactly ttl old, 3rd row is at t: 3rd
                  T0 + 3 * h - pd.Timedelta(microseconds=1),  # 2nd row 1us inside the ttl
                  T0 + TTL - pd.Timedelta(microseconds=1),    # duplicates, still valid
                  T0 + TTL,          # exactly at t - ttl: expired
                  T0,                # entity with no history
                  T0],               # duplicate entity row: answered twice
    })
    got = _run(entity, feats, ["user_id"], ["x"], TTL).set_index("row_id")["x"]
    assert np.isnan(got[0]) and got[1] == 1.0 and got[2] == 1.0 and got[3] == 3.0
    assert got[4] == 2.0 and got[5] == 7.0 and np.isnan(got[6]) and np.isnan(got[7])
    assert got[8] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ttl", [TTL, None])
def test_random_unsorted_data_with_compound_keys(seed, ttl):
    rng = np.random.default_rng(seed)
    n_f, n_e = 400, 300
    # Coarse times (minutes on a 10-minute grid) so equal timestamps are common.
    def times(n):
        return T0 + pd.to_timedelta(rng.integers(0, 60, n) * 10, unit="m")
    feats = pd.DataFrame({"user_id": rng.choice(list("abcdef"), n_f),
                          "country": rng.choice(["US", "FR"], n_f), "ts": times(n_f),
                          "x": rng.normal(size=n_f), "n": rng.integers(0, 100, n_f)})
    feats = feats.drop_duplicates(["user_id", "country", "ts"])   # one row per entity and time
    entity = pd.DataFrame({"row_id": range(n_e), "user_id": rng.choice(list("abcdefg"), n_e),
                           "country": rng.choice(["US", "FR"], n_e), "as_of": times(n_e),
                           "label": rng.integers(0, 2, n_e)})
    got = _run(entity, feats, ["user_id", "country"], ["x", "n"], ttl)
    assert (got["label"].to_numpy() == entity.sort_values("row_id")["label"].to_numpy()).all()


def test_no_future_leakage_property():
    """Whatever the data, no joined value comes from a feature row later than the entity time."""
    rng = np.random.default_rng(7)
    feats = pd.DataFrame({"user_id": rng.choice(list("ab"), 200),
                          "ts": T0 + pd.to_timedelta(rng.integers(0, 10_000, 200), unit="s")})
    feats = feats.drop_duplicates(["user_id", "ts"])
    feats["feat_time"] = feats["ts"].astype("int64") / 1e6 if feats["ts"].dt.unit == "us" else \
        feats["ts"].dt.as_unit("us").astype("int64") / 1e6
    entity = pd.DataFrame({"row_id": range(100), "user_id": rng.choice(list("ab"), 100),
                           "as_of": T0 + pd.to_timedelta(rng.integers(0, 10_000, 100), unit="s")})
    got = _run(entity, feats, ["user_id"], ["feat_time"], None)
    as_of_s = got["as_of"].dt.as_unit("us").astype("int64") / 1e6
    seen = got["feat_time"].notna()
    assert (got.loc[seen, "feat_time"] <= as_of_s[seen]).all()
