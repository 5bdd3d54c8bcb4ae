"""Benchmark: online feature lookups for serving, SQLite (embedded) vs Redis, side by side.

    .venv/bin/python benchmarks/online_lookup.py --rows 200000 --batch 32 --repeats 500

Fills both online stores with the same latest values of the four feature views of the fraud
example (examples/fraud/mlplatform.yaml; computed in-process with the build's own kernel), then
times ``FeatureStore.get_online_features`` for batches of ``--batch`` transactions: the 13
features the model inputs read (the project's ``features``), from 4 views (one read per view),
with the TTL check - the online-store read the Serve app makes per request. Values from the two
stores are checked equal. Results are appended to benchmarks/results/online_lookup.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()

    import numpy as np
    from _common import fraud_project
    from rich.console import Console
    from rich.table import Table

    from mlplatform.config import PlatformConfig
    from mlplatform.datasets import make_transactions
    from mlplatform.features import FeatureStore
    from mlplatform.features.aggregates import window_aggregates
    from mlplatform.project import feature_names

    project = fraud_project()
    refs = list(project.features)          # what the Serve app's FeatureLookup asks for
    names = feature_names(project)         # the 13 looked-up features those refs name
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="bench-online-"))
    redis_proc, redis_url = _start_redis(work)
    configs = {"sqlite": PlatformConfig(storage_root=work)}
    if redis_url:
        configs["redis"] = PlatformConfig(storage_root=work, online_store="redis",
                                          redis_url=redis_url)
    try:
        raw = make_transactions(args.rows, seed=0)
        stores = {name: FeatureStore(cfg, project) for name, cfg in configs.items()}
        repo = next(iter(stores.values())).repo
        with console.status("computing and writing the latest values of every view"):
            for view in repo.feature_views:
                keys = repo.join_keys(view)
                latest = window_aggregates(raw, view, keys).drop_duplicates(keys, keep="last")
                for store in stores.values():
                    store.online.write(view.name, latest, keys)
        rng = np.random.default_rng(0)
        as_of = raw["event_timestamp"].max()
        picks = [raw.iloc[rng.integers(0, len(raw), args.batch)] for _ in range(args.repeats)]
        batches = [p[["user_id", "merchant_id", "country", "device_type"]].to_dict("records")
                   for p in picks]
        timings, answers = {}, {}
        for name, store in stores.items():
            store.get_online_features(batches[0], refs, as_of=as_of)   # warm up
            ms = []
            for rows in batches:
                t0 = time.perf_counter()
                out = store.get_online_features(rows, refs, as_of=as_of)
                ms.append((time.perf_counter() - t0) * 1000)
            timings[name], answers[name] = ms, out
        if len(answers) == 2:
            for f in names:
                a, b = (np.array(answers[n][f], dtype=float) for n in answers)
                np.testing.assert_allclose(a, b, err_msg=f)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"get_online_features: {args.batch} transactions x {len(names)} "
                        f"features from 4 views, {args.repeats} batches, {args.rows:,} rows "
                        "materialized" + (", values equal" if len(timings) == 2 else ""))
    for col in ("store", "p50 ms", "p95 ms", "p99 ms", "lookups/s (x batch)"):
        table.add_column(col, justify="right")
    summary = {}
    for name, ms in timings.items():
        q = np.percentile(ms, [50, 95, 99])
        summary[name] = {"p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2]}
        table.add_row(name, f"{q[0]:.2f}", f"{q[1]:.2f}", f"{q[2]:.2f}",
                      f"{args.batch * 1000 / statistics.mean(ms):,.0f}")
    console.print(table)
    if not redis_url:
        console.print("[yellow]redis-server not found: Redis not measured (run `make redis`).")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with open(out / "online_lookup.jsonl", "a") as f:
        f.write(json.dumps({"rows": args.rows, "batch": args.batch, "repeats": args.repeats,
                            "results": summary, "cpus": os.cpu_count(),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def _start_redis(work: Path):
    """A throw-away redis-server on a free port, or (None, None) if there is none."""
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)  # poll interval while the server starts
    proc.terminate()
    return None, None


if __name__ == "__main__":
    main()
