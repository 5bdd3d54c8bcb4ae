"""The online feature store, on both backends: embedded SQLite and a real ``redis-server``.

No Ray here; it sits in the integration tier because it runs real servers and processes.
The Redis cases are skipped (with the reason) only when ``redis-server`` is missing or cannot
start; ``make redis`` installs it.
"""

import pickle
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError, DataValidationError, MLPlatformError
from mlplatform.features.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    open_online_store,
)
from tests.conftest import free_port

T0 = pd.Timestamp("2024-03-01 12:00:00", tz="UTC")
HOUR = pd.Timedelta(hours=1)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    """A fresh, empty store of each backend (Redis: its own namespace on the shared server)."""
    if request.param == "sqlite":
        s = SQLiteOnlineStore(tmp_path / "online.db")
    else:
        s = RedisOnlineStore(request.getfixturevalue("redis_url"), namespace=f"t{uuid.uuid4().hex}")
    yield s
    for view in s.views():
        s.delete_view(view)
    s.close()


def _frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_both_stores_satisfy_the_protocol(store):
    assert isinstance(store, OnlineStore)


def test_round_trip_keeps_types_and_maps_nulls_to_none(store):
    df = _frame(
        user_id=np.array([1, 2], dtype="int64"),
        event_timestamp=[T0, T0 + HOUR],
        n_txn=np.array([3, 7], dtype="int64"),
        amount=np.array([12.5, np.nan]),
        ratio32=np.array([0.25, 1.5], dtype="float32"),
        country=pd.Series(["FR", None], dtype="string"),
        opt_count=pd.array([None, 4], dtype="Int64"),
        flag=[True, False],
        label=["a", "b"],
    )
    assert store.write("user_activity", df, join_keys=["user_id"]) == 2

    first, second = store.read("user_activity", ["user_id"], [{"user_id": 1}, {"user_id": 2}])
    assert first == {"n_txn": 3, "amount": 12.5, "ratio32": 0.25, "country": "FR", "opt_count": None,
                     "flag": True, "label": "a", "event_timestamp": T0}
    assert second == {"n_txn": 7, "amount": None, "ratio32": 1.5, "country": None, "opt_count": 4,
                      "flag": False, "label": "b", "event_timestamp": T0 + HOUR}
    assert type(first["n_txn"]) is int and type(first["amount"]) is float and type(first["flag"]) is bool
    assert isinstance(first["event_timestamp"], pd.Timestamp)
    assert str(first["event_timestamp"].tz) == "UTC"


def test_latest_row_of_an_entity_wins_inside_one_write(store):
    # Out of time order on purpose, with a tie at the latest time: the last of the tied rows wins.
    df = _frame(user_id=[1, 1, 1, 1, 2], event_timestamp=[T0 + 2 * HOUR, T0, T0 + 2 * HOUR, T0 + HOUR, T0],
                v=[10, 0, 11, 5, 99])
    assert store.write("view", df, ["user_id"]) == 2
    assert store.read("view", ["user_id"], [{"user_id": 1}]) == [{"v": 11, "event_timestamp": T0 + 2 * HOUR}]
    assert store.count("view") == 2


def test_older_data_never_overwrites_newer_and_equal_timestamp_does(store):
    store.write("view", _frame(user_id=[1, 2], event_timestamp=[T0, T0], v=[1, 2]), ["user_id"])

    # Entity 1 gets older data (ignored), entity 2 newer data (applied), entity 3 is new.
    late = _frame(user_id=[1, 2, 3], event_timestamp=[T0 - HOUR, T0 + HOUR, T0 - HOUR], v=[-1, 20, 30])
    assert store.write("view", late, ["user_id"]) == 2
    got = store.read("view", ["user_id"], [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}])
    assert [(r["v"], r["event_timestamp"]) for r in got] == [(1, T0), (20, T0 + HOUR), (30, T0 - HOUR)]

    # Same timestamp: a re-materialization with corrected values replaces the row.
    assert store.write("view", _frame(user_id=[1], event_timestamp=[T0], v=[100]), ["user_id"]) == 1
    assert store.read("view", ["user_id"], [{"user_id": 1}])[0]["v"] == 100


def test_compound_join_keys_and_missing_entities_keep_input_order(store):
    df = _frame(user_id=[1, 1, 2], country=["FR", "DE", "FR"], event_timestamp=[T0] * 3, n=[10, 20, 30])
    assert store.write("user_country", df, ["user_id", "country"]) == 3
    rows = [{"country": "DE", "user_id": 1, "amount": 5.0},  # extra request fields are ignored
            {"user_id": 9, "country": "FR"},
            {"user_id": 2, "country": "FR"},
            {"user_id": 2, "country": "DE"},
            {"user_id": 1, "country": "FR"},
            {"user_id": 1, "country": "DE"}]
    got = store.read("user_country", ["user_id", "country"], rows)
    assert [r and r["n"] for r in got] == [20, None, 30, None, 10, 20]
    # The order in which a caller lists the join keys does not change the entity key.
    assert store.read("user_country", ["country", "user_id"], rows[:1])[0]["n"] == 20


def test_keys_written_from_pandas_match_keys_read_from_json_requests(store):
    df = _frame(user_id=np.array([42, 7], dtype="int64"),
                merchant=pd.Series(["m-1", "m-2"], dtype="string"),
                event_timestamp=[T0, T0], v=[1, 2])
    store.write("view", df, ["user_id", "merchant"])
    rows = [{"user_id": 42, "merchant": "m-1"},     # Python int and str, as a JSON body holds
            {"user_id": "7", "merchant": "m-2"},    # ids sent as strings
            {"user_id": 42.0, "merchant": "m-1"},   # JSON numbers that came back as floats
            {"user_id": np.int32(7), "merchant": np.str_("m-2")},
            {"user_id": None, "merchant": "m-1"}]   # a null key is never stored
    assert [r and r["v"] for r in store.read("view", ["user_id", "merchant"], rows)] == [1, 2, 1, 2, None]


def test_feature_subset_unknown_feature_and_added_features(store):
    store.write("view", _frame(user_id=[1], event_timestamp=[T0], a=[1], b=[2.5], c=["x"]), ["user_id"])
    assert store.read("view", ["user_id"], [{"user_id": 1}, {"user_id": 2}], features=["c", "a"]) == [
        {"c": "x", "a": 1, "event_timestamp": T0}, None]
    with pytest.raises(KeyError, match="nope"):
        store.read("view", ["user_id"], [{"user_id": 1}], features=["a", "nope"])

    # A later write adds feature d: entities written before it read d as None.
    store.write("view", _frame(user_id=[2], event_timestamp=[T0], a=[5], d=[8]), ["user_id"])
    got = store.read("view", ["user_id"], [{"user_id": 1}, {"user_id": 2}], features=["a", "d"])
    assert got == [{"a": 1, "d": None, "event_timestamp": T0}, {"a": 5, "d": 8, "event_timestamp": T0}]


def test_read_views_reads_every_view_in_one_round_trip(store, monkeypatch):
    """Several views with different join keys, as a scoring request reads them: the same
    answers as one read per view (missing entity, null key, a view never written, a feature
    subset), from one statement (SQLite) or one MGET (Redis); an unknown feature is refused."""
    store.write("user", _frame(user_id=[1, 2], event_timestamp=[T0, T0 + HOUR], n=[3, 4]),
                ["user_id"])
    store.write("merchant", _frame(merchant_id=["m1"], event_timestamp=[T0], rate=[0.5],
                                   seen=[9]), ["merchant_id"])
    store.write("user_country", _frame(user_id=[1], country=["FR"], event_timestamp=[T0], k=[7]),
                ["user_id", "country"])
    rows = [{"user_id": 1, "merchant_id": "m1", "country": "FR"},
            {"user_id": 2, "merchant_id": "m2", "country": "DE"},
            {"user_id": None, "merchant_id": "m1", "country": "FR"}]
    views = [("user", ["user_id"], None), ("merchant", ["merchant_id"], ["rate"]),
             ("user_country", ["user_id", "country"], None), ("never_written", ["user_id"], None)]
    expected = [store.read(v, keys, rows, features) for v, keys, features in views]
    assert expected[0][0]["n"] == 3 and expected[1] == [
        {"rate": 0.5, "event_timestamp": T0}, None, {"rate": 0.5, "event_timestamp": T0}]
    assert expected[3] == [None, None, None]

    if isinstance(store, SQLiteOnlineStore):
        statements = []
        store._conn.set_trace_callback(statements.append)
        got = store.read_views(rows, views[:3])
        store._conn.set_trace_callback(None)
        assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 1, \
            statements
    else:
        calls = {}
        real = store._client.execute_command

        def counted(*args, **kwargs):
            calls[args[0]] = calls.get(args[0], 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(store._client, "execute_command", counted)
        got = store.read_views(rows, views[:3])
        monkeypatch.undo()
        assert calls == {"MGET": 1}, calls
    assert got == expected[:3]
    assert store.read_views(rows, views) == expected     # with a view that has no data yet
    with pytest.raises(KeyError, match="nope"):
        store.read_views(rows, [views[0], ("merchant", ["merchant_id"], ["rate", "nope"])])


def test_unknown_view_reads_as_absent(store):
    assert store.read("never_written", ["user_id"], [{"user_id": 1}, {"user_id": 2}]) == [None, None]
    assert store.count("never_written") == 0
    assert store.views() == []


def test_watermark_round_trip(store):
    assert store.get_watermark("view") is None
    store.set_watermark("view", pd.Timestamp("2024-03-01 14:30:00.123456", tz="Europe/Paris"))
    assert store.get_watermark("view") == pd.Timestamp("2024-03-01 13:30:00.123456", tz="UTC")
    store.set_watermark("view", "2024-03-02T00:00:00")  # naive means UTC
    wm = store.get_watermark("view")
    assert wm == pd.Timestamp("2024-03-02", tz="UTC") and str(wm.tz) == "UTC"
    assert store.views() == []  # a watermark alone is not data


def test_views_count_and_delete_view(store):
    store.write("a", _frame(user_id=[1, 2, 3], event_timestamp=[T0] * 3, v=[1, 2, 3]), ["user_id"])
    store.write("b", _frame(user_id=[1], event_timestamp=[T0], v=[9]), ["user_id"])
    store.set_watermark("a", T0)
    store.set_watermark("b", T0)
    assert store.views() == ["a", "b"]
    assert (store.count("a"), store.count("b")) == (3, 1)

    store.delete_view("a")
    assert store.views() == ["b"]
    assert store.count("a") == 0
    assert store.get_watermark("a") is None
    assert store.read("a", ["user_id"], [{"user_id": 1}]) == [None]
    # The other view is untouched, and the deleted one can be written again from scratch.
    assert store.read("b", ["user_id"], [{"user_id": 1}])[0]["v"] == 9
    assert store.get_watermark("b") == T0
    assert store.write("a", _frame(user_id=[1], event_timestamp=[T0 - HOUR], w=[0]), ["user_id"]) == 1
    assert store.read("a", ["user_id"], [{"user_id": 1}]) == [{"w": 0, "event_timestamp": T0 - HOUR}]


def test_large_write_is_batched_and_counted(store):
    n = 25_000  # over one SQLite transaction (20k) and one Redis pipeline flush (20 x 1000)
    df = _frame(user_id=np.arange(n), event_timestamp=[T0] * n, v=np.arange(n) * 2)
    assert store.write("big", df, ["user_id"]) == n
    assert store.count("big") == n
    newer = df.assign(event_timestamp=np.where(df.user_id % 2 == 0, T0 + HOUR, T0 - HOUR), v=-1)
    assert store.write("big", newer, ["user_id"]) == n // 2 + n % 2
    got = store.read("big", ["user_id"], [{"user_id": i} for i in (0, 1, n - 1)])
    assert [r["v"] for r in got] == [-1, 2, 2 * (n - 1)]


def test_store_survives_pickling_for_ray_tasks(store):
    store.write("view", _frame(user_id=[1], event_timestamp=[T0], v=[1]), ["user_id"])
    copy = pickle.loads(pickle.dumps(store))
    try:
        assert copy.read("view", ["user_id"], [{"user_id": 1}])[0]["v"] == 1
    finally:
        copy.close()


def test_invalid_input_raises_project_errors(store):
    with pytest.raises(DataValidationError, match="user_id"):
        store.write("view", _frame(event_timestamp=[T0], v=[1]), ["user_id"])
    with pytest.raises(DataValidationError, match="null join key"):
        store.write("view", _frame(user_id=[1, None], event_timestamp=[T0, T0], v=[1, 2]), ["user_id"])
    with pytest.raises(DataValidationError, match="null timestamps"):
        store.write("view", _frame(user_id=[1], event_timestamp=[pd.NaT], v=[1]), ["user_id"])
    with pytest.raises(DataValidationError, match="not a timestamp"):
        store.write("view", _frame(user_id=[1], event_timestamp=[1_700_000_000], v=[1]), ["user_id"])
    with pytest.raises(DataValidationError, match="lacks join key 'country'"):
        store.read("view", ["user_id", "country"], [{"user_id": 1}])
    with pytest.raises(ConfigError, match="invalid feature view name"):
        store.write("bad:name", _frame(user_id=[1], event_timestamp=[T0], v=[1]), ["user_id"])
    assert store.views() == []


# ----------------------------------------------------------------------------- SQLite specifics
_WRITER = """
import sys, pandas as pd
from mlplatform.features.online import SQLiteOnlineStore
store = SQLiteOnlineStore(sys.argv[1])
ts = pd.Timestamp(sys.argv[2])
df = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [ts, ts], sys.argv[3]: [10, 20]})
print(store.write("user_activity", df, ["user_id"]))
"""


def test_sqlite_writer_process_and_reader_share_one_file(tmp_path):
    """A materialization job (another process) writes while a Serve replica keeps its store open."""
    path = tmp_path / "online.db"
    reader = SQLiteOnlineStore(path)  # opened before any table exists
    assert reader.read("user_activity", ["user_id"], [{"user_id": 1}]) == [None]

    def materialize(ts: pd.Timestamp, feature: str) -> str:
        out = subprocess.run([sys.executable, "-c", _WRITER, str(path), ts.isoformat(), feature],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert materialize(T0, "n") == "2"
    assert reader.read("user_activity", ["user_id"], [{"user_id": 2}], features=["n"]) == [
        {"n": 20, "event_timestamp": T0}]

    # The reader's writes are seen by a second in-process writer object too.
    writer = SQLiteOnlineStore(path)
    writer.write("user_activity", _frame(user_id=[1], event_timestamp=[T0 + HOUR], n=[11]), ["user_id"])
    assert reader.read("user_activity", ["user_id"], [{"user_id": 1}])[0]["n"] == 11

    # The job drops and rebuilds the view with another feature: the open reader follows.
    writer.delete_view("user_activity")
    assert reader.read("user_activity", ["user_id"], [{"user_id": 1}]) == [None]
    assert materialize(T0, "m") == "2"
    assert reader.read("user_activity", ["user_id"], [{"user_id": 1}], features=["m"])[0]["m"] == 10
    assert reader.count("user_activity") == 2
    assert path.with_name("online.db-wal").exists()  # WAL mode: readers never wait on the writer
    reader.close()
    writer.close()


def test_sqlite_read_of_32_keys_is_fast(tmp_path):
    n = 50_000
    store = SQLiteOnlineStore(tmp_path / "online.db")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": np.arange(n), "event_timestamp": T0,
                       **{f"f{i}": rng.random(n) for i in range(13)}})
    started = time.perf_counter()
    assert store.write("user_activity", df, ["user_id"]) == n
    write_s = time.perf_counter() - started

    latencies = []
    for _ in range(300):
        ids = rng.integers(0, n, 32)
        rows = [{"user_id": int(i)} for i in ids]
        started = time.perf_counter()
        got = store.read("user_activity", ["user_id"], rows)
        latencies.append((time.perf_counter() - started) * 1000)
        assert [r["f0"] for r in got] == df.f0.to_numpy()[ids].tolist()
    median, p99 = statistics.median(latencies), float(np.percentile(latencies, 99))
    print(f"\nSQLite online store: write {n / write_s:,.0f} rows/s; read 32 keys of {n:,}: "
          f"median {median:.3f} ms, p99 {p99:.3f} ms")
    assert median < 50
    store.close()


# ----------------------------------------------------------------------------- config & errors
def test_open_online_store_defaults_to_sqlite_under_storage_root(tmp_path):
    store = open_online_store(PlatformConfig(storage_root=tmp_path / "root"))
    assert isinstance(store, SQLiteOnlineStore)
    store.write("v", _frame(user_id=[1], event_timestamp=[T0], x=[1]), ["user_id"])
    assert (tmp_path / "root" / "online.db").is_file()
    store.close()


def test_open_online_store_picks_redis_when_configured(tmp_path, redis_url):
    config = PlatformConfig(storage_root=tmp_path, online_store="redis", redis_url=redis_url)
    store = open_online_store(config)
    assert isinstance(store, RedisOnlineStore)
    store.write("v", _frame(user_id=[1], event_timestamp=[T0], x=[1]), ["user_id"])
    assert store.count("v") == 1
    store.delete_view("v")
    store.close()
    assert not (tmp_path / "online.db").exists()


def test_redis_connection_refused_names_the_url():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(MLPlatformError, match=re.escape(url)) as info:
        RedisOnlineStore(url)
    assert "online_store: sqlite" in str(info.value)
