"""The shared online store: a Redis server, for clusters."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd

from mlplatform.errors import ConfigError, MLPlatformError
from mlplatform.features.online_base import (
    _REDIS_CHUNK,
    _REDIS_FLUSH,
    _check_features,
    _check_view,
    _entity_key,
    _prepare,
    _result,
    _timestamp,
    _to_micros,
)

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
        return self.read_views(entity_rows, [(view, join_keys, features)])[0]

    def read_views(self, entity_rows: list[dict],
                   views: list[tuple[str, list[str], list[str] | None]]) -> list[list[dict | None]]:
        """One pipeline, one round trip: the feature names of views that ask for a feature not
        seen yet (SMEMBERS), then every view's entity keys in a single MGET."""
        keys = [[_entity_key(row, join_keys) for row in entity_rows] for _, join_keys, _ in views]
        wanted = [self._key(view, "") + k for (view, _, _), ks in zip(views, keys, strict=True)
                  for k in ks if k is not None]
        check = [(view, features) for view, _, features in views if features is not None
                 and not set(features) <= self._features.get(view, set())]
        with self._errors():
            if check:
                pipe = self._client.pipeline(transaction=False)
                for view, _ in check:
                    pipe.smembers(self._key(view, "#features"))
                if wanted:
                    pipe.mget(wanted)
                *names, values = pipe.execute() if wanted else [*pipe.execute(), []]
                for (view, features), got in zip(check, names, strict=True):
                    if got:
                        self._features[view] = {n.decode() for n in got}
                        _check_features(view, features, self._features[view])
            else:
                values = self._client.mget(wanted) if wanted else []
        found = dict(zip(wanted, values, strict=True))
        out: list[list[dict | None]] = []
        for (view, _, features), ks in zip(views, keys, strict=True):
            prefix, rows = self._key(view, ""), []
            for k in ks:
                raw = found.get(prefix + k) if k is not None else None
                if raw is None:
                    rows.append(None)
                    continue
                micros, payload = raw.split(b",", 1)
                rows.append(_result(payload[:-1], int(micros[1:]), features))
            out.append(rows)
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
