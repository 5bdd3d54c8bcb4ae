"""Benchmark: the feature store on Ray Data vs single-process pandas, side by side.

    nice -n 10 .venv/bin/python benchmarks/feature_store.py build --rows 1000000 5000000
    nice -n 10 .venv/bin/python benchmarks/feature_store.py join --rows 1000000
    nice -n 10 .venv/bin/python benchmarks/feature_store.py out-of-core --object-store-mb 150

``build``: ``FeatureStore.build`` (the 4 views of examples/fraud/mlplatform.yaml) against two
single-process baselines that read the same Parquet and write the same date-partitioned Parquet:
``pandas`` (what a user would write: per view ``sort_values`` + ``groupby(keys).rolling(window,
on=ts)``; ``nunique`` as one rolling sum per distinct value; ``label_rate`` as the 30d rolling
sum/count minus the closed 1d one) and ``kernel`` (our vectorised ``window_aggregates`` over the
whole frame). All three outputs are checked equal. Baselines run in a child process each, so
their peak RSS is measured too.

``join``: ``get_historical_features`` of N labelled events (as of 1 us before each event, as
training sets do) against the built view(s), vs ``pandas.merge_asof`` (``by`` the keys,
backward, exact matches allowed, ``tolerance`` = ttl - 1 us for the strict TTL check), both from
Parquet to Parquet; 1000 sampled rows are checked equal.

``out-of-core``: a build on raw data ~3x the Ray object store, with spilling and memory
measured; the pandas kernel's peak RSS on the same data says whether pandas fits that budget.

Ray is warmed up with a tiny build first (reported separately). One JSON line per run is
appended to benchmarks/results/feature_store.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from _common import FRAUD_FILE, code_version, fraud_project, machine
from rich.console import Console
from rich.table import Table

from mlplatform.config import PlatformConfig
from mlplatform.datasets import RAW_DIR, make_transactions, save_transactions
from mlplatform.features import FeatureStore, load_repo
from mlplatform.features.aggregates import window_aggregates

RESULTS = Path(__file__).parent / "results" / "feature_store.jsonl"
AS_OF = "feature_as_of"
CODE: dict = {}
console = Console()


# ------------------------------------------------------------------ pandas baselines ----------
def pandas_view(df: pd.DataFrame, view, keys: list[str]) -> pd.DataFrame:
    """One view the way a pandas user would compute it: ``groupby(keys).rolling(window, on=ts)``.

    Same output as ``window_aggregates``: one row per (entity, time), windows (t - w, t].
    """
    ts = view.timestamp_field
    d = df.sort_values([*keys, ts], kind="stable").reset_index(drop=True)
    d["_one"] = 1.0
    dummies = {}
    for f in view.features:
        if f.agg == "nunique" and f.column not in dummies:   # no rolling nunique in pandas
            ind = pd.get_dummies(d[f.column], prefix=f"_{f.column}", dtype=float)
            d[ind.columns] = ind
            dummies[f.column] = list(ind.columns)
    g = d.groupby(keys, sort=False)
    rolls: dict = {}

    def roll(window, closed="right"):
        if (window, closed) not in rolls:
            rolls[window, closed] = g.rolling(window, on=ts, closed=closed)
        return rolls[window, closed]

    out = d[[*keys, ts]].copy()
    for f in view.features:
        if f.agg == "count":
            out[f.name] = roll(f.window)["_one"].sum().to_numpy().astype(np.int64)
        elif f.agg in ("sum", "mean", "std"):
            out[f.name] = getattr(roll(f.window)[f.column], f.agg)().to_numpy()
        elif f.agg == "nunique":
            present = roll(f.window)[dummies[f.column]].sum().to_numpy() > 0
            out[f.name] = present.sum(axis=1).astype(np.int64)
        elif f.agg == "label_rate":   # labels in (t - w, t - delay) = (t - w, t] minus [t - delay, t]
            r, r_d = roll(f.window)[f.column], roll(f.label_delay, "both")[f.column]
            n = r.count().to_numpy() - r_d.count().to_numpy()
            s = r.sum().to_numpy() - r_d.sum().to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f.name] = np.where(n > 0, s / n, np.nan)
    out = out[~d.duplicated([*keys, ts], keep="last").to_numpy()].reset_index(drop=True)
    for f in view.features:
        if f.agg == "event_time":
            out[f.name] = out[ts].dt.as_unit("us").astype("int64") / 1e6
        elif f.agg == "time_since_prev":
            out[f.name] = out.groupby(keys, sort=False)[ts].diff().dt.total_seconds()
    return out[[*keys, ts, *view.feature_names]]


def pandas_build(raw: Path, out: Path, impl: str) -> float:
    """Read the source Parquet, compute every view with ``impl``, write date-partitioned Parquet."""
    fn = window_aggregates if impl == "kernel" else pandas_view
    repo = load_repo(FRAUD_FILE)   # the definitions only: no project code in the baseline process
    t0 = time.perf_counter()
    df = pd.read_parquet(raw, columns=_source_columns(repo))
    for view in repo.feature_views:
        keys = repo.join_keys(view)
        res = fn(df[_view_columns(repo, view)], view, keys)
        res["date"] = res[view.timestamp_field].dt.strftime("%Y-%m-%d")
        res.to_parquet(out / view.name, partition_cols=["date"], index=False)
    return time.perf_counter() - t0


def _view_columns(repo, view) -> list[str]:
    cols = [*repo.join_keys(view), view.timestamp_field, *(f.column for f in view.features if f.column)]
    return list(dict.fromkeys(cols))


def _source_columns(repo) -> list[str]:
    return list(dict.fromkeys(c for v in repo.feature_views for c in _view_columns(repo, v)))


def run_pandas(raw: Path, out: Path, impl: str, timeout_min: float) -> dict:
    """``pandas_build`` in a child process: its seconds (imports excluded) and peak RSS."""
    return _child(["pandas-child", str(raw), str(out), impl], timeout_min)


# ----------------------------------------------------------------------------- Ray ------------
def start_ray(work: Path, num_cpus: int | None, object_store_mb: int | None,
              spill_dir: Path | None = None) -> float:
    """Local Ray as the platform starts it (``init_ray``); returns the seconds it took."""
    import ray

    from mlplatform._ray import init_ray

    kwargs: dict = {"log_to_driver": False, "include_dashboard": False}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 2**20
    if spill_dir:
        kwargs["object_spilling_directory"] = str(spill_dir)
    t0 = time.perf_counter()
    init_ray(PlatformConfig(storage_root=work), **kwargs)
    ctx = ray.data.DataContext.get_current()
    for name in ("ray", "ray.data"):   # per-dataset INFO lines, not results
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return time.perf_counter() - t0


class StatsStore(FeatureStore):
    """A FeatureStore that records, per view it builds, ``ds.stats()`` and where the time went:
    the Ray Data execution (``write_parquet``) vs the driver's bookkeeping around it."""

    def __init__(self, config):
        super().__init__(config, fraud_project())
        self.stats: dict[str, str] = {}
        self.timing: dict[str, dict] = {}

    def _write_version(self, view, rows, *args, **kwargs):
        t: dict = {}
        write = rows.write_parquet

        def timed_write(*a, **kw):
            t0 = time.perf_counter()
            write(*a, **kw)
            t["execute_s"] = time.perf_counter() - t0

        rows.write_parquet = timed_write
        t0 = time.perf_counter()
        manifest = super()._write_version(view, rows, *args, **kwargs)
        t["bookkeeping_s"] = time.perf_counter() - t0 - t["execute_s"]
        t["files"] = len(manifest.data["files"])
        self.stats[view.name], self.timing[view.name] = rows.stats(), t
        return manifest


def breakdown_table(fs, total_s: float) -> Table:
    """Per view: Ray Data execution, driver bookkeeping (file listing, per-file metadata), files."""
    table = Table(title="Where the Ray build's time goes")
    for col in ("view", "Ray Data execution s", "manifest bookkeeping s", "files written"):
        table.add_column(col, justify="right")
    for name, t in fs.timing.items():
        table.add_row(name, f"{t['execute_s']:.1f}", f"{t['bookkeeping_s']:.1f}", f"{t['files']:,}")
    rest = total_s - sum(t["execute_s"] + t["bookkeeping_s"] for t in fs.timing.values())
    table.add_row("read set-up, planning", f"{rest:.1f}", "", "")
    return table


def prepare(root: Path, rows: int, seed: int = 0) -> tuple[object, Path, int]:
    """Transactions under ``root``'s RAW_DIR; returns the store, the folder and in-memory bytes."""
    import pyarrow as pa

    config = PlatformConfig(storage_root=root)
    df = make_transactions(rows, seed=seed)
    nbytes = pa.Table.from_pandas(df, preserve_index=False).nbytes
    raw = save_transactions(df, config.path(*RAW_DIR))
    return StatsStore(config), raw, nbytes


def warm_up(work: Path, buckets: int) -> None:
    """A tiny build, so Ray worker start-up is not counted in the measured runs."""
    prepare(work / "warmup", 5_000)[0].build(validate=False, num_buckets=buckets)


# -------------------------------------------------------------------------- checks ------------
def check_build(fs, outs: dict[str, Path]) -> None:
    """Every view equal across Ray and the pandas outputs (keys, times, every feature)."""
    import pyarrow.parquet as pq

    for view in fs.repo.feature_views:
        keys, ts = fs.repo.join_keys(view), view.timestamp_field
        frames = {"ray": pq.read_table(fs.offline.manifest(view.name).files).to_pandas()}
        frames |= {name: pd.read_parquet(out / view.name) for name, out in outs.items()}
        frames = {k: f.sort_values([*keys, ts]).reset_index(drop=True) for k, f in frames.items()}
        ref = frames["ray"]
        for name, other in frames.items():
            assert len(other) == len(ref), f"{view.name}: {name} has {len(other)} rows, ray {len(ref)}"
            for c in [*keys, ts]:
                assert (other[c].to_numpy() == ref[c].to_numpy()).all(), f"{view.name}.{c}: {name}"
            for c in view.feature_names:   # atol: a std over equal amounts is 0, or ~1e-5 of
                # rounding residue (pandas' rolling std and the kernel's running sums both leave it)
                np.testing.assert_allclose(other[c].to_numpy(float), ref[c].to_numpy(float),
                                           rtol=1e-6, atol=1e-4, equal_nan=True,
                                           err_msg=f"{view.name}.{c}: {name} vs ray")


# ----------------------------------------------------------------------- reporting ------------
@contextmanager
def step(label: str, timings: dict | None = None, key: str | None = None):
    """Spinner while a step runs, its time after (and in ``timings[key]``)."""
    t0 = time.perf_counter()
    with console.status(f"{label} ..."):
        yield
    dt = time.perf_counter() - t0
    if timings is not None:
        timings[key or label] = dt
    console.log(f"{label}: {dt:.1f} s  (load avg {os.getloadavg()[0]:.1f})")


def append(record: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    record |= {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), "code": CODE}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def ratio_table(title: str, rows: int, results: dict[str, dict], ref: str) -> Table:
    """One row per contender: seconds, rows/s, peak RSS, and ratio ``ref`` rows/s / theirs."""
    table = Table(title=title)
    for col in ("contender", "seconds", "rows/s", "peak RSS GiB", f"{ref} ÷ it (rows/s)"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        if "seconds" not in r:
            table.add_row(name, "failed", "", "", r.get("error", "")[:60])
            continue
        rss = f"{r['peak_rss_bytes'] / 2**30:.2f}" if "peak_rss_bytes" in r else "-"
        table.add_row(name, f"{r['seconds']:.1f}", f"{rows / r['seconds']:,.0f}", rss,
                      f"{r['seconds'] / results[ref]['seconds']:.2f}x")
    return table


def dump_stats(name: str, stats: dict[str, str], show: bool) -> Path:
    """Ray Data ``ds.stats()`` of a run, kept in the temp folder (the work folder is removed)."""
    path = Path(tempfile.gettempdir()) / f"bench-fs-{name}-{time.strftime('%H%M%S')}-ds-stats.txt"
    path.write_text("\n\n".join(f"===== {v} =====\n{s}" for v, s in stats.items()))
    if show:
        console.print(path.read_text())
    return path


# ------------------------------------------------------------------------- commands -----------
def cmd_build(args, work: Path) -> None:
    setup = {"ray_init_s": start_ray(work, args.num_cpus, args.object_store_mb)}
    with step("Ray warm-up build (5,000 rows)", setup, "ray_warmup_s"):
        warm_up(work, args.buckets)
    for rows in args.rows:
        root = work / f"rows-{rows}"
        with step(f"generate + save {rows:,} transactions", setup, "generate_s"):
            fs, raw, nbytes = prepare(root, rows)
        load = [os.getloadavg()[0]]
        results: dict[str, dict] = {}
        with step(f"Ray: FeatureStore.build, 4 views, {rows:,} rows"):
            t0 = time.perf_counter()
            fs.build(validate=False, num_buckets=args.buckets)
            results["ray"] = {"seconds": time.perf_counter() - t0}
        outs = {}
        for impl in ("kernel", "pandas"):
            with step(f"{impl}: single process, 4 views, {rows:,} rows"):
                results[impl] = run_pandas(raw, root / f"out-{impl}", impl, args.timeout_min)
            if "seconds" in results[impl]:
                outs[impl] = root / f"out-{impl}"
        load.append(os.getloadavg()[0])
        with step("check: Ray, kernel and pandas outputs equal"):
            check_build(fs, outs)
        stats = dump_stats(f"build-{rows}", fs.stats, args.stats)
        console.print(ratio_table(f"Feature build, 4 views, {rows:,} transactions, {args.buckets} "
                                  "buckets (outputs checked equal)", rows, results, "ray"))
        console.print(breakdown_table(fs, results["ray"]["seconds"]))
        ratio = results["pandas"]["seconds"] / results["ray"]["seconds"] if "pandas" in outs else None
        met = ratio is not None and ratio >= 0.8
        console.print(f"goal Ray >= 0.8x pandas rows/s: {'MET' if met else 'NOT met'} "
                      f"({ratio if ratio is None else f'{ratio:.2f}x'}); ds.stats(): {stats}")
        append({"mode": "build", "rows": rows, "raw_bytes": nbytes, "buckets": args.buckets,
                "ray_cpus": _ray_cpus(), "results": results, "ray_breakdown": fs.timing,
                "ray_over": {k: r["seconds"] / results["ray"]["seconds"]
                             for k, r in results.items() if "seconds" in r},
                "goal_ray_vs_pandas": {"min": 0.8, "ratio": ratio, "met": met},
                "setup_s": setup, "loadavg_1m": load})


def cmd_join(args, work: Path) -> None:
    setup = {"ray_init_s": start_ray(work, args.num_cpus, args.object_store_mb)}
    with step("Ray warm-up build (5,000 rows)", setup, "ray_warmup_s"):
        warm_up(work, args.buckets)
    views = ([v.name for v in fraud_project().feature_views] if args.views == ["all"]
             else args.views)
    for rows in args.rows:
        root = work / f"rows-{rows}"
        with step(f"generate + save {rows:,} transactions", setup, "generate_s"):
            fs, raw, _ = prepare(root, rows)
        with step(f"build views {views} (setup)", setup, "build_s"):
            fs.build(views, validate=False, num_buckets=args.buckets)
        events = save_events(raw, root / "events")
        load = [os.getloadavg()[0]]
        results: dict[str, dict] = {}
        with step(f"Ray: get_historical_features, {rows:,} events x {views}"):
            t0 = time.perf_counter()
            ds = fs.get_historical_features(str(events), views, timestamp_column=AS_OF)
            ds.write_parquet(str(root / "join-ray"))
            results["ray"] = {"seconds": time.perf_counter() - t0}
        with step(f"pandas: merge_asof, {rows:,} events x {views}"):
            results["pandas"] = _child(["pandas-join-child", str(root), str(events),
                                        str(root / "join-pandas"), *views], args.timeout_min)
        load.append(os.getloadavg()[0])
        with step("check: 1000 sampled rows equal"):
            matched = check_join(fs, views, root / "join-ray", root / "join-pandas", rows)
        stats = dump_stats(f"join-{rows}", {"join": ds.stats()}, args.stats)
        console.print(ratio_table(f"Point-in-time join, {rows:,} events x {', '.join(views)} "
                                  f"(sample checked equal; {matched:.0%} rows found features)",
                                  rows, results, "ray"))
        ratio = results["pandas"]["seconds"] / results["ray"]["seconds"] \
            if "seconds" in results["pandas"] else None
        met = ratio is not None and ratio >= 0.5
        console.print(f"goal Ray >= 0.5x pandas rows/s: {'MET' if met else 'NOT met'} "
                      f"({ratio if ratio is None else f'{ratio:.2f}x'}); ds.stats(): {stats}")
        append({"mode": "join", "rows": rows, "views": views, "buckets_build": args.buckets,
                "ray_cpus": _ray_cpus(), "results": results, "matched_share": matched,
                "goal_ray_vs_pandas": {"min": 0.5, "ratio": ratio, "met": met},
                "setup_s": setup, "loadavg_1m": load})


def cmd_out_of_core(args, work: Path) -> None:
    import ray

    spill = work / "spill"
    setup = {"ray_init_s": start_ray(work, args.num_cpus, args.object_store_mb, spill)}
    store = int(ray.cluster_resources()["object_store_memory"])
    per_row = prepare(work / "probe", 20_000)[2] / 20_000
    rows = args.rows[0] if args.rows else int(args.factor * store / per_row)
    with step("Ray warm-up build (5,000 rows)", setup, "ray_warmup_s"):
        warm_up(work, args.buckets)
    with step(f"generate + save {rows:,} transactions", setup, "generate_s"):
        fs, raw, nbytes = prepare(work / "data", rows)
    view_bytes = _view_input_bytes(raw, fs.repo)
    idle = sum(_rss_anon(p) for p in _descendants())   # Ray's floor: idle workers, actors, raylet
    results: dict[str, dict] = {}
    with _Sampler(spill) as mem, step(f"Ray: FeatureStore.build, {rows:,} rows, object store "
                                      f"{store / 2**20:.0f} MiB"):
        t0 = time.perf_counter()
        try:
            fs.build(validate=False, num_buckets=args.buckets)
            results["ray"] = {"seconds": time.perf_counter() - t0}
        except Exception as exc:   # an OOM is a result here, not a crash of the benchmark
            results["ray"] = {"error": repr(exc)[:2000]}
    summary = _store_stats()
    results["ray"] |= {"peak_rss_bytes": mem.peak_private, "idle_rss_bytes": idle,
                       "peak_spill_dir_bytes": mem.peak_spill,
                       "spilled_mib": summary.get("spilled_mib"), "store_stats": summary}
    stats = dump_stats("out-of-core", fs.stats, args.stats)
    ray.shutdown()
    with step(f"kernel: single process, {rows:,} rows (peak RSS)"):
        results["kernel"] = run_pandas(raw, work / "out-kernel", "kernel", args.timeout_min)
    ray_r, k = results["ray"], results["kernel"]
    gib = lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    table = Table(title=f"Out-of-core build, {rows:,} transactions: raw data "
                        f"{nbytes / store:.1f}x the Ray object store")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in [
        ("raw data in memory (Arrow)", gib(nbytes)),
        ("largest view's input columns", gib(max(view_bytes.values()))),
        ("Ray object store", gib(store)),
        ("Ray build", f"{ray_r['seconds']:.1f} s" if "seconds" in ray_r else "FAILED"),
        ("spilled to disk (Ray store stats)", f"{ray_r['spilled_mib']} MiB"),
        ("peak size of the spill folder", gib(ray_r["peak_spill_dir_bytes"])),
        ("Ray processes' private RSS before the build (idle)", gib(idle)),
        ("Ray processes' peak private RSS during it (sum)", gib(ray_r["peak_rss_bytes"])),
        ("pandas kernel peak RSS", gib(k.get("peak_rss_bytes"))),
        ("pandas kernel build", f"{k['seconds']:.1f} s" if "seconds" in k else "failed"),
    ]:
        table.add_row(name, value)
    console.print(table)
    fits = k.get("peak_rss_bytes", 0) <= store
    console.print(f"Ray build {'completed' if 'seconds' in ray_r else 'FAILED'}; pandas kernel "
                  f"peak RSS is {k.get('peak_rss_bytes', 0) / store:.1f}x the object store budget "
                  f"({'fits' if fits else 'does not fit'}), but Ray's own processes peaked at "
                  f"{gib(ray_r['peak_rss_bytes'])} private memory besides the store; "
                  f"ds.stats(): {stats}")
    append({"mode": "out-of-core", "rows": rows, "raw_bytes": nbytes, "view_input_bytes": view_bytes,
            "object_store_bytes": store, "buckets": args.buckets, "results": results,
            "ray_breakdown": fs.timing,
            "pandas_fits_store_budget": fits, "setup_s": setup})


# -------------------------------------------------------------------- join helpers ------------
def save_events(raw: Path, folder: Path) -> Path:
    """Labelled events with the "as of" column training sets use (event time - 1 us)."""
    df = pd.read_parquet(raw, columns=["transaction_id", "user_id", "merchant_id", "country",
                                       "device_type", "event_timestamp", "amount", "is_fraud"])
    df[AS_OF] = df["event_timestamp"].dt.as_unit("us") - pd.Timedelta(1, "us")
    return save_transactions(df, folder)


def pandas_join(root: Path, events: Path, out: Path, views: list[str]) -> float:
    """``merge_asof`` per view: latest row with time <= as-of and > as-of - ttl, by the keys."""
    import pyarrow.parquet as pq

    fs = FeatureStore(PlatformConfig(storage_root=root), load_repo(FRAUD_FILE))
    t0 = time.perf_counter()
    ev = pd.read_parquet(events).sort_values(AS_OF, kind="stable")
    for name in views:
        view, keys = fs.repo.view(name), fs.repo.join_keys(name)
        fv = pq.read_table(fs.offline.manifest(name).files,
                           columns=[*keys, view.timestamp_field, *view.feature_names]).to_pandas()
        fv = fv.rename(columns={view.timestamp_field: "_ts"}).sort_values("_ts", kind="stable")
        fv = fv.astype({k: ev[k].dtype for k in keys})   # the view stores large_string[pyarrow]
        # merge_asof's tolerance is inclusive, the TTL is not: a row exactly ttl old has expired.
        ttl = None if view.ttl is None else pd.Timedelta(view.ttl) - pd.Timedelta(1, "us")
        ev = pd.merge_asof(ev, fv, left_on=AS_OF, right_on="_ts", by=keys, direction="backward",
                           allow_exact_matches=True, tolerance=ttl).drop(columns="_ts")
    out.mkdir(parents=True, exist_ok=True)
    ev.to_parquet(out / "part-0.parquet", index=False)
    return time.perf_counter() - t0


def check_join(fs, views: list[str], ray_out: Path, pandas_out: Path, rows: int) -> float:
    """1000 sampled events equal in every feature, row counts and null counts equal.

    Returns the share of events that found a row of the first view.
    """
    features = [f for v in views for f in fs.repo.view(v).feature_names]
    cols = ["transaction_id", *features]
    a = pd.read_parquet(ray_out, columns=cols).set_index("transaction_id")
    b = pd.read_parquet(pandas_out, columns=cols).set_index("transaction_id")
    assert len(a) == len(b) == rows, f"rows: ray {len(a)}, pandas {len(b)}, events {rows}"
    assert a[features].isna().sum().equals(b[features].isna().sum()), "null counts differ"
    sample = np.random.default_rng(0).choice(b.index.to_numpy(), min(1000, rows), replace=False)
    for f in features:
        np.testing.assert_array_equal(a.loc[sample, f].to_numpy(float), b.loc[sample, f].to_numpy(float),
                                      err_msg=f"feature {f}: Ray and merge_asof disagree")
    return float(b[fs.repo.view(views[0]).feature_names[0]].notna().mean())


# ---------------------------------------------------------------- memory helpers --------------
def _ray_cpus() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0)


def _view_input_bytes(raw: Path, repo) -> dict[str, int]:
    """In-memory (Arrow) bytes of the columns each view reads from the source."""
    import pyarrow.parquet as pq

    return {v.name: pq.read_table(raw, columns=_view_columns(repo, v)).nbytes
            for v in repo.feature_views}


def _store_stats() -> dict:
    """Ray's object store stats (spilled / restored), best effort."""
    import ray
    from ray._private.internal_api import memory_summary

    try:
        text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception as exc:   # a private API: report, do not fail the run
        return {"error": repr(exc)}
    out: dict = {"text": text.strip()}
    m = re.search(r"Spilled (\d+) MiB, (\d+) objects", text)
    out["spilled_mib"], out["spilled_objects"] = (int(m[1]), int(m[2])) if m else (0, 0)
    m = re.search(r"Restored (\d+) MiB, (\d+) objects", text)
    out["restored_mib"] = int(m[1]) if m else 0
    return out


class _Sampler:
    """Peak private (anonymous) RSS of this process's Ray children and peak size of the spill dir."""

    def __init__(self, spill: Path, every_s: float = 0.5):
        self.spill, self.every = spill, every_s
        self.peak_private = self.peak_spill = 0
        self._stop = threading.Event()

    def __enter__(self) -> _Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak_private = max(self.peak_private, sum(_rss_anon(p) for p in _descendants()))
            size = sum(f.stat().st_size for f in self.spill.rglob("*") if f.is_file()) \
                if self.spill.exists() else 0
            self.peak_spill = max(self.peak_spill, size)


def _descendants() -> list[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    return sorted(mine)


def _rss_anon(pid: int) -> int:
    try:
        m = re.search(r"RssAnon:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(m[1]) * 1024 if m else 0


def _child(argv: list[str], timeout_min: float) -> dict:
    """Run this script's hidden child command: its JSON line (seconds, peak RSS) or an error."""
    try:
        proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                              timeout=timeout_min * 60, preexec_fn=_as_nice_as_ray_workers)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_min} min"}
    if proc.returncode != 0:
        console.print(f"[red]{argv[0]} failed[/red]: {proc.stderr[-3000:]}", markup=True)
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _as_nice_as_ray_workers() -> None:
    """Raise niceness the way Ray does for its workers (+RAY_worker_niceness, default 15), so
    that under load from other processes the baselines get the same CPU priority as Ray."""
    os.nice(int(os.environ.get("RAY_worker_niceness", 15)))  # noqa: SIM112


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent's fork)."""
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


# ----------------------------------------------------------------------------- main -----------
def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "token")   # Ray 2.60 reads it once, at import
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--buckets", type=int, default=64, help="num_buckets of the build")
    common.add_argument("--num-cpus", type=int, default=None,
                        help="Ray logical CPUs (default: the platform's init_ray default)")
    common.add_argument("--timeout-min", type=float, default=20, help="per pandas child run")
    common.add_argument("--stats", action="store_true", help="print Ray Data ds.stats()")
    common.add_argument("--keep", action="store_true", help="keep the work folder")
    sub = parser.add_subparsers(dest="mode", required=True)
    for name, store_mb in (("build", None), ("join", None)):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
        p.add_argument("--object-store-mb", type=int, default=store_mb)
    sub.choices["join"].add_argument("--views", nargs="+", default=["user_activity"],
                                     help="views to join, or 'all'")
    p = sub.add_parser("out-of-core", parents=[common])
    p.add_argument("--object-store-mb", type=int, default=150)
    p.add_argument("--factor", type=float, default=3.0, help="raw data / object store")
    p.add_argument("--rows", type=int, nargs=1, default=None, help="default: from --factor")
    p = sub.add_parser("pandas-child")
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("impl", choices=["kernel", "pandas"])
    p = sub.add_parser("pandas-join-child")
    for a in ("root", "events", "out"):
        p.add_argument(a)
    p.add_argument("views", nargs="+")
    args = parser.parse_args()
    global CODE
    CODE = code_version()   # at start: the code this process imported

    if args.mode == "pandas-child":
        seconds = pandas_build(Path(args.raw), Path(args.out), args.impl)
        print(json.dumps({"seconds": seconds, "peak_rss_bytes": _peak_rss()}))
        return
    if args.mode == "pandas-join-child":
        seconds = pandas_join(Path(args.root), Path(args.events), Path(args.out), args.views)
        print(json.dumps({"seconds": seconds, "peak_rss_bytes": _peak_rss()}))
        return
    work = Path(tempfile.mkdtemp(prefix=f"bench-fs-{args.mode}-"))
    console.log(f"work folder {work}")
    try:
        {"build": cmd_build, "join": cmd_join, "out-of-core": cmd_out_of_core}[args.mode](args, work)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
