"""Ray Data pipelines of the feature store: the view build and the point-in-time join.

Both partition by a stable hash of the join keys, so every entity's rows meet in one
``map_groups`` call that handles many entities vectorised; nothing is collected in the driver,
and each group is a slice of the data, so inputs far larger than one worker's memory work.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import pandas as pd

from mlplatform.features.definitions import FeatureView

BUCKET = "_bucket"
_KIND = "_kind"          # 0: feature row, 1: entity row (features sort first at equal times)
_US = 1_000_000


def bucket_of(keys: pd.DataFrame, num_buckets: int) -> np.ndarray:
    """A stable (process- and run-independent) hash bucket per row of join-key values."""
    h = pd.util.hash_pandas_object(keys.astype(str), index=False).to_numpy()
    return (h % np.uint64(num_buckets)).astype(np.int64)


def transformation(view: FeatureView) -> Callable[..., pd.DataFrame]:
    """The view's transformation function (built in or ``package.module:function``)."""
    if view.transformation == "window_aggregates":
        from mlplatform.features.aggregates import window_aggregates

        return window_aggregates
    module, _, name = view.transformation.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- build ----------------------
def compute_view(source, view: FeatureView, join_keys: list[str], source_ts: str, start, end,
                 num_buckets: int, shuffle: str):
    """Lazy Ray Dataset of ``view``'s rows (plus a ``date`` column) from the source Dataset."""
    from mlplatform.features.offline import DATE_COL

    lo = None if start is None else start - view.lookback
    ds = source.map_batches(_prepare_source, batch_format="pandas", fn_kwargs={
        "join_keys": join_keys, "source_ts": source_ts, "view_ts": view.timestamp_field,
        "lo": lo, "end": end, "num_buckets": num_buckets})
    return grouped(ds, shuffle, num_buckets).map_groups(_view_of_bucket, batch_format="pandas", fn_kwargs={
        "view": view, "join_keys": join_keys, "start": start, "end": end, "date_col": DATE_COL})


def _prepare_source(batch: pd.DataFrame, join_keys, source_ts, view_ts, lo, end, num_buckets):
    if source_ts != view_ts:
        batch = batch.rename(columns={source_ts: view_ts})
    t = pd.to_datetime(batch[view_ts], utc=True)
    keep = pd.Series(True, index=batch.index)
    if lo is not None:
        keep &= t >= lo
    if end is not None:
        keep &= t < end
    batch = batch[keep.to_numpy()].copy()
    batch[BUCKET] = bucket_of(batch[join_keys], num_buckets)
    return batch


def _view_of_bucket(batch: pd.DataFrame, view, join_keys, start, end, date_col):
    out = transformation(view)(batch.drop(columns=[BUCKET]), view, join_keys, start, end)
    out[date_col] = out[view.timestamp_field].dt.strftime("%Y-%m-%d")
    return out


# ------------------------------------------------------- point-in-time join ------------------
def point_in_time_join(entity_ds, features_ds, keys: list[str], features: list[str],
                       feature_ts: str, timestamp_column: str, ttl_us: int | None,
                       num_buckets: int, shuffle: str, entity_schema=None, feature_schema=None):
    """Attach ``features`` to every entity row, as of the row's ``timestamp_column``.

    For an entity row at time t the values come from the latest feature row of the same entity
    with feature time <= t and > t - ttl (a row exactly at t is visible, one exactly at t - ttl
    has expired); otherwise they are null. Entity rows are kept one for one (duplicates too).

    Returns:
        ``(dataset, schema)``: the joined rows and their Arrow schema (pass it on as
        ``entity_schema`` when chaining joins, so no step runs early just to learn it).
    """
    import pyarrow as pa

    e_schema = entity_schema or _arrow_schema(entity_ds)
    f_schema = feature_schema or _arrow_schema(features_ds)
    missing = [k for k in [*keys, timestamp_column] if k not in e_schema.names]
    if missing:
        raise ValueError(f"entity rows lack column(s) {missing} needed to join features "
                         f"{features[:3]}...; they have {e_schema.names}")
    clash = [f for f in features if f in e_schema.names]
    if clash:
        raise ValueError(f"entity rows already have column(s) {clash} named like requested "
                         "features; rename or drop them first")
    unified = join_schema(e_schema, f_schema, keys, features, timestamp_column)
    common = {"schema": unified, "join_keys": keys, "num_buckets": num_buckets}
    left = entity_ds.map_batches(_entity_side, batch_format="pyarrow",
                                 fn_kwargs={**common, "ts": timestamp_column})
    right = features_ds.map_batches(_feature_side, batch_format="pyarrow", fn_kwargs={
        **common, "ts": timestamp_column, "feature_ts": feature_ts})
    out_schema = pa.schema([unified.field(n) for n in [*e_schema.names, *features]])
    joined = grouped(left.union(right), shuffle, num_buckets).map_groups(
        _join_bucket, batch_format="pyarrow",
        fn_kwargs={"join_keys": keys, "features": features, "ts": timestamp_column,
                   "ttl_us": ttl_us, "out_schema": out_schema})
    return joined, out_schema


def join_schema(e_schema, f_schema, keys: list[str], features: list[str], ts: str):
    """The one schema both sides of a point-in-time join are conformed to before the union.

    Entity columns keep their types (join keys take the feature side's type, the time is
    ``timestamp[us, UTC]``), then the features, then the row kind and the hash bucket.
    """
    import pyarrow as pa

    fields = [pa.field(n, pa.timestamp("us", tz="UTC") if n == ts
                       else f_schema.field(n).type if n in keys else e_schema.field(n).type)
              for n in e_schema.names]
    fields += [f_schema.field(f) for f in features]
    return pa.schema([*fields, pa.field(_KIND, pa.int8()), pa.field(BUCKET, pa.int64())])


def join_local(entity, features_table, keys: list[str], features: list[str], feature_ts: str,
               ts: str, ttl_us: int | None):
    """The same point-in-time join on two in-memory Arrow tables (tests and small data)."""
    import pyarrow as pa

    schema = join_schema(entity.schema, features_table.schema, keys, features, ts)
    out_schema = pa.schema([schema.field(n) for n in [*entity.schema.names, *features]])
    both = pa.concat_tables([
        _entity_side(entity, schema, keys, 1, ts),
        _feature_side(features_table, schema, keys, 1, ts, feature_ts)])
    return _join_bucket(both, keys, features, ts, ttl_us, out_schema)


def _arrow_schema(ds):
    import pyarrow as pa

    s = ds.schema()
    base = getattr(s, "base_schema", s)
    if isinstance(base, pa.Schema):
        return base
    # pandas blocks: map their dtypes the way pyarrow converts the frames.
    return pa.schema([(name, _arrow_type(dtype)) for name, dtype in zip(s.names, base.types, strict=True)])


def _arrow_type(dtype):
    import pyarrow as pa

    if isinstance(dtype, pa.DataType):
        return dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return pa.timestamp(dtype.unit, tz=str(dtype.tz))
    if isinstance(dtype, pd.StringDtype) or dtype is object or str(dtype) == "object":
        return pa.string()
    return pa.from_numpy_dtype(dtype)


def _conform(table, schema, kind: int, join_keys: list[str], num_buckets: int):
    """Columns of ``schema`` in its order: cast where present, typed nulls where absent."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    cols = []
    for field in schema:
        if field.name == _KIND:
            cols.append(pa.array(np.full(n, kind, dtype=np.int8)))
        elif field.name == BUCKET:
            cols.append(pa.array(bucket_of(table.select(join_keys).to_pandas(), num_buckets)))
        elif field.name in table.column_names:
            cols.append(pc.cast(table[field.name], field.type, safe=False))
        else:
            cols.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _entity_side(table, schema, join_keys, num_buckets, ts):
    import pyarrow.compute as pc

    if pc.any(pc.is_null(table[ts])).as_py():
        raise ValueError(f"entity rows have null values in the timestamp column {ts!r}")
    return _conform(table, schema, 1, join_keys, num_buckets)


def _feature_side(table, schema, join_keys, num_buckets, ts, feature_ts):
    if feature_ts != ts:
        table = table.rename_columns([ts if c == feature_ts else c for c in table.column_names])
    return _conform(table, schema, 0, join_keys, num_buckets)


def _join_bucket(table, join_keys, features, ts, ttl_us, out_schema):
    keys = join_keys
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.sort_by([*[(k, "ascending") for k in keys], (ts, "ascending"),
                           (_KIND, "ascending")])
    n = table.num_rows
    kind = table[_KIND].to_numpy()
    new_group = np.zeros(n, dtype=bool)
    if n:
        new_group[0] = True
    for k in keys:
        col = table[k].combine_chunks()
        if n > 1:
            diff = pc.not_equal(col.slice(1), col.slice(0, n - 1)).fill_null(True)
            new_group[1:] |= diff.to_numpy(zero_copy_only=False)
    pos = np.arange(n)
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0)) if n else pos
    last_feature = np.maximum.accumulate(np.where(kind == 0, pos, -1)) if n else pos
    t = table[ts].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    ent = np.flatnonzero(kind == 1)
    src = last_feature[ent]
    valid = (src >= group_start[ent]) & (src >= 0)
    if ttl_us is not None:
        valid &= (t[ent] - t[np.maximum(src, 0)]) < ttl_us
    take = pa.array(np.where(valid, src, 0), mask=~valid, type=pa.int64())
    entity_rows = table.take(pa.array(ent, type=pa.int64()))
    looked_up = table.select(features).take(take)
    cols = {f: looked_up[f] for f in features}
    return pa.Table.from_arrays(
        [cols[f.name] if f.name in cols else entity_rows[f.name] for f in out_schema],
        schema=out_schema)


# ------------------------------------------------------------- latest per entity -------------
def latest_per_entity(ds, keys: list[str], ts: str, num_buckets: int, shuffle: str):
    """The newest row of every entity (ties: any one of the newest)."""
    ds = ds.map_batches(_add_bucket, batch_format="pandas",
                        fn_kwargs={"join_keys": keys, "num_buckets": num_buckets})
    return grouped(ds, shuffle, num_buckets).map_groups(_latest_of_bucket, batch_format="pandas",
                                         fn_kwargs={"join_keys": keys, "ts": ts})


def _add_bucket(batch: pd.DataFrame, join_keys, num_buckets):
    batch[BUCKET] = bucket_of(batch[join_keys], num_buckets)
    return batch


def _latest_of_bucket(batch: pd.DataFrame, join_keys, ts):
    batch = batch.drop(columns=[BUCKET]).sort_values([*join_keys, ts], kind="stable")
    return batch.drop_duplicates(join_keys, keep="last")


def grouped(ds, shuffle: str, num_buckets: int):
    """``ds.groupby(BUCKET)`` with the given Ray Data shuffle strategy, on ``num_buckets`` blocks.

    ``map_groups`` picks the shuffle from the dataset's own context when it is called, so it is
    set on the dataset, not globally. The sort-based pull shuffle measured 2x faster than the
    hash shuffle on a 2-core machine (benchmarks/feature_shuffle.py). The sort shuffle makes
    one piece per (input block, output block): blocks are first merged (no shuffle) to as many
    as there are buckets, so a join of 1M rows read as 348 blocks does not move 348^2 pieces.
    """
    from ray.data.context import ShuffleStrategy

    ds = ds.repartition(num_buckets)
    ds.context.shuffle_strategy = ShuffleStrategy(shuffle)
    return ds.groupby(BUCKET)
