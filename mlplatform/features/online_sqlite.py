"""The embedded online store: one SQLite file (WAL), the default."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.features.online_base import (
    _SQLITE_CHUNK,
    _check_features,
    _check_view,
    _entity_key,
    _prepare,
    _result,
    _timestamp,
    _to_micros,
)


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
        return self.read_views(entity_rows, [(view, join_keys, features)])[0]

    def read_views(self, entity_rows: list[dict],
                   views: list[tuple[str, list[str], list[str] | None]]) -> list[list[dict | None]]:
        keys = [[_entity_key(row, join_keys) for row in entity_rows] for _, join_keys, _ in views]
        for view, _, features in views:
            self._check_known(view, features)
        found = self._select_views([view for view, _, _ in views], keys)
        out = []
        for by_key, ks, (_, _, features) in zip(found, keys, views, strict=True):
            hits = [by_key.get(k) if k is not None else None for k in ks]
            out.append([None if hit is None else _result(hit[1], hit[0], features)
                        for hit in hits])
        return out

    def _check_known(self, view: str, features: list[str] | None) -> None:
        """Refresh the view's feature names when ``features`` asks for one not seen yet, and
        refuse names the view does not have."""
        if features is not None and not set(features) <= self._features.get(view, set()):
            rows = self._query("SELECT features FROM mlp_views WHERE view = ?", (view,))
            if rows:
                self._features[view] = set(json.loads(rows[0][0]))
                _check_features(view, features, self._features[view])

    @staticmethod
    def _where(keys: list[str]) -> tuple[str, tuple]:
        """One key: a plain primary-key match; several: one JSON parameter whatever their
        number, so the statement's plan stays cached."""
        if len(keys) == 1:
            return "entity_key = ?", (keys[0],)
        return "entity_key IN (SELECT value FROM json_each(?))", (json.dumps(keys),)

    def _select_views(self, views: list[str],
                      keys: list[list[str | None]]) -> list[dict[str, tuple[int, str]]]:
        """Each view's keys in its table, all in one statement (UNION ALL); a view without a
        table yet (nothing materialized) reads as empty."""
        parts, params, out = [], [], [{} for _ in views]
        for i, (view, ks) in enumerate(zip(views, keys, strict=True)):
            present = [k for k in ks if k is not None]
            if present:
                where, p = self._where(present)
                parts.append(f"SELECT {i}, entity_key, ts, features FROM {self._table(view)} "
                             f"WHERE {where}")
                params += p
        if not parts:
            return out
        with self._lock:
            try:
                rows = self._conn.execute(" UNION ALL ".join(parts), params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                if len(parts) == 1:     # its one table does not exist yet
                    return out
                return [self._select_views([v], [ks])[0]
                        for v, ks in zip(views, keys, strict=True)]
        for i, k, ts, payload in rows:
            out[i][k] = (ts, payload)
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


