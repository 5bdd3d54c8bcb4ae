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
encoded as a JSON list, e.g. ``["42","FR"]`` for ``{"region": "FR", "customer_id": 42}``. A row
written from pandas (``numpy.int64(42)``) and a JSON request (``42`` or ``"42"``) thus name the
same entity, and the order in which a caller lists the join keys does not matter.

Example:
    >>> store = SQLiteOnlineStore("/tmp/online.db")
    >>> df = pd.DataFrame({"customer_id": [1], "event_timestamp": [pd.Timestamp("2024-01-01",
    ...                    tz="UTC")], "orders_1h": [3]})
    >>> store.write("customer_stats", df, join_keys=["customer_id"])
    1
    >>> store.read("customer_stats", ["customer_id"], [{"customer_id": 1}, {"customer_id": 2}])
    [{'orders_1h': 3, 'event_timestamp': Timestamp('2024-01-01 00:00:00+0000', tz='UTC')}, None]
"""

from pathlib import Path
from typing import Any

from mlplatform.features.online_base import OnlineStore
from mlplatform.features.online_redis import RedisOnlineStore
from mlplatform.features.online_sqlite import SQLiteOnlineStore

__all__ = ["OnlineStore", "RedisOnlineStore", "SQLiteOnlineStore", "open_online_store"]


def open_online_store(config: Any) -> OnlineStore:
    """The online store a :class:`~mlplatform.config.PlatformConfig` names (``online_store``:
    ``sqlite`` under ``storage_root``, or ``redis`` at ``redis_url``)."""
    if config.online_store == "redis":
        return RedisOnlineStore(config.redis_url)
    return SQLiteOnlineStore(Path(config.storage_root) / "online.db")
