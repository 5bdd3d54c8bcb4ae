"""Benchmark: Ray Data shuffle strategies for the feature store build's group-by, side by side.

    .venv/bin/python benchmarks/feature_shuffle.py --rows 50000 --repeats 2

Builds the same feature views (FeatureStore.build of the fraud example's 4 views,
examples/fraud/mlplatform.yaml) with each strategy on the same local Ray
(8 logical CPUs), checks the outputs are identical, and prints wall time per strategy and the
ratio to the fastest.
Results are appended to benchmarks/results/feature_shuffle.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

STRATEGIES = ["sort_shuffle_pull_based", "hash_shuffle"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--buckets", type=int, default=64)
    args = parser.parse_args()

    import pandas as pd
    import ray
    from _common import fraud_project
    from rich.console import Console
    from rich.table import Table

    from mlplatform.config import PlatformConfig
    from mlplatform.datasets import RAW_DIR, make_transactions, save_transactions
    from mlplatform.features import FeatureStore

    project = fraud_project()
    ray.init(address="local", num_cpus=8, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="bench-shuffle-"))
    stores = {}
    for strategy in ["warmup", *STRATEGIES]:
        cfg = PlatformConfig(storage_root=work / strategy)
        save_transactions(make_transactions(args.rows, seed=0), cfg.path(*RAW_DIR))
        stores[strategy] = FeatureStore(cfg, project, shuffle="sort_shuffle_pull_based"
                                        if strategy == "warmup" else strategy)
    stores.pop("warmup").build(validate=False, num_buckets=args.buckets)  # start workers once

    times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for _ in range(args.repeats):
        for strategy in STRATEGIES:
            t0 = time.perf_counter()
            stores[strategy].build(validate=False, num_buckets=args.buckets)
            times[strategy].append(time.perf_counter() - t0)
    for view in stores[STRATEGIES[0]].repo.feature_views:
        keys = [*stores[STRATEGIES[0]].repo.join_keys(view), view.timestamp_field]
        frames = [stores[s].read_view(view.name).to_pandas().sort_values(keys)
                  .reset_index(drop=True) for s in STRATEGIES]
        for other in frames[1:]:
            pd.testing.assert_frame_equal(frames[0], other)

    medians = {s: statistics.median(t) for s, t in times.items()}
    best = min(medians.values())
    table = Table(title=f"Feature build (4 views), {args.rows:,} rows, {args.buckets} buckets, "
                        f"{args.repeats} repeats (median), outputs identical")
    for col in ("shuffle strategy", "median s", "rows/s", "x fastest"):
        table.add_column(col, justify="right")
    for s, m in medians.items():
        table.add_row(s, f"{m:.1f}", f"{args.rows / m:,.0f}", f"{m / best:.2f}")
    Console().print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with open(out / "feature_shuffle.jsonl", "a") as f:
        f.write(json.dumps({"rows": args.rows, "buckets": args.buckets, "medians_s": medians,
                            "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


if __name__ == "__main__":
    main()
