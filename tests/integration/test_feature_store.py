"""The feature store on a real Ray cluster: build, versions, point-in-time join, materialize."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mlplatform.config import PlatformConfig
from mlplatform.datasets import RAW_DIR, make_transactions, save_transactions
from mlplatform.errors import DataValidationError
from mlplatform.features import FeatureStore, FeatureStoreError, load_repo
from tests.projects import FRAUD
from tests.unit.test_point_in_time import brute_force

N_ROWS = 6000
DAYS = 20


@pytest.fixture(scope="module")
def raw():
    return make_transactions(N_ROWS, n_users=120, n_merchants=25, days=DAYS, seed=21)


@pytest.fixture(scope="module")
def store(ray_cluster, tmp_path_factory, raw):
    config = PlatformConfig(storage_root=tmp_path_factory.mktemp("fs"), project=FRAUD)
    save_transactions(raw, config.path(*RAW_DIR))
    fs = FeatureStore(config)
    fs.build()
    return fs


def _offline(fs, view):
    return fs.read_view(view).to_pandas()


def test_build_writes_a_versioned_date_partitioned_store_with_a_manifest(store, raw):
    repo = store.repo
    for view in repo.feature_views:
        m = store.offline.manifest(view.name)
        assert m.num_rows > 0 and m.definition_hash == repo.definition_hash(view.name)
        assert set(m.data["schema"]) == {*repo.join_keys(view), view.timestamp_field,
                                          *view.feature_names}
        assert m.data["source"]["num_files"] >= 1 and len(m.data["source"]["fingerprint"]) == 64
        assert all(f.startswith("date=") for f in m.data["files"])
        days = {f.split("/")[0] for f in m.data["files"]}
        assert len(days) == raw["event_timestamp"].dt.normalize().nunique()
    # One row per (entity, time): users rarely have two events at one instant.
    ua = store.offline.manifest("user_activity")
    assert ua.num_rows == raw[["user_id", "event_timestamp"]].drop_duplicates().shape[0]


def test_offline_values_equal_the_single_process_computation(store, raw):
    from mlplatform.features.aggregates import window_aggregates

    for view in store.repo.feature_views:
        keys = store.repo.join_keys(view)
        got = _offline(store, view.name).sort_values([*keys, "event_timestamp"])
        ref = window_aggregates(raw, view, keys).sort_values([*keys, "event_timestamp"])
        assert len(got) == len(ref)
        for f in view.feature_names:
            np.testing.assert_allclose(got[f].to_numpy(float), ref[f].to_numpy(float),
                                       rtol=1e-9, err_msg=f"{view.name}.{f}")


def test_point_in_time_join_on_ray_matches_brute_force_for_several_views(store, raw):
    rng = np.random.default_rng(0)
    n = 400
    users = raw["user_id"].unique()
    picks = raw.sample(n, random_state=1)
    entity = pd.DataFrame({
        "row_id": np.arange(n + 20),
        # some unknown users, and duplicates of real rows
        "user_id": np.r_[picks["user_id"].to_numpy(), ["nobody"] * 10, picks["user_id"].iloc[:10]],
        "merchant_id": np.r_[picks["merchant_id"].to_numpy(), ["m-none"] * 10,
                             picks["merchant_id"].iloc[:10]],
        "country": np.r_[picks["country"].to_numpy(), ["DE"] * 10, picks["country"].iloc[:10]],
        # exactly at event times (visible), just before, and random times
        "as_of": np.r_[(picks["event_timestamp"] + pd.to_timedelta(
            rng.choice([0, -1, 3_600_000_000], n), unit="us")).to_numpy(),
            picks["event_timestamp"].iloc[:10].to_numpy(), picks["event_timestamp"].iloc[:10].to_numpy()],
    })
    entity["as_of"] = pd.to_datetime(entity["as_of"], utc=True)
    assert len(set(users)) > 50
    features = ["user_activity:user_txn_count_24h", "user_activity:user_amount_mean_7d",
                "merchant_risk:merchant_fraud_rate_30d",
                "user_country_history:user_country_txn_count_30d"]   # compound key
    got = store.get_historical_features(entity.sample(frac=1.0, random_state=2), features,
                                        timestamp_column="as_of", num_buckets=7).to_pandas()
    got = got.sort_values("row_id").reset_index(drop=True)
    assert len(got) == len(entity)
    for view_name, names in store.repo.resolve(features).items():
        view = store.repo.view(view_name)
        feats = _offline(store, view_name).rename(columns={"event_timestamp": "ts"})
        ref = brute_force(entity, feats, store.repo.join_keys(view), names, view.ttl)
        for f in names:
            np.testing.assert_allclose(got[f].to_numpy(float), ref[f].to_numpy(float), err_msg=f)
    assert got.loc[entity["user_id"] == "nobody", "user_txn_count_24h"].isna().all()


def test_views_sharing_join_keys_are_joined_in_one_pass(store, raw, tmp_path):
    """Two views on user_id (different TTLs) in one partitioned pass: each as of its own TTL."""
    data = json.loads(json.dumps(load_repo(FRAUD / "mlplatform.yaml").model_dump(
        mode="json", exclude={"base_dir"})))
    ua = next(v for v in data["feature_views"] if v["name"] == "user_activity")
    short = {**ua, "name": "user_recent", "ttl": "2h",
             "features": [{"name": "user_recent_count_1h", "agg": "count", "window": "1h"}]}
    data["feature_views"] = [ua, short]
    data["sources"][0]["path"] = str(store.source_path("transactions"))
    data["sources"][0]["contract"] = None
    fs = FeatureStore(PlatformConfig(storage_root=tmp_path, project=FRAUD), repo=data)
    fs.build(num_buckets=8)
    picks = raw.sample(300, random_state=5)
    entity = pd.DataFrame({"row_id": np.arange(300), "user_id": picks["user_id"].to_numpy(),
                           "as_of": picks["event_timestamp"].to_numpy() + pd.Timedelta(hours=3)})
    entity["as_of"] = pd.to_datetime(entity["as_of"], utc=True)
    got = fs.get_historical_features(entity, ["user_txn_count_7d", "user_recent_count_1h"],
                                     timestamp_column="as_of", num_buckets=5).to_pandas()
    got = got.sort_values("row_id").reset_index(drop=True)
    for view_name, names in fs.repo.resolve(["user_txn_count_7d", "user_recent_count_1h"]).items():
        feats = fs.read_view(view_name).to_pandas().rename(columns={"event_timestamp": "ts"})
        ref = brute_force(entity, feats, ["user_id"], names, fs.repo.view(view_name).ttl)
        np.testing.assert_allclose(got[names[0]].to_numpy(float), ref[names[0]].to_numpy(float),
                                   err_msg=names[0])
    # The 2h TTL expires rows the 7d one keeps: a real difference, not a shared result.
    assert got["user_recent_count_1h"].isna().sum() > got["user_txn_count_7d"].isna().sum()


def test_entity_rows_without_a_time_are_refused_with_the_column_named(store, raw):
    entity = pd.DataFrame({"user_id": raw["user_id"].iloc[:3].to_numpy(),
                           "as_of": [pd.Timestamp("2026-01-05", tz="UTC"), pd.NaT, pd.NaT]})
    with pytest.raises(ValueError, match="null values in the timestamp column 'as_of'"):
        store.get_historical_features(entity, ["user_txn_count_24h"], timestamp_column="as_of")


def test_materialize_then_online_equals_historical(store, raw):
    cut = pd.Timestamp("2026-01-15", tz="UTC")
    written = store.materialize(end=cut)
    assert written["user_activity"] == raw.loc[raw.event_timestamp < cut, "user_id"].nunique()
    assert store.online.get_watermark("user_activity") == cut
    sample = raw[raw.event_timestamp < cut].drop_duplicates("user_id").head(40)
    rows = [{"user_id": u, "merchant_id": m, "country": c, "device_type": d}
            for u, m, c, d in sample[["user_id", "merchant_id", "country", "device_type"]].to_numpy()]
    names = ["user_txn_count_7d", "user_amount_std_7d", "merchant_txn_count_24h",
             "user_country_txn_count_30d"]
    online = store.get_online_features(rows, names, as_of=cut)
    entity = pd.DataFrame(rows).assign(as_of=cut - pd.Timedelta(microseconds=1), i=range(len(rows)))
    hist = store.get_historical_features(entity, names, timestamp_column="as_of").to_pandas()
    hist = hist.sort_values("i")
    for name in names:
        np.testing.assert_allclose(np.array(online[name], dtype=float),
                                   hist[name].to_numpy(float), err_msg=name)

    # Incremental: only what is new since the watermark, and the watermark moves on.
    more = store.materialize_incremental(end=pd.Timestamp("2026-01-18", tz="UTC"))
    later = raw[(raw.event_timestamp >= cut) & (raw.event_timestamp < pd.Timestamp("2026-01-18", tz="UTC"))]
    assert more["user_activity"] == later["user_id"].nunique()
    assert store.online.get_watermark("user_activity") == pd.Timestamp("2026-01-18", tz="UTC")
    assert store.materialize_incremental(end=pd.Timestamp("2026-01-18", tz="UTC"))["user_activity"] == 0


def test_online_ttl_and_unknown_entities(store):
    store.materialize(end=pd.Timestamp("2026-01-10", tz="UTC"), view_names=["user_activity"])
    uid = _offline(store, "user_activity").sort_values("event_timestamp")["user_id"].iloc[0]
    far = pd.Timestamp("2026-03-01", tz="UTC")
    out = store.get_online_features([{"user_id": uid}, {"user_id": "nobody"}],
                                    ["user_txn_count_7d"], as_of=[pd.Timestamp("2026-01-10", tz="UTC"), far])
    assert out["user_id"] == [uid, "nobody"] and out["user_txn_count_7d"][0] is not None
    assert out["user_txn_count_7d"][1] is None
    expired = store.get_online_features([{"user_id": uid}], ["user_txn_count_7d"], as_of=far)
    assert expired["user_txn_count_7d"] == [None]
    with pytest.raises(KeyError, match="merchant_id"):
        store.get_online_features([{"user_id": uid}], ["merchant_txn_count_24h"])


def test_partial_rebuild_carries_other_dates_unchanged(store):
    before = store.offline.manifest("merchant_risk")
    new = store.build(["merchant_risk"], start="2026-01-10", end="2026-01-12")["merchant_risk"]
    assert new.version != before.version and new.data["parent_version"] == before.version
    assert store.offline.current_version("merchant_risk") == new.version
    old_rows = pd.read_parquet(before.path / "date=2026-01-03")
    new_rows = pd.read_parquet(new.path / "date=2026-01-03")
    pd.testing.assert_frame_equal(old_rows, new_rows)
    assert new.num_rows == before.num_rows           # same source, same rows
    assert before.path.exists()                      # old versions stay readable
    with pytest.raises(FeatureStoreError, match="midnight"):
        store.build(["merchant_risk"], start="2026-01-10T05:00:00")


def test_failed_build_leaves_the_previous_version_current_and_intact(store, raw):
    data = json.loads(json.dumps(load_repo(FRAUD / "mlplatform.yaml").model_dump(
        mode="json", exclude={"base_dir"})))
    data["feature_views"] = [v for v in data["feature_views"] if v["name"] == "user_activity"]
    data["feature_views"][0]["transformation"] = "tests.integration.failing_transform:explode"
    data["sources"][0]["path"] = str(store.source_path("transactions"))
    data["sources"][0]["contract"] = None
    broken = FeatureStore(store.config, repo=data)
    before = store.offline.manifest("user_activity")
    files_before = sorted(p.name for p in before.path.rglob("*.parquet"))
    with pytest.raises(Exception, match="boom"):
        broken.build(num_buckets=8)
    assert store.offline.current_version("user_activity") == before.version
    assert sorted(p.name for p in before.path.rglob("*.parquet")) == files_before
    assert not list(store.offline.view_dir("user_activity").glob(".tmp-*"))
    assert _offline(store, "user_activity").shape[0] == before.num_rows


def test_build_refuses_data_that_fails_the_contract(store, raw, tmp_path):
    bad = raw.copy()
    bad.loc[:9, "amount"] = -5.0
    bad.loc[10:12, "country"] = "Atlantis"
    config = PlatformConfig(storage_root=tmp_path, project=FRAUD)
    save_transactions(bad, config.path(*RAW_DIR))
    fs = FeatureStore(config)
    with pytest.raises(DataValidationError) as exc:
        fs.build()
    assert "amount" in str(exc.value) and "country" in str(exc.value)
    assert not config.path("feature_store").exists() or not any(
        fs.offline.versions(v.name) for v in fs.repo.feature_views)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_redis_online_store_serves_the_same_values_as_sqlite(store, raw, redis_url):
    """`online_store: redis` (a real redis-server): same materialization, same lookups."""
    redis_cfg = store.config.model_copy(update={"online_store": "redis", "redis_url": redis_url})
    on_redis = FeatureStore(redis_cfg)
    assert type(on_redis.online).__name__ == "RedisOnlineStore"
    cut = pd.Timestamp("2026-01-15", tz="UTC")
    views = ["user_activity", "user_device_history"]
    on_redis.materialize(end=cut, view_names=views)
    rows = [{"user_id": u, "device_type": d} for u, d in
            raw[raw.event_timestamp < cut][["user_id", "device_type"]].drop_duplicates().head(32)
            .to_numpy()]
    names = ["user_txn_count_24h", "user_amount_mean_7d", "user_device_txn_count_30d"]
    from_redis = on_redis.get_online_features(rows, names, as_of=cut)
    entity = pd.DataFrame(rows).assign(as_of=cut - pd.Timedelta(microseconds=1), i=range(len(rows)))
    hist = store.get_historical_features(entity, names, timestamp_column="as_of").to_pandas()
    hist = hist.sort_values("i")
    for n in names:
        np.testing.assert_allclose(np.array(from_redis[n], dtype=float), hist[n].to_numpy(float),
                                   err_msg=n)
    assert on_redis.online.get_watermark("user_activity") == cut
