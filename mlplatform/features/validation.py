"""Data contracts checked on Ray Data, without collecting the data.

:func:`validate` checks a dataset against a :class:`~mlplatform.features.contracts.Contract`
and returns every result; :func:`gate` raises
:class:`~mlplatform.errors.DataValidationError` listing every failure.

How it stays distributed: the input runs once, through one ``map_batches`` that turns each block
into a few hundred bytes of partial statistics (row, null and violation counts, up to 5 examples,
min/max, Arrow types) that the driver adds up. When the contract has ``unique`` columns, that
pass also keeps their values, materialized in the object store, and each costs one
``groupby(column).count()`` shuffle over them, reduced per block the same way. Only the partials
ever reach the driver.

Example:
    >>> report = validate("data/orders", "contracts/orders.yaml")   # doctest: +SKIP
    >>> report.passed                                                # doctest: +SKIP
    True
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlplatform._ray import DEFAULT_SHUFFLE, read_parquet, with_shuffle
from mlplatform.errors import DataValidationError
from mlplatform.features.contracts import (
    CheckResult,
    ColumnRule,
    Contract,
    LabelRule,
    RowCount,
    TypeName,
    ValidationReport,
    load_contract,
)

__all__ = ["CheckResult", "ColumnRule", "Contract", "LabelRule", "RowCount", "TypeName",
           "ValidationReport", "gate", "load_contract", "validate"]

_MAX_EXAMPLES = 5
_PARTIAL = "__validation_partial__"  # column carrying each block's pickled statistics


# ----------------------------------------------------------------------------- entry points
def validate(dataset: Any, contract: Contract | Mapping | str | Path,
             shuffle: str = DEFAULT_SHUFFLE) -> ValidationReport:
    """Check ``dataset`` against ``contract`` and return every result (passing ones too).

    The input runs once (one ``map_batches``); ``unique`` columns add one shuffle each over
    their values, which are kept in the object store meanwhile. Nothing else is materialized.

    Args:
        dataset: A ``ray.data.Dataset``, a pandas DataFrame, or a Parquet file/folder path.
        contract: A :class:`Contract` or anything :func:`load_contract` accepts.
        shuffle: Ray Data shuffle strategy of the uniqueness checks' group-bys (default: the
            sort-based one, :data:`mlplatform._ray.DEFAULT_SHUFFLE`).

    Returns:
        The report; ``report.passed`` says whether every check passed.

    Raises:
        ConfigError: The contract is invalid.
        DataValidationError: ``dataset`` is a path that does not exist.
    """
    contract = load_contract(contract)
    ds = _as_dataset(dataset)
    keys = [name for name, rule in contract.columns.items() if rule.unique]
    out = ds.map_batches(_block_stats, batch_format="pyarrow", batch_size=None,
                         fn_kwargs={"contract": contract, "keys": keys})
    if keys:
        # The input runs once: its key columns stay in the object store for the shuffles, so
        # a Parquet source is not read again (each read_parquet run also starts footer actors).
        out = out.materialize()
    parts = [pickle.loads(row[_PARTIAL]) for row in out.map_batches(
        _only_partials, batch_format="pyarrow", batch_size=None).take_all()]
    stats = _Stats.merge(parts, contract)
    if not parts:  # no block at all: take the column names from the schema
        schema = ds.schema()
        stats.names = list(schema.names) if schema is not None else []
    return ValidationReport(contract.name, stats.rows,
                            _checks(out, contract, stats, len(parts), shuffle))


def gate(dataset: Any, contract: Contract | Mapping | str | Path,
         shuffle: str = DEFAULT_SHUFFLE) -> ValidationReport:
    """:func:`validate`, then raise if any check failed.

    Raises:
        DataValidationError: Naming the contract, the number of failing checks and every
            failing check with its count and examples.
    """
    report = validate(dataset, contract, shuffle)
    if not report.passed:
        raise DataValidationError(
            f"dataset breaks contract '{report.contract}' ({len(report.failures)} failing check(s)):\n"
            f"{report.summary()}\nFix the data, or the contract if the data is right.")
    return report


def _as_dataset(dataset: Any):
    import ray.data

    if isinstance(dataset, ray.data.Dataset):
        return dataset
    if isinstance(dataset, pd.DataFrame):
        return ray.data.from_pandas(dataset)
    if isinstance(dataset, (str, Path)):
        if "://" not in str(dataset) and not Path(dataset).exists():
            raise DataValidationError(f"dataset path {dataset} does not exist; pass a Parquet file "
                                      "or folder, a ray.data.Dataset or a pandas DataFrame.")
        return read_parquet(str(dataset))
    raise TypeError(f"dataset must be a ray.data.Dataset, a DataFrame or a Parquet path, "
                    f"got {type(dataset).__name__}")


# ----------------------------------------------------------------------------- per block (workers)
def _block_stats(batch, contract: Contract, keys: list[str]):
    """The block's partial statistics, pickled into the first row, next to its ``keys`` columns."""
    part: dict[str, Any] = {"rows": batch.num_rows, "names": batch.column_names, "cols": {}}
    for name, rule in contract.columns.items():
        if name in batch.column_names:
            part["cols"][name] = _column_stats(batch.column(name), rule)
    label = contract.label
    if label is not None and label.column in batch.column_names:
        values, nulls = _non_null(batch.column(label.column))
        part["label"] = _tally(values, _not_in(values, label.values), nulls=nulls)
    n = max(1, batch.num_rows) if keys else 1
    table = {_PARTIAL: pa.array([pickle.dumps(part)] + [None] * (n - 1), pa.binary())}
    for key in keys:  # an empty or keyless block still needs its row for the partial
        column = batch.column(key) if key in batch.column_names else pa.nulls(n)
        table[key] = column if len(column) == n else pa.nulls(n, column.type)
    return pa.table(table)


def _only_partials(batch):
    return batch.select([_PARTIAL]).filter(pc.is_valid(batch.column(_PARTIAL)))


def _column_stats(column, rule: ColumnRule) -> dict[str, Any]:
    values, nulls = _non_null(column)
    kind = _kind(values.type)
    out: dict[str, Any] = {"rows": len(column), "nulls": nulls, "types": {str(values.type): kind}}
    if rule.type is not None and kind not in (None, rule.type):
        out["wrong_type"] = (len(column), _examples(values))
    for op in ("min", "max"):
        bound = getattr(rule, op)
        if bound is not None:
            out[op] = _out_of_range(values, kind, op, bound)
    if rule.allowed is not None:
        out["allowed"] = _tally(values, _not_in(values, rule.allowed))
    if kind in ("int", "float", "timestamp") and len(values):
        lo_hi = pc.min_max(values)
        out["lo"], out["hi"] = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    return out


def _non_null(column):
    """(values without nulls or NaN, number of nulls + NaN); dictionaries decoded."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    values = arr.drop_null()
    if pa.types.is_floating(values.type):
        values = values.filter(pc.invert(pc.is_nan(values)))
    return values, len(arr) - len(values)


def _kind(arrow_type) -> str | None:
    """The contract type family of an Arrow type; None for the all-null type."""
    t = pa.types
    for kind, test in (("bool", t.is_boolean), ("int", t.is_integer), ("timestamp", t.is_timestamp),
                       ("float", lambda x: t.is_floating(x) or t.is_decimal(x)),
                       ("string", lambda x: t.is_string(x) or t.is_large_string(x)
                        or getattr(t, "is_string_view", lambda _: False)(x))):
        if test(arrow_type):
            return kind
    return None if t.is_null(arrow_type) else str(arrow_type)


def _out_of_range(values, kind: str | None, op: str, bound: float | datetime) -> tuple[int, list]:
    if kind in ("int", "float") and not isinstance(bound, datetime):
        target, scalar = pc.cast(values, pa.float64()), pa.scalar(float(bound), pa.float64())
    elif kind == "timestamp" and isinstance(bound, datetime):
        if values.type.tz is None:  # a zone-less column is read as UTC
            bound = bound.astimezone(timezone.utc).replace(tzinfo=None)
        target, scalar = values, pa.scalar(bound, values.type)
    else:  # not comparable: every value fails (the message says why)
        return len(values), _examples(values)
    return _tally(values, pc.less(target, scalar) if op == "min" else pc.greater(target, scalar))


def _not_in(values, options: list):
    """Mask of values outside ``options``; compared as text when the types do not convert."""
    try:
        value_set = pa.array(options, type=values.type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        text = [str(o).lower() if isinstance(o, bool) else str(o) for o in options]
        return pc.invert(pc.is_in(pc.cast(values, pa.string()), value_set=pa.array(text, pa.string())))
    return pc.invert(pc.is_in(values, value_set=value_set))


def _tally(values, mask, nulls: int = 0) -> tuple[int, list]:
    n = int(pc.sum(mask).as_py() or 0)
    return n + nulls, ([None] if nulls else []) + (_examples(values.filter(mask)) if n else [])


def _examples(values, scan: int = 10_000) -> list:
    """Up to five distinct values among the first ``scan`` (bounded work per block)."""
    return [_jsonable(v) for v in pc.unique(values.slice(0, scan)).slice(0, _MAX_EXAMPLES).to_pylist()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ----------------------------------------------------------------------------- driver side
class _Tally:
    """A count plus up to five distinct examples, added up over blocks."""

    def __init__(self) -> None:
        self.n, self.examples = 0, []

    def add(self, n: int, examples: list) -> None:
        self.n += n
        seen = {(type(x), x) for x in self.examples}  # keyed by type too: 1 and True stay apart
        for e in examples:
            if len(self.examples) < _MAX_EXAMPLES and (type(e), e) not in seen:
                self.examples.append(e)
                seen.add((type(e), e))


@dataclass
class _Column:
    rows: int = 0
    nulls: int = 0
    types: dict[str, str | None] = field(default_factory=dict)
    tallies: dict[str, _Tally] = field(default_factory=dict)
    lo: Any = None
    hi: Any = None

    def tally(self, name: str) -> _Tally:
        return self.tallies.setdefault(name, _Tally())


@dataclass
class _Stats:
    rows: int = 0
    names: list[str] = field(default_factory=list)
    cols: dict[str, _Column] = field(default_factory=dict)
    label: _Tally | None = None
    label_missing_rows: int = 0

    @classmethod
    def merge(cls, parts: list[dict], contract: Contract) -> _Stats:
        stats = cls()
        for part in parts:
            stats.rows += part["rows"]
            stats.names += [n for n in part["names"] if n not in stats.names]
            for name, cs in part["cols"].items():
                col = stats.cols.setdefault(name, _Column())
                col.rows, col.nulls = col.rows + cs["rows"], col.nulls + cs["nulls"]
                col.types.update(cs["types"])
                for check in ("wrong_type", "min", "max", "allowed"):
                    if check in cs:
                        col.tally(check).add(*cs[check])
                if "lo" in cs:
                    col.lo, col.hi = _extend(col.lo, cs["lo"], min), _extend(col.hi, cs["hi"], max)
            if contract.label is not None:
                if "label" in part:
                    stats.label = stats.label or _Tally()
                    stats.label.add(*part["label"])
                else:
                    stats.label_missing_rows += part["rows"]
        return stats


def _extend(current: Any, new: Any, pick) -> Any:
    """``pick(current, new)``; blocks whose types disagree (the type check reports it) keep the first."""
    try:
        return new if current is None else pick(current, new)
    except TypeError:
        return current


def _checks(keys, contract: Contract, stats: _Stats, num_blocks: int,
            shuffle: str) -> list[CheckResult]:
    out: list[CheckResult] = []
    for name, rule in contract.columns.items():
        col = stats.cols.get(name)
        missing = stats.rows - (col.rows if col else 0)
        present = name in stats.names and (col is not None or not stats.rows)
        out.append(CheckResult("column_present", name, present and not missing, missing, [],
                               f"{name}: present" if present and not missing else
                               f"{name}: column missing{_partly(missing, stats.rows)}; dataset columns: "
                               f"{', '.join(stats.names) or '(none)'}"))
        if col is not None:
            out += _column_checks(name, rule, col)
        if col is not None and rule.unique:
            kinds = {k for k in col.types.values() if k}
            out.append(_unique(keys, name, num_blocks, shuffle) if not missing and len(kinds) <= 1 else
                       CheckResult("unique", name, False, 0, [], f"{name}: uniqueness not checked: the "
                                   "column is missing from some blocks or its type differs between them"))
    if contract.row_count is not None:
        out.append(_row_count(contract.row_count, stats.rows))
    if contract.label is not None:
        out.append(_label(contract.label, stats))
    return out


def _column_checks(name: str, rule: ColumnRule, col: _Column) -> list[CheckResult]:
    out = []
    if rule.type is not None:
        t = col.tally("wrong_type")
        seen = ", ".join(sorted(f"{k} ({a})" if k != a else a for a, k in col.types.items() if k)) or "null"
        out.append(CheckResult("type", name, not t.n, t.n, t.examples,
                               f"{name}: type {seen}, expected {rule.type}"
                               + (f" in {t.n:,} row(s){_eg(t.examples)}" if t.n else "")))
    if not rule.nullable:
        out.append(CheckResult("nullable", name, not col.nulls, col.nulls, [],
                               f"{name}: {col.nulls:,} null(s) in a non-nullable column"))
    if rule.max_null_share is not None:
        share = col.nulls / col.rows if col.rows else 0.0
        bad = share > rule.max_null_share
        out.append(CheckResult("max_null_share", name, not bad, col.nulls if bad else 0, [],
                               f"{name}: {col.nulls:,} null(s) = {share:.2%} of {col.rows:,} rows, "
                               f"{'above' if bad else 'within'} max_null_share {rule.max_null_share:.2%}"))
    for op, word in (("min", "below"), ("max", "above")):
        bound = getattr(rule, op)
        if bound is None:
            continue
        t, b = col.tally(op), _fmt(bound)
        kinds = {k for k in col.types.values() if k}
        comparable = kinds <= ({"timestamp"} if isinstance(bound, datetime) else {"int", "float"})
        seen = col.lo if op == "min" else col.hi
        msg = (f"{name}: {t.n:,} value(s) {word} {op} {b}{_eg(t.examples)}" if comparable
               else f"{name}: {t.n:,} value(s) of type {', '.join(sorted(kinds))} cannot be compared "
                    f"with {op} {b}{_eg(t.examples)}")
        out.append(CheckResult(op, name, not t.n, t.n, t.examples,
                               msg if t.n else f"{name}: no value {word} {op} {b}"
                               + (f" ({'lowest' if op == 'min' else 'highest'} {_fmt(seen)})"
                                  if seen is not None else "")))
    if rule.allowed is not None:
        t = col.tally("allowed")
        out.append(CheckResult("allowed", name, not t.n, t.n, t.examples,
                               f"{name}: {t.n:,} value(s) not in allowed {_short(rule.allowed)}"
                               f"{_eg(t.examples)}"))
    return out


def _key_counts(keys, name: str, num_blocks: int, shuffle: str = DEFAULT_SHUFFLE):
    """The (lazy) dataset of ``name``'s non-null values and their counts: one group-by shuffle
    with ``shuffle``."""
    from ray.data import DataContext

    # As many output partitions as input blocks, at most Ray's default: its default of 200
    # partitions costs ~10 s of task overhead on a small single-block dataset.
    partitions = max(1, min(num_blocks, DataContext.get_current().default_hash_shuffle_parallelism))
    values = keys.select_columns([name]).map_batches(
        _drop_nulls, batch_format="pyarrow", batch_size=None, fn_kwargs={"column": name})
    return with_shuffle(values, shuffle).groupby(
        name, num_partitions=partitions).count()


def _unique(keys, name: str, num_blocks: int, shuffle: str) -> CheckResult:
    """Duplicates of ``name`` by one shuffle: group-by count, keep counts > 1, reduce per block."""
    counts = _key_counts(keys, name, num_blocks, shuffle)
    extra, values, t = 0, 0, _Tally()
    for row in counts.map_batches(_duplicate_stats, batch_format="pyarrow", batch_size=None,
                                  fn_kwargs={"column": name}).take_all():
        part = pickle.loads(row[_PARTIAL])
        extra, values = extra + part["extra"], values + part["values"]
        t.add(part["extra"], part["examples"])
    return CheckResult("unique", name, not extra, extra, t.examples,
                       f"{name}: {extra:,} duplicate row(s) over {values:,} repeated value(s)"
                       f"{_eg(t.examples)}" if extra else f"{name}: all values unique")


def _drop_nulls(batch, column: str):
    return pa.table({column: _non_null(batch.column(column))[0]})


def _duplicate_stats(batch, column: str):
    count = next(c for c in batch.column_names if c != column)  # "count()" in Ray 2.60
    dups = batch.filter(pc.greater(batch.column(count), 1))
    part = {"values": dups.num_rows, "extra": int(pc.sum(dups.column(count)).as_py() or 0) - dups.num_rows,
            "examples": _examples(dups.column(column).combine_chunks()) if dups.num_rows else []}
    return pa.table({_PARTIAL: pa.array([pickle.dumps(part)], pa.binary())})


def _row_count(rule: RowCount, n: int) -> CheckResult:
    short = max(0, (rule.min or 0) - n)
    over = max(0, n - rule.max) if rule.max is not None else 0
    msg = (f"row count {n:,} is {short:,} below min {rule.min:,}" if short else
           f"row count {n:,} is {over:,} above max {rule.max:,}" if over else
           f"row count {n:,} within [{rule.min or 0:,}, {'-' if rule.max is None else f'{rule.max:,}'}]")
    failed = bool(short or over)
    return CheckResult("row_count", None, not failed, short + over, [n] if failed else [], msg)


def _label(rule: LabelRule, stats: _Stats) -> CheckResult:
    n = stats.label_missing_rows
    if n or rule.column not in stats.names:
        return CheckResult("label", rule.column, False, n, [],
                           f"label column '{rule.column}' missing{_partly(n, stats.rows)}; dataset "
                           f"columns: {', '.join(stats.names) or '(none)'}")
    t = stats.label or _Tally()
    return CheckResult("label", rule.column, not t.n, t.n, t.examples,
                       f"{rule.column}: {t.n:,} label value(s) not in {rule.values}{_eg(t.examples)}")


def _partly(missing: int, rows: int) -> str:
    """From how many rows a column is missing (some blocks may have it, others not)."""
    if not rows:
        return " (no rows)"
    return f" from all {rows:,} rows" if missing == rows else f" from {missing:,} of {rows:,} rows"


def _fmt(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return repr(value) if isinstance(value, str) else str(value)


def _eg(examples: list) -> str:
    return f" (e.g. {', '.join(_fmt(e) for e in examples)})" if examples else ""


def _short(options: list, limit: int = 6) -> str:
    shown = ", ".join(_fmt(o) for o in options[:limit])
    return f"[{shown}{f', ... {len(options)} in all' if len(options) > limit else ''}]"
