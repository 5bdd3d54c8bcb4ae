"""The point-in-time join on Ray: a hash-partitioned as-of merge join.

Both sides are split by a stable hash of the join keys into ``num_buckets`` partitions by map
tasks (one per ~``_MAP_ROWS`` input rows, fed as Ray Data streams the inputs); one reduce task
per partition then runs the as-of kernel on that partition only. Each side keeps its own
columns, so nothing is padded with nulls to a shared schema, and views with the same join keys
are joined in the same partitions (one split of the entity rows for all of them). Nothing is
collected in the driver and every task holds one slice of the data, so inputs larger than one
worker's memory work (the object store spills). The result is a Ray Dataset over the reduce
outputs.

The kernel (``asof_positions``) gives, per entity row, the position of the latest feature row
of the same entity with time <= t and > t - ttl, via one ``lexsort`` over (key code, time,
side) with keys dictionary-encoded to integers; ``join_local`` runs it on in-memory tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlplatform.features.pipeline import bucket_of

_MAP_ROWS = 250_000   # input rows a split task gathers (fewer, larger pieces for the reducers)


@dataclass
class FeatureSide:
    """One view's rows to join: a Dataset (or in-memory Arrow table) and what to take from it."""

    rows: object                  # ray.data.Dataset or pyarrow.Table
    features: list[str]
    timestamp_field: str
    ttl_us: int | None
    schema: object = None         # its Arrow schema, when known (saves a look at the data)


# --------------------------------------------------------------------------- schemas ---------
def entity_target(e_schema, key_types: dict, ts: str):
    """The entity side's schema in the join: keys typed like the views', time in us UTC."""
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.timestamp("us", tz="UTC") if f.name == ts
                               else key_types.get(f.name, f.type)) for f in e_schema])


def feature_target(f_schema, keys: list[str], side: FeatureSide, key_types: dict, ts: str):
    """A view side's schema in the join: its keys, the time (renamed to ``ts``), its features."""
    import pyarrow as pa

    return pa.schema([*(pa.field(k, key_types[k]) for k in keys),
                      pa.field(ts, pa.timestamp("us", tz="UTC")),
                      *(f_schema.field(f) for f in side.features)])


def output_schema(e_target, f_targets, sides):
    import pyarrow as pa

    fields = list(e_target)
    for target, side in zip(f_targets, sides, strict=True):
        fields += [target.field(f) for f in side.features]
    return pa.schema(fields)


def _check(e_schema, f_schemas, keys, ts, sides) -> dict:
    missing = [k for k in [*keys, ts] if k not in e_schema.names]
    if missing:
        raise ValueError(f"entity rows lack column(s) {missing} needed to join features "
                         f"{sides[0].features[:3]}...; they have {e_schema.names}")
    seen = set(e_schema.names)
    for side, fs in zip(sides, f_schemas, strict=True):
        absent = [c for c in [*keys, side.timestamp_field, *side.features] if c not in fs.names]
        if absent:
            raise ValueError(f"feature rows lack column(s) {absent}; they have {fs.names}")
        clash = [f for f in side.features if f in seen]
        if clash:
            raise ValueError(f"entity rows already have column(s) {clash} named like requested "
                             "features; rename or drop them first")
        seen.update(side.features)
    return {k: f_schemas[0].field(k).type for k in keys}


# -------------------------------------------------------------------------- kernel -----------
def _conform(table, target, rename: dict | None = None):
    """``table`` as ``target``: renamed, columns selected in order and cast."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if rename:
        table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    return pa.Table.from_arrays([pc.cast(table[f.name], f.type, safe=False) for f in target],
                                schema=target)


def _key_codes(e_cols, f_cols, n_e: int) -> np.ndarray:
    """One int64 per row of both sides, equal exactly when all key values are equal (and not
    null: a row with a null key gets a code of its own, so it matches nothing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = n_e + len(f_cols[0])
    code = np.zeros(n, dtype=np.int64)
    null = np.zeros(n, dtype=bool)
    for ec, fc in zip(e_cols, f_cols, strict=True):
        both = pa.chunked_array([*ec.chunks, *fc.chunks], type=fc.type).combine_chunks()
        enc = pc.dictionary_encode(both)
        idx = enc.indices
        null |= np.asarray(idx.is_null())
        card = len(enc.dictionary) + 1
        code = code * card + idx.fill_null(0).to_numpy().astype(np.int64)
        if len(e_cols) > 1:   # keep codes dense, so the next key's product cannot overflow
            code = np.unique(code, return_inverse=True)[1].astype(np.int64)
    if null.any():
        code[null] = -1 - np.arange(int(null.sum()))
    return code


def asof_positions(e_keys, e_t: np.ndarray, f_keys, f_t: np.ndarray,
                   ttl_us: int | None) -> np.ndarray:
    """Per entity row, the position of its as-of feature row, or -1 (none, or expired).

    The feature row is the latest one of the same entity with time <= t (equal times: the
    feature row is visible) and, with a TTL, time > t - ttl. Times are int64 microseconds.
    """
    n_e, n_f = len(e_t), len(f_t)
    out = np.full(n_e, -1, dtype=np.int64)
    if n_e == 0 or n_f == 0:
        return out
    code = _key_codes(e_keys, f_keys, n_e)
    t = np.concatenate([e_t, f_t])
    side = np.concatenate([np.ones(n_e, np.int8), np.zeros(n_f, np.int8)])
    order = np.lexsort((side, t, code))            # by key, time, features before entities
    s_code, s_t, s_side = code[order], t[order], side[order]
    pos = np.arange(n_e + n_f)
    starts = np.empty(n_e + n_f, dtype=bool)
    starts[0] = True
    starts[1:] = s_code[1:] != s_code[:-1]
    group_start = np.maximum.accumulate(np.where(starts, pos, 0))
    last_feature = np.maximum.accumulate(np.where(s_side == 0, pos, -1))
    ent = np.flatnonzero(s_side == 1)
    src = last_feature[ent]
    valid = src >= group_start[ent]
    if ttl_us is not None:
        valid &= (s_t[ent] - s_t[np.maximum(src, 0)]) < ttl_us
    out[order[ent[valid]]] = order[src[valid]] - n_e
    return out


def _micros(col) -> np.ndarray:
    import pyarrow as pa

    return col.combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)


def _join_partition(entity, views, keys, ts, sides, out_schema):
    """The entity rows of one partition with every side's features attached."""
    import pyarrow as pa

    cols = list(entity.columns)
    e_keys, e_t = [entity[k] for k in keys], _micros(entity[ts])
    for table, side in zip(views, sides, strict=True):
        table = table.filter(table[ts].is_valid())
        idx = asof_positions(e_keys, e_t, [table[k] for k in keys], _micros(table[ts]),
                             side.ttl_us)
        take = pa.array(idx, mask=idx < 0, type=pa.int64())
        cols += list(table.select(side.features).take(take).columns)
    return pa.Table.from_arrays(cols, schema=out_schema)


def join_local(entity, features_table, keys: list[str], features: list[str], feature_ts: str,
               ts: str, ttl_us: int | None):
    """The point-in-time join of two in-memory Arrow tables (tests and small data)."""
    side = FeatureSide(features_table, list(features), feature_ts, ttl_us)
    key_types = _check(entity.schema, [features_table.schema], keys, ts, [side])
    e_target = entity_target(entity.schema, key_types, ts)
    f_target = feature_target(features_table.schema, keys, side, key_types, ts)
    entity = _conform(entity, e_target)
    _no_null_times(entity, ts)
    views = [_conform(features_table, f_target, {feature_ts: ts})]
    return _join_partition(entity, views, keys, ts, [side],
                           output_schema(e_target, [f_target], [side]))


def _no_null_times(table, ts):
    if table[ts].null_count:
        raise ValueError(f"entity rows have null values in the timestamp column {ts!r} "
                         f"({table[ts].null_count} of {table.num_rows}); give every row a time")


# ------------------------------------------------------------------------- on Ray ------------
def _split(num_buckets, keys, target, rename, check_ts, *blocks_and_slices):
    """Map task: conform blocks to ``target`` and cut them into one piece per bucket."""
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    parts = []
    for block, lo, hi in zip(*[iter(blocks_and_slices)] * 3, strict=True):
        t = BlockAccessor.for_block(block).to_arrow()
        parts.append(_conform(t if lo is None else t.slice(lo, hi - lo), target, rename))
    table = pa.concat_tables(parts) if parts else target.empty_table()
    if check_ts:
        _no_null_times(table, check_ts)
    bucket = bucket_of(table.select(keys).to_pandas(), num_buckets)
    order = np.argsort(bucket, kind="stable")
    table = table.take(pa.array(order))
    bounds = np.searchsorted(bucket[order], np.arange(num_buckets + 1))
    pieces = [table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(num_buckets)]
    return pieces[0] if num_buckets == 1 else tuple(pieces)


def _reduce(counts, keys, ts, sides, out_schema, *pieces):
    """Reduce task: one partition's pieces of every side, joined."""
    import pyarrow as pa

    tables, i = [], 0
    for n in counts:
        tables.append(pa.concat_tables(pieces[i:i + n]))
        i += n
    return _join_partition(tables[0], tables[1:], keys, ts, sides, out_schema)


def _split_dataset(ds, num_buckets, keys, target, rename=None, check_ts=None) -> list[list]:
    """Submit split tasks as ``ds`` streams; per task, its ``num_buckets`` piece refs."""
    import ray

    split = ray.remote(_split).options(num_returns=num_buckets)
    tasks, batch, rows = [], [], 0

    def submit():
        refs = split.remote(num_buckets, keys, target, rename, check_ts, *batch)
        tasks.append([refs] if num_buckets == 1 else list(refs))

    for bundle in ds.iter_internal_ref_bundles():
        for entry, sl in zip(bundle.blocks, bundle.slices, strict=True):
            batch += [entry.ref, None if sl is None else sl.start_offset,
                      None if sl is None else sl.end_offset]
            rows += entry.metadata.num_rows if sl is None else sl.num_rows
            if rows >= _MAP_ROWS:
                submit()
                batch, rows = [], 0
    if batch or not tasks:
        submit()
    return tasks


def point_in_time_join(entity_ds, sides: list[FeatureSide], keys: list[str],
                       timestamp_column: str, num_buckets: int, entity_schema=None,
                       progress: bool = True):
    """Attach every side's features to every entity row, as of the row's ``timestamp_column``.

    For an entity row at time t a side's values come from its latest row of the same entity
    with time <= t and > t - ttl (a row exactly at t is visible, one exactly at t - ttl has
    expired); otherwise they are null. Entity rows are kept one for one (duplicates too); all
    sides must share the join keys ``keys``.

    Returns:
        ``(dataset, schema)``: the joined rows (a Ray Dataset over the reduce outputs, already
        computed) and their Arrow schema (pass it on as ``entity_schema`` when chaining).
    """
    import ray
    import ray.data

    e_schema = entity_schema or arrow_schema(entity_ds)
    f_schemas = [s.schema or arrow_schema(s.rows) for s in sides]
    key_types = _check(e_schema, f_schemas, keys, timestamp_column, sides)
    e_target = entity_target(e_schema, key_types, timestamp_column)
    f_targets = [feature_target(fs, keys, s, key_types, timestamp_column)
                 for fs, s in zip(f_schemas, sides, strict=True)]
    out_schema = output_schema(e_target, f_targets, sides)

    maps = [_split_dataset(entity_ds, num_buckets, keys, e_target, check_ts=timestamp_column)]
    maps += [_split_dataset(s.rows, num_buckets, keys, t, {s.timestamp_field: timestamp_column})
             for s, t in zip(sides, f_targets, strict=True)]
    counts = [len(m) for m in maps]
    reduce = ray.remote(_reduce)
    outs = [reduce.remote(counts, keys, timestamp_column, sides_meta(sides), out_schema,
                          *[task[b] for m in maps for task in m])
            for b in range(num_buckets)]
    del maps
    _wait(outs, f"point-in-time join, {num_buckets} partitions", progress)
    return ray.data.from_arrow_refs(outs), out_schema


def sides_meta(sides: list[FeatureSide]) -> list[FeatureSide]:
    """The sides without their rows (what reduce tasks need)."""
    return [FeatureSide(None, s.features, s.timestamp_field, s.ttl_us) for s in sides]


def _wait(refs, label: str, progress: bool) -> None:
    """Wait for ``refs`` with a progress bar, leaving the results where they are (a failed task
    raises when the Dataset is made from them)."""
    import ray
    from tqdm.auto import tqdm

    pending = list(refs)
    with tqdm(total=len(pending), desc=label, unit="part", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, fetch_local=False)
            bar.update(len(done))


def arrow_schema(ds):
    """A Dataset's (or Arrow table's) Arrow schema, pandas block schemas mapped to Arrow."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(ds, pa.Table):
        return ds.schema
    s = ds.schema()
    base = getattr(s, "base_schema", s)
    if isinstance(base, pa.Schema):
        return base

    def arrow_type(dtype):
        if isinstance(dtype, pa.DataType):
            return dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            return pa.timestamp(dtype.unit, tz=str(dtype.tz))
        if isinstance(dtype, pd.StringDtype) or dtype is object or str(dtype) == "object":
            return pa.string()
        return pa.from_numpy_dtype(dtype)

    return pa.schema([(n, arrow_type(t)) for n, t in zip(s.names, base.types, strict=True)])
