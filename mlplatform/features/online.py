"""The online feature store: the latest feature values of each entity, for lookups at serving time.

Two backends behind one protocol, :class:`OnlineStore`, picked by :func:`open_online_store`:

* :class:`SQLiteOnlineStore` (default): one embedded file, ``<storage_root>/online.db``, in WAL
  mode, so a materialization job can write while Ray Serve replicas on the same node read.
* :class:`RedisOnlineStore`: a shared Redis server, for writers and readers on different nodes.

Both keep one row per (view, entity). A write replaces the stored row only if its event
timestamp is >= the stored one, so replaying or back-filling older data never overwrites newer
values. Timestamps are stored as integer microseconds since the epoch; naive ones are taken as UTC.

Entity keys: the join key values, taken in the order of the *sorted join key names*, each
normalised to a string (numpy scalars to Python, integral floats to ints, then ``str``) and
encoded as a JSON list, e.g. ``["42","FR"]`` for ``{"country": "FR", "user_id": 42}``. A row
written from pandas (``numpy.int64(42)``) and a JSON request (``42`` or ``"42"``) thus name the
same entity, and the order in which a caller lists the join keys does not matter.

Example:
    >>> store = SQLiteOnlineStore("/tmp/online.db")
    >>> df = pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp("2024-01-01", tz="UTC")],
    ...                    "txn_count_1h": [3]})
    >>> store.write("user_activity", df, join_keys=["user_id"])
    1
    >>> store.read("user_activity", ["user_id"], [{"user_id": 1}, {"user_id": 2}])
    [{'txn_count_1h': 3, 'event_timestamp': Timestamp('2024-01-01 00:00:00+0000', tz='UTC')}, None]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from mlplatform.errors import ConfigError, DataValidationError, MLPlatformError

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


def open_online_store(config: Any) -> OnlineStore:
    """The online store a :class:`~mlplatform.config.PlatformConfig` names."""
    if config.online_store == "redis":
        return RedisOnlineStore(config.redis_url)
    return SQLiteOnlineStore(Path(config.storage_root) / "online.db")


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


# ----------------------------------------------------------------------------- SQLite
class SQLiteOnlineStore:
    """Online store in one SQLite file (WAL mode), shared safely by several processes.

    Each view is a table ``fv_<view>(entity_key PRIMARY KEY, ts, features JSON)``, created on the
    first write; ``mlp_views`` lists each view's feature names and ``mlp_watermarks`` its
    watermark. Writes are short ``BEGIN IMMEDIATE`` transactions of at most 20k rows; readers are
    never blocked by them (WAL). ``synchronous=NORMAL``: a power loss may drop the last writes,
    which the next materialization restores. One connection per object, guarded by a lock, so a
    store may be shared by threads; pickling reopens the file (for Ray tasks).

    Args:
        path: Database file; its folder is created if missing.
    """

    def __init__(self, path: str | Path):
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self._path), timeout=30.0, isolation_level=None,
                                     check_same_thread=False, cached_statements=256)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._features: dict[str, set[str]] = {}

    def __reduce__(self):
        return (SQLiteOnlineStore, (self._path,))

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self._path)!r})"

    @staticmethod
    def _table(view: str) -> str:
        return '"fv_' + _check_view(view) + '"'

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")  # take the write lock now: no read-to-write upgrade
            try:
                cur.execute("CREATE TABLE IF NOT EXISTS mlp_views (view TEXT PRIMARY KEY, "
                            "features TEXT NOT NULL) WITHOUT ROWID")
                cur.execute("CREATE TABLE IF NOT EXISTS mlp_watermarks (view TEXT PRIMARY KEY, "
                            "ts INTEGER NOT NULL) WITHOUT ROWID")
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one read; a table not created yet reads as empty."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def write(self, view: str, df: pd.DataFrame, join_keys: list[str],
              timestamp_column: str = "event_timestamp") -> int:
        features, keys, micros, payloads = _prepare(view, df, join_keys, timestamp_column)
        if not keys:
            return 0
        table = self._table(view)
        upsert = (f"INSERT INTO {table} (entity_key, ts, features) VALUES (?, ?, ?) "
                  f"ON CONFLICT(entity_key) DO UPDATE SET ts = excluded.ts, features = excluded.features "
                  f"WHERE excluded.ts >= {table}.ts")
        changed = 0
        for start in range(0, len(keys), _SQLITE_CHUNK):
            end = start + _SQLITE_CHUNK
            with self._write_txn() as cur:
                if start == 0:
                    cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (entity_key TEXT PRIMARY KEY, "
                                "ts INTEGER NOT NULL, features TEXT NOT NULL) WITHOUT ROWID")
                    row = cur.execute("SELECT features FROM mlp_views WHERE view = ?", (view,)).fetchone()
                    known = json.loads(row[0]) if row else []
                    merged = known + [f for f in features if f not in known]
                    if merged != known or row is None:
                        cur.execute("INSERT OR REPLACE INTO mlp_views VALUES (?, ?)",
                                    (view, json.dumps(merged)))
                    self._features[view] = set(merged)
                cur.executemany(upsert, zip(keys[start:end], micros[start:end], payloads[start:end],
                                            strict=True))
                changed += cur.rowcount
        return changed

    def read(self, view: str, join_keys: list[str], entity_rows: list[dict],
             features: list[str] | None = None) -> list[dict | None]:
        table = self._table(view)
        keys = [_entity_key(row, join_keys) for row in entity_rows]
        if features is not None and not set(features) <= self._features.get(view, set()):
            rows = self._query("SELECT features FROM mlp_views WHERE view = ?", (view,))
            if rows:
                self._features[view] = set(json.loads(rows[0][0]))
                _check_features(view, features, self._features[view])
        # One statement with one parameter whatever the batch size: its plan stays cached.
        found = {k: (ts, payload) for k, ts, payload in self._query(
            f"SELECT entity_key, ts, features FROM {table} "
            "WHERE entity_key IN (SELECT value FROM json_each(?))",
            (json.dumps([k for k in keys if k is not None]),))}
        out: list[dict | None] = []
        for k in keys:
            hit = found.get(k) if k is not None else None
            out.append(None if hit is None else _result(hit[1], hit[0], features))
        return out

    def get_watermark(self, view: str) -> pd.Timestamp | None:
        rows = self._query("SELECT ts FROM mlp_watermarks WHERE view = ?", (_check_view(view),))
        return _timestamp(rows[0][0]) if rows else None

    def set_watermark(self, view: str, ts: Any) -> None:
        micros = _to_micros(ts)
        with self._write_txn() as cur:
            cur.execute("INSERT OR REPLACE INTO mlp_watermarks VALUES (?, ?)", (_check_view(view), micros))

    def views(self) -> list[str]:
        names = [r[0] for r in self._query("SELECT view FROM mlp_views ORDER BY view")]
        return [v for v in names if self._query(f"SELECT 1 FROM {self._table(v)} LIMIT 1")]

    def count(self, view: str) -> int:
        rows = self._query(f"SELECT COUNT(*) FROM {self._table(view)}")
        return int(rows[0][0]) if rows else 0

    def delete_view(self, view: str) -> None:
        table = self._table(view)
        with self._write_txn() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute("DELETE FROM mlp_views WHERE view = ?", (view,))
            cur.execute("DELETE FROM mlp_watermarks WHERE view = ?", (view,))
        self._features.pop(view, None)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ----------------------------------------------------------------------------- Redis
# KEYS[1]: the view's set of entity keys; KEYS[2..]: entity keys. ARGV: ts, value per entity.
# A value is the JSON text '[<ts µs>,{features}]'; the stored ts is its leading number.
_UPSERT_LUA = """
local changed = 0
for i = 2, #KEYS do
  local ts = tonumber(ARGV[2 * i - 3])
  local old = redis.call('GET', KEYS[i])
  if not old or ts >= tonumber(string.match(old, '^%[(%-?%d+),')) then
    redis.call('SET', KEYS[i], ARGV[2 * i - 2])
    if not old then redis.call('SADD', KEYS[1], KEYS[i]) end
    changed = changed + 1
  end
end
return changed
"""


def _redacted(url: str) -> str:
    return re.sub(r"//([^@/]*):[^@/]*@", r"//\1:***@", url)


class RedisOnlineStore:
    """Online store on a Redis server, shared by every node of a cluster.

    Layout under ``<namespace>:<view>:``: each entity is one string, ``<key>`` (the JSON entity
    key, so it starts with ``[``) holding ``[<ts µs>,{features}]``; ``#keys`` is the set of the
    view's entity keys (for :meth:`count` and :meth:`delete_view`), ``#features`` its feature
    names and ``#watermark`` its watermark. ``<namespace>:#views`` lists the views. The "only
    newer" rule runs atomically in a Lua script, one call per 1000 entities, pipelined. Made for
    a single Redis server (not Redis Cluster: a script's keys span slots).

    Args:
        url: ``redis://[[user]:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        namespace: Prefix of every key, so several platforms can share one server.

    Raises:
        MLPlatformError: The server cannot be reached (checked with a PING on construction).
    """

    def __init__(self, url: str, namespace: str = "mlp"):
        import redis

        self._url, self._ns = url, namespace
        self._features: dict[str, set[str]] = {}
        try:
            self._client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60)
        except ValueError as exc:
            raise ConfigError(f"invalid redis_url {_redacted(url)!r}: {exc}. Use e.g. "
                              "redis://127.0.0.1:6379/0 (redis_url or MLP_REDIS_URL).") from None
        self._upsert = self._client.register_script(_UPSERT_LUA)
        with self._errors():
            self._client.ping()

    def __reduce__(self):
        return (RedisOnlineStore, (self._url, self._ns))

    def __repr__(self) -> str:
        return f"RedisOnlineStore({_redacted(self._url)!r}, namespace={self._ns!r})"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import redis

        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise MLPlatformError(
                f"cannot reach the Redis online store at {_redacted(self._url)}: {str(exc).rstrip('.')}. "
                "Start a Redis server there, point redis_url (MLP_REDIS_URL) at a running one, or set "
                "online_store: sqlite to use the embedded store.") from None

    def _key(self, view: str, suffix: str) -> str:
        return f"{self._ns}:{_check_view(view)}:{suffix}"

    def write(self, view: str, df: pd.DataFrame, join_keys: list[str],
              timestamp_column: str = "event_timestamp") -> int:
        features, keys, micros, payloads = _prepare(view, df, join_keys, timestamp_column)
        if not keys:
            return 0
        prefix, members = self._key(view, ""), self._key(view, "#keys")
        changed = 0
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            pipe.sadd(f"{self._ns}:#views", view)
            if features:
                pipe.sadd(self._key(view, "#features"), *features)
            skip = len(pipe)  # replies that are not the script's
            for n, start in enumerate(range(0, len(keys), _REDIS_CHUNK), 1):
                end = start + _REDIS_CHUNK
                args: list[Any] = []
                for ts, payload in zip(micros[start:end], payloads[start:end], strict=True):
                    args += [ts, f"[{ts},{payload}]"]
                self._upsert(keys=[members, *(prefix + k for k in keys[start:end])], args=args, client=pipe)
                if n % _REDIS_FLUSH == 0 or end >= len(keys):
                    changed += sum(pipe.execute()[skip:])
                    skip = 0
        return changed

    def read(self, view: str, join_keys: list[str], entity_rows: list[dict],
             features: list[str] | None = None) -> list[dict | None]:
        prefix = self._key(view, "")
        keys = [_entity_key(row, join_keys) for row in entity_rows]
        wanted = [prefix + k for k in keys if k is not None]
        check = features is not None and not set(features) <= self._features.get(view, set())
        values: list[bytes | None] = []
        with self._errors():
            if check:  # fetch the feature names in the same round trip
                pipe = self._client.pipeline(transaction=False)
                pipe.smembers(self._key(view, "#features"))
                if wanted:
                    pipe.mget(wanted)
                names, *rest = pipe.execute()
                values = rest[0] if rest else []
                if names:
                    self._features[view] = {n.decode() for n in names}
                    _check_features(view, features, self._features[view])
            elif wanted:
                values = self._client.mget(wanted)
        found = dict(zip(wanted, values, strict=True))
        out: list[dict | None] = []
        for k in keys:
            raw = found.get(prefix + k) if k is not None else None
            if raw is None:
                out.append(None)
                continue
            micros, payload = raw.split(b",", 1)
            out.append(_result(payload[:-1], int(micros[1:]), features))
        return out

    def get_watermark(self, view: str) -> pd.Timestamp | None:
        with self._errors():
            raw = self._client.get(self._key(view, "#watermark"))
        return None if raw is None else _timestamp(int(raw))

    def set_watermark(self, view: str, ts: Any) -> None:
        with self._errors():
            self._client.set(self._key(view, "#watermark"), _to_micros(ts))

    def views(self) -> list[str]:
        with self._errors():
            names = sorted(n.decode() for n in self._client.smembers(f"{self._ns}:#views"))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.scard(self._key(name, "#keys"))
            sizes = pipe.execute() if names else []
        return [n for n, size in zip(names, sizes, strict=True) if size]

    def count(self, view: str) -> int:
        with self._errors():
            return int(self._client.scard(self._key(view, "#keys")))

    def delete_view(self, view: str) -> None:
        members = self._key(view, "#keys")
        with self._errors():
            batch: list[bytes] = []
            for key in self._client.sscan_iter(members, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
            self._client.unlink(members, self._key(view, "#features"), self._key(view, "#watermark"))
            self._client.srem(f"{self._ns}:#views", view)
        self._features.pop(view, None)

    def close(self) -> None:
        self._client.close()
