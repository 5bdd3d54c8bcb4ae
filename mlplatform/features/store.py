"""``FeatureStore``: build views offline, join them point-in-time, serve them online.

Example:
    >>> from mlplatform.config import PlatformConfig
    >>> from mlplatform.features import FeatureStore
    >>> fs = FeatureStore(PlatformConfig.load(), "examples/my_project")   # doctest: +SKIP
    >>> fs.build()                                               # doctest: +SKIP
    >>> train = fs.get_historical_features(events, ["customer_stats"])    # doctest: +SKIP
    >>> fs.materialize_incremental(end="2026-03-01")             # doctest: +SKIP
    >>> fs.get_online_features([{"customer_id": "c01"}], ["orders_24h"])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform._ray import DEFAULT_SHUFFLE, data_remote_args, read_parquet
from mlplatform.config import PlatformConfig
from mlplatform.errors import DataValidationError
from mlplatform.features.offline import (
    DATE_COL,
    OFFLINE_DIR,
    FeatureStoreError,
    Manifest,
    OfflineStore,
    arrow_schema_dict,
    as_utc,
    list_files,
    partition_date,
    source_snapshot,
)
from mlplatform.features.pipeline import compute_view, latest_per_entity
from mlplatform.features.pit import FeatureSide, point_in_time_join
from mlplatform.project.definitions import FeatureRepo, FeatureView, load_repo

_ROWS_PER_BUCKET = 200_000
#: A build's hash groups by default (:meth:`FeatureStore.build_buckets`): one per this many
#: source rows, at least 8 and at most 64. Each bucket is a task per view (and a piece per block
#: in the shuffle), so a small source in many buckets pays task overhead, not work: measured on
#: 2 cores, building four views of 20,000 source rows took 11.3-16.7 s in 64 buckets and
#: 3.4-3.6 s in 8.
_BUILD_ROWS_PER_BUCKET = 20_000
_BUILD_BUCKETS = (8, 64)
_ROWS_PER_FILE = 500_000   # rows a write task gathers before writing (per date partition)


class FeatureStore:
    """The feature store of one platform config: definitions, offline and online stores.

    Args:
        config: Platform config (storage root, online store choice, the default project).
        repo: The feature definitions: a :class:`~mlplatform.project.Project` (its
            ``sources``, ``entities`` and ``feature_views``), a FeatureRepo, a mapping or a YAML
            path; default the project of ``config.project`` (else ``./mlplatform.yaml``).
        shuffle: Ray Data shuffle strategy for the group-bys (see ``pipeline.shuffle_strategy``).

    Raises:
        ConfigError: The project has no feature store (a tabular project), or is invalid.
    """

    def __init__(self, config: PlatformConfig, repo: Any = None,
                 shuffle: str = DEFAULT_SHUFFLE):
        from mlplatform.errors import ConfigError
        from mlplatform.project import Project, load_project

        self.config = config
        self.project: Project | None = None
        if repo is None:
            repo = load_project(config.project)
        if isinstance(repo, Project):
            self.project = repo
            if repo.feature_repo is None:
                raise ConfigError(f"project {repo.name} ({repo.file}) declares no feature store "
                                  "(sources, entities, feature_views): it is a tabular project")
            repo = repo.feature_repo
        self.repo: FeatureRepo = load_repo(repo)
        self.offline = OfflineStore(config.path(*OFFLINE_DIR))
        self._online = None
        self._shuffle = shuffle
        # Ray Data tasks of builds and materializations stay where the config wants them
        # (CPU workers on the clusters of cluster/; anywhere by default).
        self._placement = data_remote_args(config) or None
        #: get_online_features' resolved reads per distinct request (see _read_plan).
        self._plans: dict[tuple[str, ...] | None, list] = {}
        self._plans_repo: FeatureRepo | None = None

    # ------------------------------------------------------------------ offline build --------
    def build(self, view_names: Sequence[str] | None = None, start: Any = None, end: Any = None,
              validate: bool = True, num_buckets: int | None = None) -> dict[str, Manifest]:
        """Compute views with Ray Data and write one new immutable offline version of each.

        Args:
            view_names: Views to build (default: all).
            start, end: Only recompute rows with ``start <= time < end`` (dates at midnight UTC:
                the store is partitioned by date). Other dates are carried over unchanged from
                the current version; history before ``start`` still feeds the windows.
            validate: Gate the source with its data contract first (if it declares one).
            num_buckets: Hash groups of entities (the unit of parallel work); default
                :meth:`build_buckets` of each source (from its size).

        Returns:
            The new manifest of every built view.

        Raises:
            DataValidationError: The source is missing or fails its contract (nothing written).
            FeatureStoreError: ``start``/``end`` not at midnight, or ``start >= end``.
        """

        views = [self.repo.view(v) for v in (view_names or [v.name for v in self.repo.feature_views])]
        start, end = _day(start, "start"), _day(end, "end")
        if start is not None and end is not None and start >= end:
            raise FeatureStoreError(f"build range is empty: start {start} >= end {end}")
        out = {}
        for source_name in dict.fromkeys(v.source for v in views):
            src = self.repo.source(source_name)
            path = self.source_path(source_name)
            if validate:
                self.validate_source(source_name)
            buckets = num_buckets or self.build_buckets(source_name)
            for view in (v for v in views if v.source == source_name):
                t0 = time.perf_counter()
                ds = read_parquet(str(path), columns=self._source_columns(view, src),
                                  **(self._placement or {}))
                rows = compute_view(ds, view, self.repo.join_keys(view), src.timestamp_field,
                                    start, end, buckets, self._shuffle,
                                    ray_remote_args=self._placement)
                out[view.name] = self._write_version(view, rows, path, start, end,
                                                     time.perf_counter() - t0)
        return out

    @property
    def default_source(self) -> str:
        """The project's labelled-events source, else the first source."""
        if self.project is not None and self.project.data.events:
            return self.project.data.events
        return self.repo.sources[0].name

    def build_buckets(self, source_name: str | None = None) -> int:
        """The hash groups a build of ``source_name``'s views uses by default: one per
        20,000 source rows (from the Parquet footers), at least 8, at most 64."""
        import pyarrow.dataset as pads

        source_name = source_name or self.default_source
        rows = pads.dataset(str(self.source_path(source_name)), format="parquet").count_rows()
        low, high = _BUILD_BUCKETS
        return max(low, min(high, rows // _BUILD_ROWS_PER_BUCKET + 1))

    def source_path(self, source_name: str) -> Path:
        """Where a source's Parquet lives (relative paths are under ``storage_root``).

        Raises:
            DataValidationError: Nothing is there.
        """
        p = Path(self.repo.source(source_name).path)
        path = p if p.is_absolute() else self.config.path(*p.parts)
        if not path.exists():
            raise DataValidationError(
                f"source {source_name!r} has no data at {path}; write it there (a project's "
                "data.generate writes example data: `mlp generate`), or fix `sources[].path` in "
                "the project file")
        return path

    def _source_columns(self, view: FeatureView, src) -> list[str]:
        cols = [*self.repo.join_keys(view), src.timestamp_field]
        cols += [f.column for f in view.features if f.column and f.column not in cols]
        return list(dict.fromkeys(cols))

    def contract_path(self, source_name: str) -> Path | None:
        """The data contract of a source (relative paths: from the project folder)."""
        contract = self.repo.source(source_name).contract
        if contract is None:
            return None
        cpath = Path(contract)
        if not cpath.is_absolute() and self.repo.base_dir is not None:
            cpath = self.repo.base_dir / cpath
        return cpath

    def validate_source(self, source_name: str | None = None, raise_on_failure: bool = True):
        """Check a source against its data contract on Ray Data (every rule, every failure).

        Returns:
            The :class:`~mlplatform.features.validation.ValidationReport`, or None when the
            source declares no contract.

        Raises:
            DataValidationError: With ``raise_on_failure``, if any check fails; the message
                lists every failing check with counts and examples.
        """
        from mlplatform.features.validation import gate, validate

        source_name = source_name or self.default_source
        cpath = self.contract_path(source_name)
        if cpath is None:
            return None
        check = gate if raise_on_failure else validate
        return check(self.source_path(source_name), cpath, self._shuffle)

    def _write_version(self, view: FeatureView, rows, source: Path, start, end,
                       elapsed: float) -> Manifest:
        import pyarrow.parquet as pq

        version, tmp = self.offline.new_version_dir(view.name)
        try:
            # Bundle blocks per write task: one file per date per task instead of one per
            # bucket and date (64 buckets x 60 days = 3,840 small files per view otherwise).
            rows.write_parquet(str(tmp), partition_cols=[DATE_COL], min_rows_per_file=_ROWS_PER_FILE)
            carried = []
            parent_version = self.offline.current_version(view.name)
            if parent_version and (start is not None or end is not None):
                parent = self.offline.manifest(view.name, parent_version)
                carried = self.offline.carry_partitions(
                    parent, tmp, lambda d: (start is not None and d < start.date())
                    or (end is not None and d >= end.date()))
            files = list_files(tmp)
            num_rows = sum(pq.read_metadata(tmp / f).num_rows for f in files)
            manifest = {
                "view": view.name, "version": version, "num_rows": num_rows, "files": files,
                "schema": arrow_schema_dict(tmp, files),
                "join_keys": self.repo.join_keys(view), "timestamp_field": view.timestamp_field,
                "features": view.feature_names, "definition_hash": self.repo.definition_hash(view.name),
                "definition": view.model_dump(mode="json"),
                "source": source_snapshot(source),
                "range": {"start": start, "end": end}, "parent_version": parent_version,
                "carried_files": len(carried),
                "partitions": sorted({p.split("/")[0] for p in files}),
                "created_at": pd.Timestamp.now(tz="UTC").isoformat(), "build_seconds": elapsed,
            }
            return self.offline.commit(view.name, version, tmp, manifest)
        except BaseException:
            self.offline.abort(tmp)
            raise

    def read_view(self, view: str, version: str | None = None):
        """A view's offline rows (current or given version) as a Ray Dataset."""

        m = self.offline.manifest(view, version)
        if not m.files:
            raise FeatureStoreError(f"feature view {view!r} version {m.version} has no rows")
        return read_parquet(m.files, partitioning=None)

    # ------------------------------------------------------------ point-in-time join ---------
    def get_historical_features(self, entity_df, features: Sequence[str] | None = None,
                                timestamp_column: str = "event_timestamp",
                                versions: Mapping[str, str] | None = None,
                                num_buckets: int | None = None):
        """Point-in-time correct features for every entity row, as a Ray Dataset.

        For an entity row at time t, each feature comes from the latest row of its view for the
        same entity with time <= t and > t - ttl; otherwise it is null. Ray Data streams both
        sides into Ray tasks that hash-partition them by the entity key; one task per partition
        joins it (``features.pit``), so inputs larger than one worker's memory work. Views
        sharing join keys are joined in the same pass. The join has run when this returns.

        Args:
            entity_df: pandas DataFrame, Ray Dataset or Parquet path with the join keys of the
                requested views and ``timestamp_column``; every column is kept.
            features: ``"view:feature"``, view names or feature names (default: all).
            timestamp_column: The entity rows' "as of" time.
            versions: Pin offline versions per view (default: each view's current version).
            num_buckets: Hash groups per join (default: from the data size).

        Returns:
            A Ray Dataset: the entity rows plus one column per feature (``.to_pandas()`` for
            small data), held in the object store. Row order is not preserved.
        """
        import pyarrow as pa
        import ray.data

        if isinstance(entity_df, pd.DataFrame):
            step = 50_000  # blocks of this size: the join starts in parallel
            ds = ray.data.from_arrow([
                pa.Table.from_pandas(entity_df.iloc[i:i + step], preserve_index=False)
                for i in range(0, max(len(entity_df), 1), step)])
        elif isinstance(entity_df, (str, Path)):
            ds = read_parquet(str(entity_df))
        else:
            ds = entity_df
        versions = dict(versions or {})
        # Views with the same join keys are joined in one pass: one split of the entity rows.
        by_keys: dict[tuple[str, ...], list] = {}
        for view_name, names in self.repo.resolve(list(features) if features else None).items():
            by_keys.setdefault(tuple(self.repo.join_keys(view_name)), []).append((view_name, names))
        schema = None
        for keys, views in by_keys.items():
            sides, rows = [], 0
            for view_name, names in views:
                view = self.repo.view(view_name)
                m = self.offline.manifest(view_name, versions.get(view_name))
                if m.num_rows == 0:
                    raise FeatureStoreError(f"feature view {view_name!r} version {m.version} is "
                                            "empty; rebuild it over a range with data")
                fds = read_parquet(m.files, partitioning=None,
                                   columns=[*keys, view.timestamp_field, *names])
                ttl = None if view.ttl is None else int(view.ttl.total_seconds() * 1_000_000)
                sides.append(FeatureSide(fds, list(names), view.timestamp_field, ttl))
                rows = max(rows, m.num_rows)
            buckets = num_buckets or max(8, min(512, rows // _ROWS_PER_BUCKET + 1))
            ds, schema = point_in_time_join(ds, sides, list(keys), timestamp_column, buckets,
                                            entity_schema=schema)
        return ds

    def feature_versions(self, features: Sequence[str] | None = None) -> dict[str, str]:
        """Current offline version of every view the features come from (for lineage)."""
        return {v: self.offline.manifest(v).version
                for v in self.repo.resolve(list(features) if features else None)}

    # ------------------------------------------------------------------------ online ---------
    @property
    def online(self):
        """The online store of the config (SQLite under storage_root, or Redis)."""
        if self._online is None:
            from mlplatform.features.online import open_online_store

            self._online = open_online_store(self.config)
        return self._online

    def materialize(self, start: Any = None, end: Any = None,
                    view_names: Sequence[str] | None = None) -> dict[str, int]:
        """Write each view's latest row per entity with time in [start, end) to the online store.

        Newer values already online are never overwritten by older ones. Records ``end`` (or
        just past the latest row) as the view's watermark, the exclusive bound of what is
        online. Returns entities written per view.
        """
        start, end = as_utc(start), as_utc(end)
        written = {}
        for view in [self.repo.view(v) for v in (view_names or [v.name for v in self.repo.feature_views])]:
            written[view.name] = self._materialize_view(view, start, end)
        return written

    def materialize_incremental(self, end: Any = None,
                                view_names: Sequence[str] | None = None) -> dict[str, int]:
        """Materialize what is new since each view's watermark, up to ``end`` (default: all)."""
        end = as_utc(end)
        written = {}
        for view in [self.repo.view(v) for v in (view_names or [v.name for v in self.repo.feature_views])]:
            written[view.name] = self._materialize_view(view, self.online.get_watermark(view.name),
                                                        end)
        return written

    def _materialize_view(self, view: FeatureView, start, end) -> int:
        import pyarrow.dataset as pads

        m = self.offline.manifest(view.name)
        keys, ts = self.repo.join_keys(view), view.timestamp_field
        files = [f for f, rel in zip(m.files, m.data["files"], strict=True) if _date_in(rel, start, end)]
        if not files:
            return 0

        flt = None
        if start is not None:
            flt = pads.field(ts) >= start.to_pydatetime()
        if end is not None:
            e = pads.field(ts) < end.to_pydatetime()
            flt = e if flt is None else flt & e
        ds = read_parquet(files, partitioning=None, columns=[*keys, ts, *view.feature_names],
                          **(self._placement or {}), **({} if flt is None else {"filter": flt}))
        n, latest = 0, None
        latest_rows = latest_per_entity(ds, keys, ts, max(8, min(512, m.num_rows // _ROWS_PER_BUCKET
                                                                 + 1)), self._shuffle,
                                        ray_remote_args=self._placement)
        for batch in latest_rows.iter_batches(batch_size=10_000, batch_format="pandas"):
            n += self.online.write(view.name, batch, keys, timestamp_column=ts)
            bmax = pd.to_datetime(batch[ts], utc=True).max()
            latest = bmax if latest is None or bmax > latest else latest
        # The watermark is exclusive: everything before it is online. Without an end, that is
        # just past the newest row, so the next incremental run starts with new rows only.
        mark = end if end is not None else (
            None if latest is None else latest + pd.Timedelta(microseconds=1))
        if mark is not None:
            self.online.set_watermark(view.name, mark)
        return n

    def get_online_features(self, entity_rows: Sequence[Mapping[str, Any]],
                            features: Sequence[str] | None = None,
                            as_of: Any = None) -> dict[str, list[Any]]:
        """Latest feature values per entity row, from the online store (every view in one
        round trip: :meth:`OnlineStore.read_views`).

        Args:
            entity_rows: Dicts holding the join keys of the requested views.
            features: ``"view:feature"``, view names or feature names (default: all).
            as_of: Time the rows are looked up at (e.g. the transaction time), one for all rows
                or one per row: values older than the view's TTL relative to it come back as
                None. None: no TTL check.

        Returns:
            ``{column: [value per entity row]}``: the join keys, then every feature (None when
            the entity is unknown or its row expired).
        """
        return self.lookup_online(entity_rows, features, as_of)[0]

    def lookup_online(self, entity_rows: Sequence[Mapping[str, Any]],
                      features: Sequence[str] | None = None, as_of: Any = None
                      ) -> tuple[dict[str, list[Any]], dict[str, list[bool]]]:
        """:meth:`get_online_features`, and per view whether each row's entity was found
        (present online and not expired): ``(values, {view: [found per row]})``."""
        rows = list(entity_rows)
        if isinstance(as_of, (list, tuple, pd.Series)):
            if len(as_of) != len(rows):
                raise ValueError(f"as_of has {len(as_of)} times for {len(rows)} entity rows")
            times = [_ns(t) for t in as_of]
        else:
            times = [_ns(as_of)] * len(rows)
        out: dict[str, list[Any]] = {}
        found_by_view: dict[str, list[bool]] = {}
        plan = self._read_plan(features)
        for view_name, keys, _, _ in plan:
            for k in keys:
                if any(k not in r for r in rows):
                    raise KeyError(f"entity rows need join key {k!r} for feature view {view_name!r}")
                out.setdefault(k, [r[k] for r in rows])
        # Every view in one round trip to the online store.
        stored = self.online.read_views(rows, [(view, keys, names) for view, keys, names, _ in plan])
        for (view_name, _, names, ttl_ns), records in zip(plan, stored, strict=True):
            found = [None if rec is None or _expired(rec, ttl_ns, t) else rec
                     for rec, t in zip(records, times, strict=True)]
            found_by_view[view_name] = [rec is not None for rec in found]
            for name in names:
                out[name] = [None if rec is None else rec.get(name) for rec in found]
        return out, found_by_view

    def _read_plan(self, features: Sequence[str] | None) -> list[tuple[str, list[str], list[str],
                                                                        int | None]]:
        """(view, join keys, features, TTL in ns) per view that ``features`` reads, resolved once
        per distinct request (the serving path asks the same every time)."""
        if self._plans_repo is not self.repo:     # a new repo: resolve again
            self._plans, self._plans_repo = {}, self.repo
        key = None if features is None else tuple(features)
        plan = self._plans.get(key)
        if plan is None:
            plan = []
            for name, names in self.repo.resolve(list(features) if features else None).items():
                view = self.repo.view(name)
                ttl_ns = None if view.ttl is None else pd.Timedelta(view.ttl).value
                plan.append((name, self.repo.join_keys(view), names, ttl_ns))
            self._plans[key] = plan
        return plan

    def describe(self, view_name: str) -> dict[str, Any]:
        """A view's definition, current offline version and online state (``mlp features show``)."""
        view = self.repo.view(view_name)
        info: dict[str, Any] = {
            "name": view.name, "entities": view.entities, "join_keys": self.repo.join_keys(view),
            "source": view.source, "ttl": str(view.ttl), "transformation": view.transformation,
            "definition_hash": self.repo.definition_hash(view.name),
            "features": [{"name": f.name, "agg": f.agg, "column": f.column,
                          "window": None if f.window is None else str(f.window), "dtype": f.dtype}
                         for f in view.features],
            "offline_versions": self.offline.versions(view.name),
        }
        version = self.offline.current_version(view.name)
        if version:
            m = self.offline.manifest(view.name)
            info["current_version"] = {k: m.data[k] for k in (
                "version", "num_rows", "created_at", "range", "partitions", "definition_hash")}
            info["current_version"]["stale_definition"] = (
                m.definition_hash != info["definition_hash"])
        return info


def _ns(ts: Any) -> int | None:
    """A time as UTC epoch nanoseconds (None stays None), for the TTL check."""
    t = as_utc(ts)
    return None if t is None else t.value


def _expired(rec: Mapping[str, Any], ttl_ns: int | None, as_of_ns: int | None) -> bool:
    """Whether a stored row is older than the view's TTL at ``as_of`` (epoch ns; None: no check):
    its time is at or before ``as_of - ttl`` (the window is ``(as_of - ttl, as_of]``)."""
    if as_of_ns is None or ttl_ns is None:
        return False
    ts = rec.get("event_timestamp")
    if ts is None:
        return True
    return (ts if isinstance(ts, pd.Timestamp) else as_utc(ts)).value <= as_of_ns - ttl_ns


def _date_in(rel: str, start, end) -> bool:
    d = partition_date(rel)
    return d is None or ((start is None or d >= start.date()) and (end is None or d <= end.date()))


def _day(value: Any, what: str) -> pd.Timestamp | None:
    t = as_utc(value)
    if t is not None and t != t.normalize():
        raise FeatureStoreError(f"build {what} {value!r} must be a date (midnight UTC): the offline "
                                f"store is partitioned by date; e.g. {t.normalize().date()}")
    return t
