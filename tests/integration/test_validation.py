"""Data contracts checked on the shared Ray cluster: every rule fires, counts are exact, all
failures are reported at once, and blocks, DataFrames and Parquet give the same answer."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.datasets import make_transactions, save_transactions
from mlplatform.errors import DataValidationError
from mlplatform.features.validation import gate, load_contract, validate

SHIPPED = Path(__file__).resolve().parents[2] / "examples/fraud/contracts/transactions.yaml"
N = 2_000


@pytest.fixture(scope="module")
def contract():
    return load_contract(SHIPPED)


@pytest.fixture(scope="module")
def clean():
    return make_transactions(N, seed=21)


def _failing(report) -> dict[tuple[str, str | None], int]:
    return {(c.check, c.column): c.failing_count for c in report.failures}


def _broken(df: pd.DataFrame) -> pd.DataFrame:
    """Several problems at once, each with a known count."""
    bad = df.copy()
    bad.loc[[3, 40], "amount"] = [-5.0, -1.25]                    # 2 below min
    bad.loc[7, "amount"] = 250_000.0                                # 1 above max
    bad.loc[[10, 11, 900], "country"] = "XX"                        # 3 disallowed
    bad.loc[[12, 13], "user_id"] = None                             # 2 nulls
    bad.loc[[20, 21, 22, 23], "is_fraud"] = [2, 2, 7, -1]            # 4 bad labels
    bad.loc[[30, 31, 32], "transaction_id"] = bad.loc[[1000, 1001, 1002], "transaction_id"].to_numpy()
    return bad.drop(columns=["merchant_id"])                        # 1 missing column


BROKEN_FAILURES = {
    ("min", "amount"): 2, ("max", "amount"): 1, ("allowed", "country"): 3,
    ("nullable", "user_id"): 2, ("label", "is_fraud"): 4, ("unique", "transaction_id"): 3,
    ("column_present", "merchant_id"): N,
}


def test_clean_transactions_pass_the_shipped_contract(ray_cluster, clean, contract):
    report = gate(clean, contract)
    assert report.passed and report.failures == [] and report.num_rows == N
    checked = {(c.check, c.column) for c in report.checks}
    assert {("unique", "transaction_id"), ("type", "event_timestamp"), ("min", "amount"),
            ("allowed", "country"), ("row_count", None), ("label", "is_fraud")} <= checked
    assert all(c.failing_count == 0 and c.examples == [] for c in report.checks)
    assert "passed all" in report.summary()


def _set(df, column, rows, values):
    df = df.copy()
    df.loc[rows, column] = values
    return df


CASES = {
    "wrong_type": (lambda df: df.assign(is_fraud=df["is_fraud"].astype(float)),
                   {("type", "is_fraud"): N}, {0.0, 1.0}),
    "null_in_non_nullable": (lambda df: _set(df, "user_id", [5, 6, 7], None),
                             {("nullable", "user_id"): 3}, set()),
    "nan_counts_as_null": (lambda df: _set(df, "amount", [5, 6], np.nan),
                           {("nullable", "amount"): 2}, set()),
    "below_min": (lambda df: _set(df, "amount", [1, 50, 1999], [-5.0, -1.25, -5.0]),
                  {("min", "amount"): 3}, {-5.0, -1.25}),
    "above_max": (lambda df: _set(df, "amount", [2, 3], [250_000.0, 1e9]),
                  {("max", "amount"): 2}, {250_000.0, 1e9}),
    "timestamp_below_iso_min": (lambda df: _set(df, "event_timestamp", [4], pd.Timestamp(0, tz="UTC")),
                                {("min", "event_timestamp"): 1}, {"1970-01-01T00:00:00+00:00"}),
    "disallowed_category": (lambda df: _set(df, "device_type", [8, 9, 10, 11], ["fax", "fax", "tv", "fax"]),
                            {("allowed", "device_type"): 4}, {"fax", "tv"}),
    "duplicate_ids": (lambda df: _set(df, "transaction_id", [0, 1], df.loc[[500, 501], "transaction_id"]
                                      .to_numpy()),
                      {("unique", "transaction_id"): 2}, {"tx-21-000000500", "tx-21-000000501"}),
    "bad_label_values": (lambda df: _set(df, "is_fraud", [3, 4, 5], [2, 5, 2]),
                         {("label", "is_fraud"): 3}, {2, 5}),
    "missing_column": (lambda df: df.drop(columns=["merchant_id"]),
                       {("column_present", "merchant_id"): N}, set()),
    "missing_label_column": (lambda df: df.drop(columns=["is_fraud"]),
                             {("column_present", "is_fraud"): N, ("label", "is_fraud"): N}, set()),
    "row_count_below_min": (lambda df: df.head(60), {("row_count", None): 40}, {60}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_fires_alone_with_exact_count_and_examples(ray_cluster, clean, contract, case):
    make_bad, expected, examples = CASES[case]
    report = validate(make_bad(clean), contract)
    assert _failing(report) == expected
    failure = report.failures[0]
    assert set(failure.examples) == examples
    assert f"{failure.failing_count:,}" in failure.message


def test_null_share_and_row_count_max(ray_cluster, clean):
    contract = {"name": "shares", "columns": {"country": {"max_null_share": 0.01},
                                              "device_type": {"max_null_share": 0.01}},
                "row_count": {"max": 1_500}}
    df = _set(_set(clean, "country", list(range(30)), None), "device_type", list(range(10)), None)
    report = validate(df, contract)
    # 30 of 2000 = 1.5 % is above 1 %; 10 of 2000 = 0.5 % is within.
    assert _failing(report) == {("max_null_share", "country"): 30, ("row_count", None): 500}
    assert "1.50% of 2,000 rows" in report.failures[0].message
    assert "row count 2,000 is 500 above max 1,500" in report.failures[1].message


def test_several_problems_are_all_reported_and_gate_lists_them(ray_cluster, clean, contract):
    report = validate(_broken(clean), contract)
    assert _failing(report) == BROKEN_FAILURES
    with pytest.raises(DataValidationError) as info:
        gate(_broken(clean), contract)
    message = str(info.value)
    assert f"contract 'raw_transactions' ({len(BROKEN_FAILURES)} failing check(s))" in message
    for failure in report.failures:
        assert failure.message in message       # each check with its count and examples
    assert "(e.g. -5.0, -1.25)" in message or "(e.g. -1.25, -5.0)" in message
    assert "3 value(s) not in allowed" in message and "'XX'" in message


def test_many_blocks_give_the_same_counts_as_one(ray_cluster, clean, contract):
    import ray.data

    bad = _broken(clean)
    one = validate(ray.data.from_pandas(bad), contract)
    blocks = ray.data.from_pandas(bad).repartition(8).materialize()
    assert blocks.num_blocks() == 8
    many = validate(blocks, contract)
    assert many.num_rows == one.num_rows == N
    assert [(c.check, c.column, c.passed, c.failing_count) for c in many.checks] == \
        [(c.check, c.column, c.passed, c.failing_count) for c in one.checks]
    by_check = {(c.check, c.column): set(c.examples) for c in many.checks}
    # Rows 30-32 and 1000-1002 land in different blocks: only a real shuffle pairs them up.
    assert by_check[("unique", "transaction_id")] == set(bad.loc[[30, 31, 32], "transaction_id"])
    assert by_check[("label", "is_fraud")] == {2, 7, -1}


def _operators(ds) -> set[str]:
    import re

    return set(re.findall(r"Operator \d+ ([^:(]+)", ds.stats()))


def test_the_uniqueness_check_shuffles_with_tasks_not_ray_s_hash_aggregate(ray_cluster, clean,
                                                                          contract):
    """Ray 2.60's default shuffle (``shuffle_v2``) hash-aggregates a keyed group-by, ~12 s for
    20,000 keys on 2 cores; the uniqueness check uses the sort-based shuffle (~1-3 s), with the
    same counts."""
    import ray.data

    from mlplatform.features.validation import _key_counts

    blocks = ray.data.from_pandas(_broken(clean)).repartition(4).materialize()
    ours = _key_counts(blocks, "transaction_id", 4).materialize()
    assert "Aggregate" in _operators(ours)
    assert not any(op.startswith("HashAggregate") for op in _operators(ours)), _operators(ours)
    # What the check tells apart: Ray's default plans the hash aggregate.
    hashed = _key_counts(blocks, "transaction_id", 4, shuffle="shuffle_v2").materialize()
    assert any(op.startswith("HashAggregate") for op in _operators(hashed)), _operators(hashed)
    assert ours.count() == hashed.count() == N - 3
    assert _failing(validate(blocks, contract))[("unique", "transaction_id")] == 3


def test_parquet_path_input(ray_cluster, clean, contract, tmp_path):
    folder = save_transactions(_broken(clean), tmp_path / "raw", n_files=3)
    report = validate(str(folder), contract)
    assert report.num_rows == N and _failing(report) == BROKEN_FAILURES
    with pytest.raises(DataValidationError, match="does not exist"):
        validate(tmp_path / "nowhere", contract)
