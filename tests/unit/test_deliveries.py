"""The delivery generator and the delivery example project (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.datasets import (
    CUISINES,
    DELIVERY_COLUMNS,
    VEHICLES,
    WEATHER,
    make_deliveries,
    write_deliveries,
)
from mlplatform.features.contracts import Contract, load_contract
from mlplatform.project import Project, load_project, model_inputs

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "delivery"
N = 30_000
VOCABULARIES = {"cuisine": CUISINES, "vehicle": VEHICLES, "weather": WEATHER}


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return make_deliveries(N, seed=5)


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project(PROJECT)


# ------------------------------------------------------------------------------ generator ----
def test_same_seed_same_frame_other_seed_differs():
    a, b = make_deliveries(3_000, seed=1), make_deliveries(3_000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c = make_deliveries(3_000, seed=2)
    assert not a["delivery_minutes"].equals(c["delivery_minutes"])
    assert not a["courier_id"].equals(c["courier_id"])


def test_columns_dtypes_and_ranges(df: pd.DataFrame):
    assert list(df.columns) == DELIVERY_COLUMNS
    assert len(df) == N
    assert int(df.isna().sum().sum()) == 0
    for col in ("event_timestamp", "delivered_at"):
        assert df[col].dtype == "datetime64[us, UTC]"
    for col in ("order_id", "courier_id", "restaurant_id", "cuisine", "vehicle", "weather"):
        assert pd.api.types.is_string_dtype(df[col]), col
    for col in ("distance_km", "order_value", "delivery_minutes"):
        assert df[col].dtype == np.float64, col
    assert df["items"].dtype == np.int64
    assert df["order_id"].is_unique
    assert df["event_timestamp"].is_monotonic_increasing
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert df["event_timestamp"].min() >= start
    assert df["event_timestamp"].max() < start + pd.Timedelta(days=60)
    assert (df["distance_km"] > 0).all() and (df["items"] >= 1).all()
    assert (df["order_value"] > 0).all() and (df["delivery_minutes"] > 0).all()
    for col, vocab in VOCABULARIES.items():
        assert set(df[col]) == set(vocab), col   # every value used, none outside
    # delivered_at is when the label became known: the order time plus the label, to the us.
    took = (df["delivered_at"] - df["event_timestamp"]).dt.total_seconds() / 60.0
    np.testing.assert_allclose(took, df["delivery_minutes"], atol=1e-6)


def test_bad_arguments_are_refused():
    for kwargs in ({"n_rows": 0}, {"n_rows": 10, "days": 0}, {"n_rows": 10, "n_couriers": -1},
                   {"n_rows": 2.5}):
        with pytest.raises(ValueError, match="positive integer"):
            make_deliveries(**kwargs)


def test_label_follows_learnable_patterns(df: pd.DataFrame):
    minutes = df["delivery_minutes"]
    near, far = minutes[df["distance_km"] < 2.0].mean(), minutes[df["distance_km"] > 5.0].mean()
    assert far > near + 8.0
    by_weather = minutes.groupby(df["weather"]).mean()
    assert by_weather["snow"] > by_weather["clear"] + 5.0
    assert by_weather["rain"] > by_weather["clear"] + 1.0
    hour = df["event_timestamp"].dt.hour
    assert minutes[hour.isin([12, 19])].mean() > minutes[hour.isin([15, 22])].mean() + 2.0
    # Snow slows bikes more than cars, relative to clear weather.
    ratio = (df[df.weather == "snow"].groupby("vehicle")["delivery_minutes"].mean()
             / df[df.weather == "clear"].groupby("vehicle")["delivery_minutes"].mean())
    assert ratio["bike"] > ratio["car"]


def test_restaurant_and_courier_habits_persist(df: pd.DataFrame):
    """Why the window aggregates help: an entity's past delivery times predict its future ones."""
    first = df["event_timestamp"] < pd.Timestamp("2026-01-31", tz="UTC")

    def halves_corr(key: str) -> float:
        a = df[first].groupby(key)["delivery_minutes"].agg(["mean", "size"])
        b = df[~first].groupby(key)["delivery_minutes"].mean()
        both = a[a["size"] >= 20].join(b.rename("later"), how="inner")
        return float(both["mean"].corr(both["later"]))

    assert halves_corr("restaurant_id") > 0.8
    assert halves_corr("courier_id") > 0.25


def test_write_deliveries_writes_parquet_atomically(tmp_path: Path):
    out = write_deliveries(tmp_path / "raw" / "orders", rows=2_000, seed=3)
    assert out == tmp_path / "raw" / "orders"
    assert len(list(out.glob("*.parquet"))) == 4
    assert [p.name for p in out.parent.iterdir()] == ["orders"]   # no temp folder left
    back = pd.read_parquet(out).sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, make_deliveries(2_000, seed=3), check_dtype=False)


# ------------------------------------------------------------------------------ project ------
def test_project_loads(project: Project):
    from mlplatform.project.inputs import load_function

    assert project.name == "delivery"
    assert project.task.type == "regression" and project.task.label == "delivery_minutes"
    assert project.data.events == "orders" and project.data.generate is not None
    module, _, fn = project.data.generate.function.partition(":")
    assert module == "mlplatform.datasets" and fn == "write_deliveries"
    assert project.categorical == {f"{c}_code": len(v) for c, v in VOCABULARIES.items()}
    for col, vocab in VOCABULARIES.items():
        assert project.request.fields[col].enum == list(vocab), col
    assert callable(load_function(PROJECT, project.model_inputs.function, "test"))


def test_label_history_is_keyed_on_delivery_time(project: Project):
    """A view that aggregates the label must read it as of when it became known (delivered_at),
    never as of order time: the previous order's window would hold deliveries still on the road."""
    repo = project.feature_repo
    label_views = [v for v in repo.feature_views
                   if any(f.column == project.task.label for f in v.features)]
    assert label_views
    for view in label_views:
        source = repo.source(view.source)
        assert source.timestamp_field == "delivered_at", view.name
        assert source.path == repo.source(project.data.events).path   # the same orders


def _batch_with_features(df: pd.DataFrame, project: Project, seed: int) -> pd.DataFrame:
    """Generated orders plus made-up looked-up features: per view, a quarter of the rows find
    no row of their entity (all of that view's features NaN, as after its TTL)."""
    rng = np.random.default_rng(seed)
    rows = df.copy()
    order_s = rows["event_timestamp"].astype("int64").to_numpy() / 1e6
    for names in project.feature_repo.resolve(project.features).values():
        missing = rng.random(len(rows)) < 0.25
        for name in names:
            if name.endswith("_last_order_at"):
                values = order_s - rng.exponential(3600.0, len(rows))   # an earlier order
            else:
                values = rng.gamma(2.0, 5.0, len(rows))
            rows[name] = np.where(missing, np.nan, values)
    return rows


def test_model_inputs_on_generated_rows(project: Project, df: pd.DataFrame):
    inputs = model_inputs(project)
    rows = _batch_with_features(df.iloc[:2_000], project, seed=0)
    out = inputs.transform(inputs.batch_from_frame(rows))
    assert list(out) == project.input_columns
    stats = {"restaurant_minutes_mean_7d", "restaurant_minutes_mean_30d", "restaurant_minutes_std_30d",
             "restaurant_delivered_km_mean_30d", "courier_km_mean_7d", "courier_minutes_mean_30d"}
    for name, spec in project.model_inputs.columns.items():
        values = out[name]
        assert values.dtype == np.float64 and len(values) == len(rows)
        if name in stats:   # unknown statistics stay NaN (the model's missing), nothing else
            np.testing.assert_array_equal(np.isnan(values), rows[name].isna().to_numpy())
        elif name == "courier_minutes_per_km_30d":
            known = rows[["courier_minutes_mean_30d", "courier_delivered_km_mean_30d"]].notna()
            np.testing.assert_array_equal(~np.isnan(values), known.all(axis=1).to_numpy())
        else:
            assert np.isfinite(values).all(), name
        known = values[~np.isnan(values)]
        if spec.dtype == "int64":
            assert (known == np.round(known)).all(), name
        if spec.dtype == "bool":
            assert set(np.unique(known)) <= {0.0, 1.0}, name
        if spec.categories is not None:
            assert known.min() >= 0 and known.max() < spec.categories, name
    assert out["hour_of_day"].max() <= 23 and out["day_of_week"].max() <= 6
    np.testing.assert_array_equal(out["distance_km"], rows["distance_km"].to_numpy())
    # A kitchen idle for an hour has had no order in the last hour, whatever was stored.
    idle = out["restaurant_idle_minutes"] >= 60.0
    assert idle.any() and (out["restaurant_orders_1h"][idle] == 0).all()


def test_model_inputs_handle_unknown_values_and_ignore_the_id(project: Project, df: pd.DataFrame):
    inputs = model_inputs(project)
    rows = _batch_with_features(df.iloc[:50], project, seed=1)
    base = inputs.transform(inputs.batch_from_frame(rows))
    renamed = inputs.transform(inputs.batch_from_frame(rows.assign(order_id="another-id")))
    for name in base:
        np.testing.assert_array_equal(base[name], renamed[name])
    odd = rows.assign(cuisine="fusion", weather="hail", event_timestamp=pd.NaT)
    out = inputs.transform(inputs.batch_from_frame(odd))
    assert (out["cuisine_code"] == -1).all() and (out["weather_code"] == -1).all()
    assert np.isnan(out["hour_of_day"]).all()
    assert (out["courier_idle_minutes"] == 24 * 60).all()   # unknown: the cap, not NaN


# ------------------------------------------------------------------------------ contracts ----
def _violations(frame: pd.DataFrame, contract: Contract) -> list[str]:
    """The column rules ``frame`` breaks (pandas stand-in for the Ray Data validator)."""
    bad = []
    for name, rule in contract.columns.items():
        col = frame[name]
        nulls = col.isna()
        if (not rule.nullable and nulls.any()) or (
                rule.max_null_share is not None and nulls.mean() > rule.max_null_share):
            bad.append(f"{name}: nulls")
        values = col[~nulls]
        lo, hi = rule.min, rule.max
        if rule.type == "timestamp":
            lo, hi = (None if b is None else pd.Timestamp(b) for b in (lo, hi))
        if (lo is not None and (values < lo).any()) or (hi is not None and (values > hi).any()):
            bad.append(f"{name}: range")
        if rule.allowed is not None and not set(values) <= set(rule.allowed):
            bad.append(f"{name}: allowed")
        if rule.unique and values.duplicated().any():
            bad.append(f"{name}: unique")
    return bad


def test_raw_contract_matches_the_generator(project: Project, df: pd.DataFrame):
    source = project.feature_repo.source(project.data.events)
    contract = load_contract(PROJECT / source.contract)
    assert set(contract.columns) == set(DELIVERY_COLUMNS)
    kinds = {"int": "i", "float": "f", "timestamp": "M"}
    for name, rule in contract.columns.items():
        if rule.type in kinds:
            assert df[name].dtype.kind == kinds[rule.type], name
        else:
            assert rule.type == "string" and pd.api.types.is_string_dtype(df[name]), name
    for col, vocab in VOCABULARIES.items():
        assert contract.columns[col].allowed == list(vocab), col
    assert contract.columns["order_id"].unique
    assert _violations(df, contract) == []
    assert _violations(df.assign(distance_km=df["distance_km"] * 1000), contract) \
        == ["distance_km: range"]   # metres instead of km


def test_every_source_declares_the_raw_contract(project: Project):
    for source in project.feature_repo.sources:
        assert source.contract == "contracts/orders.yaml", source.name


def test_evaluation_contract_covers_the_model_inputs(project: Project):
    contract = load_contract(PROJECT / project.evaluation.contract)
    assert set(project.input_columns) <= set(contract.columns)
    label = contract.columns[project.task.label]
    assert label.type == "float" and not label.nullable and label.min > 0
    for name, n in project.categorical.items():   # codes 0..n-1 only (-1: unknown value)
        rule = contract.columns[name]
        assert (rule.min, rule.max, rule.nullable) == (0.0, n - 1, False), name
    for col, vocab in VOCABULARIES.items():
        assert contract.columns[col].allowed == list(vocab), col
    assert contract.columns[project.request.id].unique
