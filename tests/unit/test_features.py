"""Feature definitions (YAML), and the on-demand model-input transformation."""

import copy
from datetime import timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.errors import ConfigError, DataValidationError
from mlplatform.features import load_repo
from mlplatform.features.pipeline import bucket_of
from mlplatform.project import FeatureRepo, parse_duration
from tests.projects import FRAUD, fraud_columns, inputs, module, project

FRAUD_FILE = FRAUD / "mlplatform.yaml"
RAW = {k: v for k, v in yaml.safe_load(FRAUD_FILE.read_text()).items()
       if k in FeatureRepo.model_fields}
VIEW_FEATURES = fraud_columns()["features"]
FEATURE_COLUMNS = fraud_columns()["inputs"]


def model_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """The fraud project's model inputs of request rows + looked-up features (offline path)."""
    return inputs("fraud").frame(frame)


def model_inputs_matrix(records, looked_up):
    """The same from request records (the serving path)."""
    mi = inputs("fraud")
    return mi.matrix(mi.batch_from_records(records, looked_up))


def encode(column, values):
    return module("fraud", "fraud_inputs").encode(column, np.asarray(values, dtype=object))


def test_shipped_definitions_load_and_cover_the_model():
    repo = load_repo(FRAUD_FILE)
    assert {v.name for v in repo.feature_views} == {
        "user_activity", "merchant_risk", "user_country_history", "user_device_history"}
    assert repo.join_keys("user_country_history") == ["user_id", "country"]
    owners = repo.resolve(VIEW_FEATURES)
    assert sum(len(v) for v in owners.values()) == len(VIEW_FEATURES)
    assert repo.view("user_activity").ttl == pd.Timedelta(days=7)
    assert repo.view("merchant_risk").features[0].label_delay == pd.Timedelta(days=1)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["feature_views"][0].update(entities=["nobody"]), "unknown entit"),
    (lambda d: d["feature_views"][0].update(source="nowhere"), "unknown source"),
    (lambda d: d["feature_views"][0]["features"].append(
        dict(d["feature_views"][0]["features"][0])), "duplicate feature name"),
    (lambda d: d["feature_views"][1]["features"].append(
        {"name": "user_txn_count_1h", "agg": "count", "window": "1h"}), "defined in views"),
    (lambda d: d["feature_views"][0]["features"][0].update(agg="median"), "unknown agg"),
    (lambda d: d["feature_views"][0]["features"][0].pop("window"), "needs a positive `window`"),
    (lambda d: d["feature_views"][0]["features"][3].pop("column"), "needs `column`"),
    (lambda d: d["feature_views"][0].update(ttl="7 days"), "bad duration"),
    (lambda d: d["feature_views"][0].update(transformation="magic"), "unknown transformation"),
    (lambda d: d["feature_views"][0].update(colour="red"), "colour"),
])
def test_bad_definitions_are_rejected_with_the_reason(mutate, message):
    data = copy.deepcopy(RAW)
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        load_repo(data)


def test_missing_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist.*mlplatform.yaml"):
        load_repo(tmp_path / "nope.yaml")


def test_resolve_references():
    repo = load_repo(FRAUD_FILE)
    assert repo.resolve(["merchant_risk:merchant_txn_count_24h", "user_txn_count_1h"]) == {
        "merchant_risk": ["merchant_txn_count_24h"], "user_activity": ["user_txn_count_1h"]}
    assert repo.resolve(["user_device_history"]) == {
        "user_device_history": ["user_device_txn_count_30d"]}
    with pytest.raises(KeyError, match="no feature 'nope'"):
        repo.resolve(["merchant_risk:nope"])
    with pytest.raises(KeyError, match="unknown feature reference"):
        repo.resolve(["nope"])


def test_definition_hash_changes_only_with_the_definition():
    a = load_repo(FRAUD_FILE)
    data = copy.deepcopy(RAW)
    data["feature_views"][0]["description"] = "reworded"
    data["feature_views"][1]["ttl"] = "31d"
    b = load_repo(data)
    assert a.definition_hash("user_activity") != b.definition_hash("user_activity")
    assert a.definition_hash("merchant_risk") != b.definition_hash("merchant_risk")
    assert a.definition_hash("user_device_history") == b.definition_hash("user_device_history")


def test_durations():
    assert parse_duration("90s").total_seconds() == 90
    assert parse_duration("1.5h").total_seconds() == 5400
    assert parse_duration("2w").days == 14
    with pytest.raises(ValueError):
        parse_duration("soon")


def _request(**over):
    row = {"transaction_id": "t1", "user_id": "u1", "merchant_id": "m1",
           "event_timestamp": pd.Timestamp("2026-01-05T03:30:00Z"), "amount": 120.0,
           "merchant_category": "jewelry", "country": "NG", "device_type": "tablet",
           **dict.fromkeys(VIEW_FEATURES, np.nan)}
    row.update(over)
    return pd.DataFrame([row])


def test_model_inputs_for_an_unknown_user_are_defaults():
    out = model_inputs(_request())
    assert list(out.columns) == FEATURE_COLUMNS
    r = out.iloc[0]
    assert r["user_txn_count_24h"] == 0 and r["user_country_txn_count_30d"] == 0
    assert r["hours_since_prev"] == 720.0 and np.isnan(r["amount_z_user_7d"])
    assert r["hour_of_day"] == 3 and r["is_night"] == 1 and r["day_of_week"] == 0
    assert r["country_code"] == encode("country", pd.Series(["NG"]))[0]


def test_model_inputs_relate_the_amount_to_the_user():
    last = pd.Timestamp("2026-01-05T01:30:00Z").timestamp()
    out = model_inputs(_request(user_amount_mean_7d=20.0, user_amount_std_7d=10.0,
                                user_last_event_at=last, user_txn_count_24h=3)).iloc[0]
    assert out["amount_z_user_7d"] == pytest.approx(10.0)
    assert out["amount_ratio_user_7d"] == pytest.approx(121.0 / 21.0)
    assert out["hours_since_prev"] == pytest.approx(2.0)
    assert out["user_txn_count_24h"] == 3


def test_model_inputs_names_missing_columns():
    with pytest.raises(DataValidationError, match="merchant_fraud_rate_30d"):
        model_inputs(_request().drop(columns=["merchant_fraud_rate_30d"]))


def test_request_rows_get_the_same_inputs_as_the_training_set():
    """The serving path (records -> numpy) equals model_inputs on a frame, cell for cell:
    unknown users, unknown categories, naive (= UTC) and offset timestamps, every hour and day."""
    rng = np.random.default_rng(7)
    n = 400
    start = pd.Timestamp("2025-12-28T00:00:00Z").timestamp()
    event_s = start + rng.uniform(0, 21 * 86400, n)
    frame = pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(n)], "user_id": "u", "merchant_id": "m",
        "event_timestamp": pd.to_datetime(event_s, unit="s", utc=True),
        "amount": rng.gamma(2.0, 40.0, n),
        "merchant_category": rng.choice(["jewelry", "grocery", "unheard-of"], n),
        "country": rng.choice(["NG", "US", "ZZ"], n),
        "device_type": rng.choice(["tablet", "desktop", "smart_fridge"], n)})
    for c in VIEW_FEATURES:
        values = rng.uniform(0, 50, n)
        values[rng.random(n) < 0.25] = np.nan          # unknown entity / expired row
        frame[c] = values
    frame["user_last_event_at"] = event_s - rng.uniform(0, 3600 * 800, n)
    frame.loc[rng.random(n) < 0.25, "user_last_event_at"] = np.nan
    records = frame.to_dict("records")
    for i, r in enumerate(records):   # requests carry datetimes: aware, or naive meaning UTC
        ts = r["event_timestamp"].floor("us").to_pydatetime()   # datetime: microseconds
        r["event_timestamp"] = (ts.replace(tzinfo=None) if i % 3 == 0
                                else ts.astimezone(timezone(timedelta(hours=-5))))
    looked_up = {c: [None if np.isnan(r[c]) else r[c] for r in records] for c in VIEW_FEATURES}
    matrix = model_inputs_matrix(records, looked_up)
    assert matrix.shape == (n, len(FEATURE_COLUMNS)) and matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, model_inputs(frame).to_numpy(), strict=True)
    for i in range(0, n, 7):     # one transaction per request, the serving path's usual case
        one = model_inputs_matrix([records[i]], {c: [v[i]] for c, v in looked_up.items()})
        np.testing.assert_array_equal(one, matrix[i:i + 1], strict=True)


def test_online_lookup_applies_the_ttl_window_to_the_microsecond(tmp_path):
    """A stored row answers at as_of in (t, t + ttl), not at t + ttl or later (the window is
    (as_of - ttl, as_of], as offline); other views and repeated calls (cached read plan) agree."""
    from mlplatform.config import PlatformConfig
    from mlplatform.features import FeatureStore

    store = FeatureStore(PlatformConfig(storage_root=tmp_path), project("fraud"))
    t = pd.Timestamp("2026-01-10T12:00:00Z")
    for view in store.repo.feature_views:
        keys = store.repo.join_keys(view)
        store.online.write(view.name, pd.DataFrame(
            {**{k: ["k"] for k in keys}, "event_timestamp": [t],
             **{f: [1.0] for f in view.feature_names}}), keys)
    row = {"user_id": "k", "merchant_id": "k", "country": "k", "device_type": "k"}
    us = pd.Timedelta(microseconds=1)
    for view in store.repo.feature_views:
        name = view.feature_names[0]

        def value(as_of, name=name):
            return store.get_online_features([row], [name], as_of=as_of)[name][0]

        assert value(t) == 1.0 and value(None) == 1.0
        assert value(t + view.ttl - us) == 1.0, view.name
        assert value(t + view.ttl) is None and value(t + view.ttl - us) == 1.0, view.name
        assert value([(t + view.ttl).to_pydatetime()]) is None


def test_encode_unknown_is_minus_one():
    assert encode("device_type", pd.Series(["desktop", "smart_fridge"])).tolist() == [
        encode("device_type", pd.Series(["desktop"]))[0], -1]
    assert encode("device_type", ["desktop", "smart_fridge"]).tolist() == [
        encode("device_type", pd.Series(["desktop"]))[0], -1]


def test_bucket_is_stable_and_in_range():
    keys = pd.DataFrame({"user_id": [f"u{i}" for i in range(500)]})
    b1, b2 = bucket_of(keys, 16), bucket_of(keys.copy(), 16)
    assert (b1 == b2).all() and b1.min() >= 0 and b1.max() < 16 and len(set(b1)) == 16
    both = pd.DataFrame({"user_id": ["u1", "u1"], "country": ["US", "FR"]})
    assert bucket_of(both, 1000)[0] != bucket_of(both, 1000)[1]


@pytest.mark.parametrize("rows, buckets", [(50, 8), (20_000 * 20, 21), (20_000 * 200, 64)])
def test_a_build_uses_buckets_by_the_size_of_its_source(tmp_path, monkeypatch, rows, buckets):
    """Few buckets for a small source (task overhead, not work, dominated 64 of them), one per
    20,000 rows as it grows, capped at 64. Counted from the Parquet footers: no data read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlplatform.config import PlatformConfig
    from mlplatform.features import FeatureStore

    store = FeatureStore(PlatformConfig(storage_root=tmp_path), project("fraud"))
    folder = tmp_path / "raw" / "transactions"
    folder.mkdir(parents=True)
    # Four one-column files: only their footers are read.
    for i in range(4):
        pq.write_table(pa.table({"x": np.zeros(rows // 4, dtype=np.int8)}), folder / f"{i}.parquet")
    assert store.source_path("transactions") == folder, "the shipped source moved"
    assert store.build_buckets("transactions") == buckets
