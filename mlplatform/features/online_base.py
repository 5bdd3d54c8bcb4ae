"""Shared parts of the online stores: the protocol, entity keys, value encoding."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from mlplatform.errors import ConfigError, DataValidationError

_TIMESTAMP = "event_timestamp"  # the key reads return the stored event time under
_EPOCH = pd.Timestamp(0, tz="UTC")
_VIEW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SQLITE_CHUNK = 20_000  # rows per write transaction: keeps the writer lock short for other writers
_REDIS_CHUNK = 1_000  # entities per Lua call: each call blocks the server, keep it ~1 ms
_REDIS_FLUSH = 20  # Lua calls per pipeline round trip


@runtime_checkable
class OnlineStore(Protocol):
    """What serving and materialization need from an online store (see the module docstring)."""

    def write(self, view: str, df: pd.DataFrame, join_keys: list[str],
              timestamp_column: str = "event_timestamp") -> int:
        """Upsert the latest row of each entity of ``df``; return how many entities changed.

        Args:
            view: Feature view name (letters, digits, ``_``, ``.``, ``-``).
            df: One row per entity and event time; every column other than the join keys and
                ``timestamp_column`` is a feature. Several rows of one entity: the latest wins.
            join_keys: Columns that identify the entity.
            timestamp_column: Event time column (tz-aware, or naive UTC).

        Returns:
            Entities inserted or updated (rows older than the stored ones are not counted).

        Raises:
            DataValidationError: A column is missing, a key or timestamp is null, or a value is
                not JSON-able.
        """
        ...

    def read(self, view: str, join_keys: list[str], entity_rows: list[dict],
             features: list[str] | None = None) -> list[dict | None]:
        """Stored values of each entity row, in input order, in one round trip.

        Returns:
            Per row ``{feature: value, ..., "event_timestamp": <UTC Timestamp>}`` (only
            ``features`` when given; a feature the row was written without is None), or None
            when the entity is absent (also when the view has no data yet).

        Raises:
            KeyError: A name in ``features`` is not a feature of the view.
            DataValidationError: An entity row lacks a join key.
        """
        ...

    def read_views(self, entity_rows: list[dict],
                   views: list[tuple[str, list[str], list[str] | None]]) -> list[list[dict | None]]:
        """:meth:`read` of the same entity rows in several views, in one round trip (what a
        scoring request needs: its user, merchant, ... rows at once).

        Args:
            entity_rows: Dicts holding the join keys of every view.
            views: ``(view, join_keys, features)`` per view, as :meth:`read` takes them.

        Returns:
            One :meth:`read` result per view, in the order of ``views``.
        """
        ...

    def get_watermark(self, view: str) -> pd.Timestamp | None:
        """The UTC event time up to which the view was materialized, or None."""
        ...

    def set_watermark(self, view: str, ts: Any) -> None:
        """Record the view's watermark (anything ``pd.Timestamp`` takes; naive means UTC)."""
        ...

    def views(self) -> list[str]:
        """Names of the views that hold data, sorted."""
        ...

    def count(self, view: str) -> int:
        """Number of entities stored for ``view``."""
        ...

    def delete_view(self, view: str) -> None:
        """Drop the data, feature names and watermark of ``view``."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


# ----------------------------------------------------------------------------- shared helpers
def _check_view(view: str) -> str:
    if not isinstance(view, str) or not _VIEW_NAME.match(view):
        raise ConfigError(f"invalid feature view name {view!r}: use letters, digits, '_', '.' and '-' "
                          "(not starting with '.' or '-').")
    return view


def _key_part(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _entity_key(row: dict, join_keys: list[str]) -> str | None:
    """Key of one request row; None when a key value is null (such entities are never stored)."""
    values = []
    for k in sorted(join_keys):
        if k not in row:
            raise DataValidationError(f"entity row {row!r} lacks join key '{k}' (join keys: {join_keys}).")
        if _is_null(row[k]):
            return None
        values.append(_key_part(row[k]))
    return json.dumps(values)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise DataValidationError(f"feature value {value!r} of type {type(value).__name__} cannot be stored "
                              "in the online store: convert it to a number, string, bool or list.")


_dumps = json.JSONEncoder(default=_json_default, separators=(",", ":")).encode


def _prepare(view: str, df: pd.DataFrame, join_keys: list[str],
             timestamp_column: str) -> tuple[list[str], list[str], list[int], list[str]]:
    """Validate ``df``; return (features, entity keys, µs timestamps, JSON payloads), one per entity."""
    _check_view(view)
    if not join_keys:
        raise ConfigError(f"write to view '{view}' needs at least one join key.")
    missing = [c for c in [*join_keys, timestamp_column] if c not in df.columns]
    if missing:
        raise DataValidationError(f"rows for view '{view}' lack column(s) {missing}; "
                                  f"they have {list(df.columns)}.")
    features = [str(c) for c in df.columns if c not in join_keys and c != timestamp_column]
    if _TIMESTAMP in features:
        raise DataValidationError(f"view '{view}' has a feature named '{_TIMESTAMP}', which reads "
                                  "return as the row's event time: rename the column.")
    if df[join_keys].isna().to_numpy().any():
        raise DataValidationError(f"rows for view '{view}' have null join key values in {join_keys}.")
    ts = df[timestamp_column]
    try:
        if ts.dtype.kind in "iufb":  # epoch numbers are ambiguous (s? ms? ns?)
            raise TypeError(f"it holds {ts.dtype} numbers; convert them with pd.to_datetime(..., unit=...)")
        ts = pd.to_datetime(ts, utc=True, format=None if ts.dtype.kind == "M" else "ISO8601")
    except (ValueError, TypeError) as exc:
        raise DataValidationError(f"column '{timestamp_column}' of view '{view}' is not a timestamp: "
                                  f"{exc}") from None
    if ts.isna().any():
        raise DataValidationError(f"column '{timestamp_column}' of view '{view}' has null timestamps.")
    micros = ts.dt.as_unit("us").astype("int64").to_numpy()
    parts = [[_key_part(v) for v in df[k].tolist()] for k in sorted(join_keys)]
    keys = [json.dumps(list(p)) for p in zip(*parts, strict=True)]
    # The latest row of each entity wins; a stable sort keeps the last of equal timestamps last.
    order = np.argsort(micros, kind="stable")
    last: dict[str, int] = {}
    for i in order.tolist():
        last[keys[i]] = i
    rows = sorted(last.values())
    columns = []
    for name in features:
        col = df[name].iloc[rows]
        values = col.tolist()
        if not (isinstance(col.dtype, np.dtype) and col.dtype.kind in "iub"):  # numpy ints/bools: no nulls
            for i in np.flatnonzero(col.isna().to_numpy()).tolist():
                values[i] = None
        columns.append(values)
    payloads = ([_dumps(dict(zip(features, vals, strict=True))) for vals in zip(*columns, strict=True)]
                if features else ["{}"] * len(rows))
    return features, [keys[i] for i in rows], [int(micros[i]) for i in rows], payloads


def _to_micros(ts: Any) -> int:
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return (t - _EPOCH) // pd.Timedelta(1, "us")


def _timestamp(micros: int) -> pd.Timestamp:
    return pd.Timestamp(int(micros), unit="us", tz="UTC")


def _result(payload: str | bytes, micros: int, features: list[str] | None) -> dict:
    values = json.loads(payload)
    if features is not None:
        values = {f: values.get(f) for f in features}
    values[_TIMESTAMP] = _timestamp(micros)
    return values


def _check_features(view: str, wanted: list[str], known: set[str]) -> None:
    unknown = [f for f in wanted if f not in known and f != _TIMESTAMP]
    if unknown:
        raise KeyError(f"feature(s) {unknown} not in view '{view}' of the online store; "
                       f"it has {sorted(known)}.")


