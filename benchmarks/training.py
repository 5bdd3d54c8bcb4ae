"""Benchmark: training on Ray Train / Ray Tune vs the same work without Ray, side by side.

    .venv/bin/python benchmarks/training.py xgboost --rows 1000000
    .venv/bin/python benchmarks/training.py torch --rows 200000
    .venv/bin/python benchmarks/training.py tune --trials 100 --seconds 0.5 --cpus 2

``xgboost``: ``XGBoostTrainer`` (1 worker holding all cores, our ``_train_loop``: shard ingest,
DMatrix, boosting with per-round bookkeeping) vs native ``xgboost.train`` with the same params
(the fraud example's xgboost model, examples/fraud/mlplatform.yaml ``models.xgboost.train``),
rounds and threads on the same rows (the fraud example's training set built by the feature
store, repeated to ``--rows``). The ratio is Ray's boosting time / native's; Ray's start-up
(worker group, dataset split, ingest) is reported apart, as is the whole ``fit()``.

``torch``: ``TorchTrainer`` (1 worker) samples/s vs a plain torch loop over the same model,
data, batch size and epochs (``mlplatform.models.torch_net``); CPU here, GPU on the GPU
machine (``--device cuda``).

``tune``: ``--trials`` trials of a function that takes ``--seconds`` (sleeps), on a Ray with
``--cpus`` logical CPUs, one CPU per trial: wall time / ideal (trials x seconds / cpus).

One JSON line per run is appended to benchmarks/results/training.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import code_version, machine
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "training.jsonl"
CODE = code_version()   # at start: the code this process imported
console = Console()


def append(record: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    record |= {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
               "code": CODE, "loadavg_1m": os.getloadavg()[0]}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def table(title: str, rows: list[tuple[str, ...]], columns: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*r)
    return t


def training_frame(work: Path, rows: int):
    """Model inputs + label: a real training set of the fraud example (feature store build +
    point-in-time join + its model inputs) of up to 200k transactions, repeated to ``rows``."""
    import pandas as pd
    from _common import fraud_project

    from mlplatform.config import PlatformConfig
    from mlplatform.features import FeatureStore, build_training_set
    from mlplatform.pipelines import ensure_data

    project = fraud_project()
    columns, label = project.input_columns, project.task.label
    cfg = PlatformConfig(storage_root=work)
    ensure_data(cfg, project, min(rows, 200_000), seed=0, force=True, echo=lambda _line: None)
    store = FeatureStore(cfg, project)
    store.build(validate=False)
    tset = build_training_set(project, store)
    df = pd.read_parquet(tset.path, columns=[*columns, label])
    reps = -(-rows // len(df))
    return pd.concat([df] * reps, ignore_index=True).iloc[:rows], columns, label


# ----------------------------------------------------------------------------- xgboost -------
def cmd_xgboost(args, work: Path) -> None:
    import ray
    import ray.data
    import ray.train
    import xgboost
    from _common import fraud_project
    from ray.train.xgboost import XGBoostTrainer

    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.pipelines import train_config
    from mlplatform.training import TrainConfig
    from mlplatform.training.data import train_run_config
    from mlplatform.training.xgb import STATE_FILE, _train_loop

    cores = os.cpu_count() or 1
    init_ray(PlatformConfig(storage_root=work), log_to_driver=False, include_dashboard=False)
    with console.status("building a training set"):
        df, feats, label = training_frame(work, args.rows)
    cut = int(len(df) * 0.8)
    train, valid = df.iloc[:cut], df.iloc[cut:]
    # The fraud example's booster: DEFAULT_XGB_PARAMS, the binary task's objective and metrics,
    # and its models.xgboost.train.params (examples/fraud/mlplatform.yaml).
    params = {**train_config(fraud_project(), "xgboost").xgb_params(), "nthread": cores}

    with console.status(f"native xgboost.train, {args.rounds} rounds"):
        t0 = time.perf_counter()
        dtrain = xgboost.DMatrix(train[feats], label=train[label])
        dvalid = xgboost.DMatrix(valid[feats], label=valid[label])
        t1 = time.perf_counter()
        xgboost.train(params, dtrain, args.rounds, evals=[(dtrain, "train"), (dvalid, "validation")],
                      verbose_eval=False)
        native = {"dmatrix_s": t1 - t0, "boost_s": time.perf_counter() - t1}

    ds_train, ds_valid = ray.data.from_pandas(train), ray.data.from_pandas(valid)
    config = TrainConfig(num_boost_round=args.rounds, early_stopping_rounds=0,
                         checkpoint={"frequency": args.rounds}, run_name="bench-xgb")
    trainer = XGBoostTrainer(
        _train_loop,
        train_loop_config={"params": params, "label": label, "features": feats,
                           "num_boost_round": args.rounds, "early_stopping_rounds": 0,
                           "checkpoint_frequency": args.rounds, "callbacks": []},
        scaling_config=ray.train.ScalingConfig(num_workers=1,
                                               resources_per_worker={"CPU": cores}),
        run_config=train_run_config(config, PlatformConfig(storage_root=work), "xgboost"),
        datasets={"train": ds_train, "validation": ds_valid})
    with console.status(f"XGBoostTrainer, 1 worker x {cores} CPUs, {args.rounds} rounds"):
        t0 = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - t0
    with result.checkpoint.as_directory() as d:
        timing = json.loads(Path(d, STATE_FILE).read_text())["timing"]
    ray_r = {"fit_s": fit_s, "ingest_s": timing["ingest_s"], "boost_s": timing["boost_s"],
             "startup_s": fit_s - timing["boost_s"]}
    ratio = ray_r["boost_s"] / native["boost_s"]
    console.print(table(
        f"XGBoost, {args.rows:,} rows x {len(feats)} features, {args.rounds} rounds, {cores} threads",
        [("native xgboost.train", f"{native['dmatrix_s']:.1f}", f"{native['boost_s']:.1f}", "-", "1.00x"),
         ("XGBoostTrainer", f"{ray_r['ingest_s']:.1f}", f"{ray_r['boost_s']:.1f}",
          f"{ray_r['startup_s']:.1f} (fit {fit_s:.1f})", f"{ratio:.2f}x")],
        ("contender", "DMatrix / ingest s", "boosting s", "start-up s", "boost time / native")))
    console.print(f"goal XGBoostTrainer / native <= 1.15: {'MET' if ratio <= 1.15 else 'NOT met'} "
                  f"({ratio:.2f}x)")
    append({"mode": "xgboost", "rows": args.rows, "rounds": args.rounds, "threads": cores,
            "native": native, "ray": ray_r, "ratio": ratio, "goal": {"max": 1.15, "met": ratio <= 1.15}})
    ray.shutdown()


# ------------------------------------------------------------------------------- torch --------
def cmd_torch(args, work: Path) -> None:
    import statistics

    import ray
    import torch
    from _common import fraud_project
    from mlflow import MlflowClient

    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.models.torch_net import TabularNet
    from mlplatform.training import TrainConfig, train_torch
    from mlplatform.training.data import time_split
    from mlplatform.training.torch_loop import epoch_seed, fit_epoch, make_optimizer
    from mlplatform.training.torch_train import _arch, _frame_stats, _numeric_columns, _tensors

    cores = os.cpu_count() or 1
    gpu = args.device == "cuda"
    project = fraud_project()
    platform_cfg = PlatformConfig(storage_root=work)
    init_ray(platform_cfg, log_to_driver=False, include_dashboard=False)
    with console.status("building a training set"):
        df, _, _ = training_frame(work, args.rows)
        path = work / "bench_set"
        path.mkdir()
        df.assign(**{project.data.timestamp: pd_range(len(df))}).to_parquet(
            path / "part-0.parquet")
    per_worker = {"CPU": cores, **({"GPU": 1} if gpu else {})}
    # The bench set has no lineage file: what the fraud example's training set would say (task,
    # label, inputs, time column, validation share, embedded code columns) is given here.
    categorical = {c: n + 1 for c, n in project.categorical.items()}
    config = TrainConfig(model="torch", features_path=path, run_name="bench-torch",
                         task=project.task.type, label=project.task.label,
                         feature_columns=project.input_columns,
                         timestamp_column=project.data.timestamp,
                         validation_fraction=project.data.validation_fraction,
                         torch={"epochs": args.epochs, "batch_size": args.batch_size,
                                "categorical": categorical},
                         checkpoint={"frequency": args.epochs},
                         scaling={"num_workers": 1, "use_gpu": gpu, "resources_per_worker": per_worker})
    with console.status(f"TorchTrainer, 1 worker, {args.epochs} epochs on {args.device}"):
        t0 = time.perf_counter()
        result = train_torch(config, platform_cfg)
        fit_s = time.perf_counter() - t0
    client = MlflowClient(platform_cfg.mlflow_tracking_uri)
    ray_sps = [m.value for m in sorted(client.get_metric_history(result.run_id, "train_samples_per_s"),
                                       key=lambda m: m.step)]

    # The plain loop: the same network, optimizer, batches and epochs over in-memory tensors.
    train_ds, _, _ = time_split(path, config)
    train = train_ds.to_pandas()
    arch = _arch(config, *_frame_stats(train, _numeric_columns(config)))
    device = torch.device(args.device)
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    model = TabularNet(arch).to(device)
    optimizer = make_optimizer(model, {"learning_rate": config.torch.learning_rate,
                                       "weight_decay": config.torch.weight_decay})
    x, y = _tensors(train, config)
    x, y = x.to(device), y.to(device)
    amp = gpu and torch.cuda.is_bf16_supported()
    plain_sps = []
    for epoch in range(args.epochs):
        seed = epoch_seed(0, epoch, 0)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(device)
        batches = ((x[order[i:i + args.batch_size]], y[order[i:i + args.batch_size]])
                   for i in range(0, len(order), args.batch_size))
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, rows = fit_epoch(model, optimizer, batches, seed=seed, amp=amp)
        if gpu:
            torch.cuda.synchronize()
        plain_sps.append(rows / (time.perf_counter() - t0))
    warm = slice(1, None) if args.epochs > 1 else slice(None)   # epoch 0 warms up
    r, p = statistics.median(ray_sps[warm]), statistics.median(plain_sps[warm])
    ratio = r / p
    console.print(table(
        f"PyTorch tabular net, {len(train):,} training rows, batch {args.batch_size}, "
        f"{args.epochs} epochs on {args.device} (median of epochs after the first)",
        [("plain torch loop (tensors in memory)", f"{p:,.0f}", "1.00x"),
         ("TorchTrainer (shard cached as tensors, 1 worker)", f"{r:,.0f}", f"{ratio:.2f}x")],
        ("contender", "samples/s", "vs plain")))
    goal = 0.97
    console.print(f"TorchTrainer / plain = {ratio:.2f}x (goal >= {goal} on GPU; "
                  f"{'MET' if ratio >= goal else 'NOT met'} here on {args.device}); "
                  f"train_torch wall {fit_s:.1f} s")
    append({"mode": "torch", "rows": len(train), "epochs": args.epochs, "batch_size": args.batch_size,
            "device": args.device, "ray_samples_per_s": ray_sps, "plain_samples_per_s": plain_sps,
            "ratio": ratio, "train_torch_wall_s": fit_s, "goal": {"min": goal, "met": ratio >= goal}})
    ray.shutdown()


def pd_range(n: int):
    """Distinct, increasing event times (the time split needs them; repeated rows get their own)."""
    import pandas as pd

    return pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC")


# -------------------------------------------------------------------------------- tune --------
def cmd_tune(args, work: Path) -> None:
    import ray
    from ray import tune

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)

    def trial(config):
        time.sleep(args.seconds)
        return {"score": config["x"]}

    def run(name: str, loggers: bool) -> float:
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": 1}),
            param_space={"x": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(num_samples=args.trials, metric="score", mode="max",
                                        reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(work), name=name, verbose=0))
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0" if loggers else "1"
        t0 = time.perf_counter()
        results = tuner.fit()
        wall = time.perf_counter() - t0
        assert len(results) == args.trials and not results.errors
        return wall

    ideal = args.trials * args.seconds / args.cpus
    walls = {"Tune defaults (CSV/JSON/TensorBoard loggers)": run("with-loggers", True),
             "as mlplatform.sweep runs it (loggers off)": run("no-loggers", False)}
    ratios = {k: w / ideal for k, w in walls.items()}
    console.print(table(f"Ray Tune, {args.trials} trials x {args.seconds} s on {args.cpus} CPUs "
                        f"(ideal {ideal:.1f} s)",
                        [(k, f"{w:.1f}", f"{ratios[k]:.2f}x") for k, w in walls.items()],
                        ("Tuner.fit", "wall s", "wall / ideal")))
    ours = ratios["as mlplatform.sweep runs it (loggers off)"]
    console.print(f"goal wall / ideal <= 1.15: {'MET' if ours <= 1.15 else 'NOT met'} ({ours:.2f}x)")
    append({"mode": "tune", "trials": args.trials, "seconds": args.seconds, "cpus": args.cpus,
            "wall_s": walls, "ideal_s": ideal, "ratio": ratios,
            "goal": {"max": 1.15, "met": ours <= 1.15}})
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("xgboost")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=200)
    p = sub.add_parser("torch")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p = sub.add_parser("tune")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"bench-train-{args.mode}-"))
    try:
        {"xgboost": cmd_xgboost, "torch": cmd_torch, "tune": cmd_tune}[args.mode](args, work)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
