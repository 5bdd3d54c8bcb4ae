"""Data contracts: parsing from YAML and mappings, and clear errors for bad ones (no Ray here)."""

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from mlplatform.datasets.transactions import CATEGORIES, COUNTRIES, DEVICE_TYPES, TRANSACTION_COLUMNS
from mlplatform.errors import ConfigError
from mlplatform.features.validation import (
    CheckResult,
    ColumnRule,
    Contract,
    ValidationReport,
    load_contract,
)

SHIPPED = Path(__file__).resolve().parents[2] / "examples/fraud/contracts/transactions.yaml"
VALID = {
    "name": "tx",
    "columns": {
        "id": {"type": "string", "nullable": False, "unique": True},
        "amount": {"type": "float", "min": 0, "max": "1e5", "max_null_share": 0.1},
        "ts": {"type": "timestamp", "min": "2020-01-01", "max": "2030-01-01T00:00:00+02:00"},
        "country": {"allowed": ["US", "GB"]},
    },
    "row_count": {"min": 10, "max": 1000},
    "label": {"column": "y", "values": [0, 1]},
}


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_yaml_and_mapping_give_the_same_contract(tmp_path):
    from_yaml = Contract.from_yaml(_write(tmp_path, VALID))
    assert from_yaml == load_contract(VALID) == load_contract(str(_write(tmp_path, VALID)))
    assert load_contract(from_yaml) is from_yaml
    amount = from_yaml.columns["amount"]
    assert (amount.min, amount.max, amount.max_null_share) == (0.0, 100000.0, 0.1)
    ts = from_yaml.columns["ts"]
    assert ts.min == datetime(2020, 1, 1, tzinfo=timezone.utc)  # no zone given: UTC
    assert ts.max == datetime(2029, 12, 31, 22, tzinfo=timezone.utc)
    assert from_yaml.row_count.min == 10 and from_yaml.label.values == [0, 1]
    assert ColumnRule() == ColumnRule(nullable=True, unique=False)


def test_unquoted_yaml_dates_are_timestamp_bounds(tmp_path):
    path = _write(tmp_path, "name: t\ncolumns:\n  ts: {type: timestamp, min: 2026-01-01, max: 2026-03-01}\n")
    rule = Contract.from_yaml(path).columns["ts"]
    assert rule.min == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert rule.max == datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(("patch", "expected"), [
    ({"amount": {"minimum": 0}}, "unknown key 'columns.amount.minimum'; allowed there: type, nullable"),
    ({"amount": {"type": "integer"}}, "'columns.amount.type'"),
    ({"amount": {"max_null_share": 1.5}}, "'columns.amount.max_null_share'"),
    ({"amount": {"min": 5, "max": 1}}, "min 5.0 is above max 1.0"),
    ({"amount": {"min": "soon"}}, "'soon' is neither a number nor an ISO timestamp"),
    ({"amount": {"type": "string", "min": 0}}, "min/max do not apply to string columns"),
    ({"amount": {"type": "timestamp", "min": 0}}, "bounds of a timestamp column must be ISO timestamps"),
    ({"amount": {"min": 0, "max": "2026-01-01"}}, "both be numbers or both be timestamps"),
    ({"amount": {"allowed": []}}, "'columns.amount.allowed'"),
])
def test_bad_column_rules_name_file_and_key(tmp_path, patch, expected):
    path = _write(tmp_path, {**VALID, "columns": {**VALID["columns"], **patch}})
    with pytest.raises(ConfigError) as info:
        Contract.from_yaml(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize(("data", "expected"), [
    ({**VALID, "owner": "me"}, "unknown key 'owner'; allowed there: name, description, columns"),
    ({**VALID, "row_count": {"min": 1, "mx": 5}}, "unknown key 'row_count.mx'; allowed there: min, max"),
    ({**VALID, "row_count": {"min": 5, "max": 1}}, "min 5 is above max 1"),
    ({**VALID, "label": {"column": "y"}}, "missing required key 'label.values'"),
    ({**VALID, "label": {"column": "y", "values": [0], "positive": 1}}, "unknown key 'label.positive'"),
    ({k: v for k, v in VALID.items() if k != "columns"}, "missing required key 'columns'"),
])
def test_bad_contract_keys(data, expected):
    with pytest.raises(ConfigError, match="contract mapping is not a valid contract") as info:
        load_contract(data)
    assert expected in str(info.value)


def test_every_error_is_listed_at_once():
    data = {**VALID, "owner": "me", "columns": {"a": {"typ": "int"}, "b": {"nullable": "maybe"}}}
    with pytest.raises(ConfigError) as info:
        load_contract(data)
    message = str(info.value)
    assert "'owner'" in message and "'columns.a.typ'" in message and "'columns.b.nullable'" in message


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Contract.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Contract.from_yaml(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        Contract.from_yaml(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="must be a Contract, a mapping or a YAML path"):
        load_contract(42)


def test_shipped_transactions_contract_matches_the_generator():
    contract = load_contract(SHIPPED)
    assert contract.name == "raw_transactions"
    assert list(contract.columns) == TRANSACTION_COLUMNS
    cols = contract.columns
    assert cols["transaction_id"].unique and not cols["transaction_id"].nullable
    assert all(not rule.nullable for rule in cols.values())
    assert cols["event_timestamp"].type == "timestamp"
    assert (cols["amount"].type, cols["amount"].min, cols["amount"].max) == ("float", 0.0, 100000.0)
    # The vocabularies are the generator's: the feature encoders use the same ones.
    assert cols["merchant_category"].allowed == list(CATEGORIES)
    assert cols["country"].allowed == list(COUNTRIES)
    assert cols["device_type"].allowed == DEVICE_TYPES
    assert contract.label.column == "is_fraud" and contract.label.values == [0, 1]
    assert contract.row_count.min == 100


def test_report_summary_lists_failures_with_counts_and_examples():
    checks = [
        CheckResult("min", "amount", False, 3, [-5.0, -1.2],
                    "amount: 3 value(s) below min 0.0 (e.g. -5.0, -1.2)"),
        CheckResult("type", "amount", True, 0, [], "amount: type float (double), expected float"),
        CheckResult("row_count", None, False, 50, [50], "row count 50 below min 100"),
    ]
    report = ValidationReport("tx", 50, checks)
    assert not report.passed
    assert [c.check for c in report.failures] == ["min", "row_count"]
    summary = report.summary()
    assert "contract 'tx' on 50 rows: FAILED 2 of 3 checks" in summary
    assert "3  amount: 3 value(s) below min 0.0 (e.g. -5.0, -1.2)" in summary
    assert "row count 50 below min 100" in summary
    assert "expected float" not in summary  # passing checks stay out of the table
    as_dict = report.to_dict()
    assert as_dict["passed"] is False and as_dict["checks"][0]["examples"] == [-5.0, -1.2]
    clean = ValidationReport("tx", 50, checks[1:2])
    assert clean.passed and clean.summary() == "contract 'tx' on 50 rows: passed all 1 checks"
