"""Hyperparameter sweeps with Ray Tune, every trial an MLflow child run under one parent run.

Example (a notebook cell; progress shows while it runs)::

    >>> from mlplatform.training import TrainConfig, sweep          # doctest: +SKIP
    >>> df = sweep(TrainConfig(num_boost_round=100),                 # doctest: +SKIP
    ...            {"params.max_depth": {"randint": [3, 9]},
    ...             "params.eta": {"loguniform": [0.01, 0.3]}}, num_samples=8)
    >>> df.head(), df.attrs["best_model_uri"]                        # doctest: +SKIP

Why a trial trains in its own Tune actor with native ``xgboost.train`` and not as a Ray Train
run: a sweep's trials are small (a single worker's data fits in memory), and a Ray Train run
per trial adds a trainer actor, a placement group, a worker group and XGBoost's collective
tracker to each one, and that start-up dwarfs the training it wraps: measured on the 2-core
development machine (shared, loaded), one 1-worker ``XGBoostTrainer`` run took 23-32 s of
wall time for 0.2 s of boosting (40 rounds, 16k rows), while the in-process Tune loop ran six
such trials in 5-10 s. Tune's trial actors (reused across trials) are already the
parallelism. In-process, the trial reports every boosting round to Tune, so ASHA can stop a
bad trial at any rung. The data is read and split once on the driver (``time_split``) and
reaches every trial through the object store (``tune.with_parameters``).
Multi-worker training of one large model remains :func:`~mlplatform.training.train_xgboost`.

Trials of another model plug in through the same shape: a module with
``tune_trial(config, train, valid, report, *, metric, mode)`` (calls ``report`` =
:func:`report_round` once per round or epoch) and ``log_tuned_model(model_dir, config,
sample)`` (logs the model saved in ``model_dir`` and returns MLflow's ``ModelInfo``). The
torch trainer is looked up in ``mlplatform.training.torch_train``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError, TrainingError
from mlplatform.training.config import TrainConfig, final_metric_names
from mlplatform.training.search_space import (
    apply_overrides,
    largest_value,
    to_python,
    to_tune_space,
)

SCHEDULERS = ("asha", "fifo")
SEARCH_ALGS = ("optuna", "hyperopt", "random")
#: Progress counter every trial reports (boosting rounds, or epochs): ASHA's time axis.
ROUNDS = "rounds"


def sweep(config: TrainConfig, search_space: Mapping[str, Any], num_samples: int,
          max_concurrent: int | None = None, scheduler: str = "asha",
          search_alg: str | None = None, metric: str = "val_auc_pr", mode: str = "max",
          platform: PlatformConfig | None = None, *, grace_period: int | None = None,
          reduction_factor: float = 3, seed: int | None = 0, verbose: int = 1) -> pd.DataFrame:
    """Run a Ray Tune sweep over ``config`` and return one row per trial, best first.

    Args:
        config: The base training config; each trial overrides the ``search_space`` keys.
        search_space: Dotted config key -> sampler, e.g. ``{"params.eta": {"loguniform":
            [0.01, 0.3]}}`` (see :mod:`mlplatform.training.search_space`).
        num_samples: Trials to run (with ``grid_search`` keys: repeats of the grid).
        max_concurrent: Most trials at once (default: as many as the cluster holds). A trial
            is one process and reserves ``config.scaling.resources_per_worker`` (plus a GPU
            with ``use_gpu``); ``scaling.num_workers`` is for ``train_xgboost``, not trials.
        scheduler: ``asha`` (stops trials that trail at a rung) or ``fifo`` (runs all).
        search_alg: ``optuna``, ``hyperopt`` or ``random``; default: Optuna if installed, else
            HyperOpt if installed, else random search.
        metric: Validation metric to optimise (``val_auc_pr``, ``val_auc_roc``, ``val_logloss``).
        mode: ``max`` or ``min``.
        platform: Where MLflow, storage and Ray live (default: ``PlatformConfig.load()``).
        grace_period: Rounds before ASHA may stop a trial (default: a tenth of the rounds).
        reduction_factor: ASHA keeps the top 1/``reduction_factor`` of trials at each rung.
        seed: Seed of the search algorithm (None: not reproducible).
        verbose: Tune's progress output, 0 (silent) to 2 (every result).

    Returns:
        A DataFrame sorted by ``metric``, best first: ``trial_id``, ``run_id`` (the trial's
        MLflow child run), one column per search-space key, the validation metrics of the
        model each trial kept (at its best round with early stopping, else its last round),
        ``rounds`` trained, ``best_round``, ``stopped_early`` (by ASHA), ``status``, ``error``
        and ``time_s``. ``df.attrs`` holds ``parent_run_id``, ``best_run_id``,
        ``best_model_uri``, ``best_params`` (the best model's search-space values),
        ``experiment_id``, ``metric``, ``mode``, ``search_alg`` and the Tune ``storage_path``.

    Raises:
        ConfigError: A bad argument or search space (nothing runs and nothing is logged).
        DataValidationError: The training set is missing or unusable (nothing is logged).
        TrainingError: Every trial failed, or none finished with a model (the parent run is
            marked FAILED).
    """
    backend, space, settings = _plan(config, search_space, num_samples, max_concurrent,
                                     scheduler, search_alg, metric, mode, grace_period,
                                     reduction_factor)
    platform = platform or PlatformConfig.load()

    from ray import tune

    from mlplatform import _mlflow
    from mlplatform._ray import init_ray
    from mlplatform.training import _sweep_tracking as sweep_log
    from mlplatform.training.data import prepare, time_split

    init_ray(platform)
    config, features_path = prepare(config, platform)
    train_ds, valid_ds, split = time_split(features_path, config)
    # One canonical row order: Ray Data may hand blocks back in any order, and XGBoost's
    # sketch and sampling depend on it; sorted, a seeded trial gives the same model every time.
    train_df, valid_df = (_canonical(ds.to_pandas()) for ds in (train_ds, valid_ds))

    name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    experiment_id = _mlflow.ensure_experiment(platform, config.experiment_name)
    client = _mlflow.client(platform)
    parent = client.create_run(experiment_id, run_name=config.run_name or name,
                               tags=sweep_log.lineage_tags(config, features_path, name))
    parent_id = parent.info.run_id
    status = "FAILED"
    try:
        sweep_log.log_params(client, parent_id, {
            **settings, "seed": seed, "search_space": json.dumps(search_space),
            **backend.base_params(config), **split})
        client.log_dict(parent_id, dict(search_space), "sweep/search_space.json")

        trainable = tune.with_parameters(_run_trial, base=config, train=train_df,
                                         valid=valid_df, metric=metric, mode=mode)
        logger = sweep_log.TrialRunLogger(
            platform.mlflow_tracking_uri, experiment_id, parent_id,
            base_params=backend.base_params(config), tags={"mlplatform.sweep": name})
        tuner = tune.Tuner(
            tune.with_resources(trainable, _trial_resources(config)),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=_final(metric), mode=mode, num_samples=num_samples,
                search_alg=_searcher(settings["search_alg"], metric, mode, seed, max_concurrent),
                scheduler=_scheduler(settings),
                trial_dirname_creator=lambda trial: trial.trial_id,
                # A trial is seconds of work: starting an actor for each costs as much.
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=platform.train_storage_path(),
                callbacks=[logger], verbose=verbose))
        # Tune's own per-result CSV/JSON/TensorBoard files would repeat what the trials' MLflow
        # runs hold; without them 100 short trials on 2 CPUs run 1.10x ideal instead of 1.18x
        # (benchmarks/training.py tune).
        with _env(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
            grid = tuner.fit()

        df, info = _record_results(grid, client, experiment_id, parent_id, backend, config,
                                   list(search_space), metric, mode, valid_df)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent_id, status)
    best = df[df["run_id"] == info.run_id].iloc[0]
    df.attrs.update({"parent_run_id": parent_id, "best_run_id": info.run_id,
                     "best_trial_id": best["trial_id"], "best_model_uri": info.model_uri,
                     "best_params": {k: to_python(best[k]) for k in search_space},
                     "experiment_id": experiment_id, "metric": metric, "mode": mode,
                     "search_alg": settings["search_alg"], "storage_path": grid.experiment_path})
    return df


def _record_results(grid, client, experiment_id: str, parent_id: str, backend: _Backend,
                    config: TrainConfig, keys: list[str], metric: str, mode: str,
                    valid_df: pd.DataFrame):
    """The trials table; the best finished trial's model logged on its child run; the
    parent run's summary. Returns the table and the model's ``ModelInfo``."""
    from mlplatform import _mlflow
    from mlplatform.training import _sweep_tracking as sweep_log

    runs = sweep_log.child_runs(client, experiment_id, parent_id)
    df = sweep_log.results_frame(grid, keys, metric, mode, runs)
    if df["status"].eq("error").all():
        raise TrainingError(f"all {len(df)} trials failed; the first error: {df['error'].iloc[0]}")
    best = sweep_log.best_with_model(df, grid)
    if best is None:
        raise TrainingError("no trial finished with a model (every one was stopped or failed); "
                            "raise num_samples or the grace_period.")
    row, checkpoint = best
    with checkpoint.as_directory() as model_dir, _mlflow.resumed_run(row["run_id"]):
        info = backend.log_model(Path(model_dir), apply_overrides(config, {k: row[k] for k in keys}),
                                 valid_df[config.feature_columns].head(5))
    client.log_batch(parent_id, metrics=sweep_log.metrics({
        **{f"best_{k}": float(row[k]) for k in backend.metrics(config) if pd.notna(row.get(k))},
        "trials": len(df), "trials_stopped_early": int(df["stopped_early"].sum()),
        "trials_failed": int(df["status"].eq("error").sum())}))
    for key, value in {"best_trial_id": row["trial_id"], "best_run_id": row["run_id"],
                       "best_model_uri": info.model_uri}.items():
        client.set_tag(parent_id, key, value)
    client.log_text(parent_id, df.to_csv(index=False), "sweep/trials.csv")
    return df, info


def check_sweep(config: TrainConfig, search_space: Mapping[str, Any], num_samples: int,
                max_concurrent: int | None = None, scheduler: str = "asha",
                search_alg: str | None = None, metric: str = "val_auc_pr", mode: str = "max",
                *, grace_period: int | None = None, reduction_factor: float = 3) -> dict[str, Any]:
    """Check a sweep's arguments as :func:`sweep` does, without running anything.

    Returns:
        The resolved settings: ``search_alg``, ``max_rounds`` and (ASHA) ``grace_period``.

    Raises:
        ConfigError: The message names the bad argument or search-space key.
    """
    return _plan(config, search_space, num_samples, max_concurrent, scheduler, search_alg,
                 metric, mode, grace_period, reduction_factor)[2]


def _plan(config, search_space, num_samples, max_concurrent, scheduler, search_alg, metric,
          mode, grace_period, reduction_factor) -> tuple[_Backend, dict[str, Any], dict]:
    backend = _backend(config.model)
    _check_args(num_samples, max_concurrent, scheduler, mode, reduction_factor, grace_period)

    def check(trial_config: TrainConfig) -> None:
        reported = backend.metrics(trial_config)
        if metric not in reported:
            raise ValueError(f"metric '{metric}' is not reported by {config.model} trials; "
                             f"they report {reported} (from params.eval_metric).")
        if backend.check is not None:
            backend.check(trial_config)

    try:
        check(config)
    except ValueError as exc:
        raise ConfigError(f"the training config is rejected: {exc}") from None
    space = to_tune_space(search_space, config, check=check)
    max_rounds = int(largest_value(search_space, backend.rounds_key, backend.rounds(config)))
    settings = {"model": config.model, "num_samples": num_samples, "scheduler": scheduler,
                "search_alg": _resolve_search_alg(search_alg, space), "metric": metric,
                "mode": mode, "max_concurrent": max_concurrent, "max_rounds": max_rounds}
    if scheduler == "asha":
        grace = grace_period or max(1, max_rounds // 10)
        if grace > max_rounds:
            raise ConfigError(f"grace_period {grace} is more than the {max_rounds} rounds a "
                              "trial trains; lower it.")
        settings.update(grace_period=grace, reduction_factor=reduction_factor)
    return backend, space, settings


def report_round(rounds: int, metrics: Mapping[str, float], *, best_round: int,
                 final: Mapping[str, float], model_dir: str | None = None) -> None:
    """What a trial calls once per round (boosting round or epoch); the sweep's contract.

    Args:
        rounds: Rounds done so far (1-based): ASHA's time axis and the MLflow step.
        metrics: This round's validation metrics (``val_*``).
        best_round: The round of the model the trial keeps so far (its best round with early
            stopping, else ``rounds``).
        final: The validation metrics at ``best_round``.
        model_dir: On the trial's last call only: a folder holding the kept model; it becomes
            the trial's Tune checkpoint, and marks the trial as finished (not stopped early).
    """
    from ray import tune

    result = {**metrics, **{_final(k): v for k, v in final.items()}, ROUNDS: rounds,
              "best_round": best_round, "finished": model_dir is not None}
    checkpoint = tune.Checkpoint.from_directory(model_dir) if model_dir else None
    tune.report(result, checkpoint=checkpoint)


# ----------------------------------------------------------------------------- trials
def _run_trial(tune_config: dict, *, base: TrainConfig, train: pd.DataFrame,
               valid: pd.DataFrame, metric: str, mode: str) -> None:
    """One Tune trial (runs in a Tune actor): the base config with the sampled values."""
    config = apply_overrides(base, tune_config)
    _backend(config.model).trial(config, train, valid, report_round, metric=metric, mode=mode)


def _final(name: str) -> str:
    return f"final_{name}"


# ----------------------------------------------------------------------------- results
def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns), kind="stable", ignore_index=True)


# ---------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class _Backend:
    """How one model kind runs as a trial and logs its model."""

    trial: Callable[..., None]
    log_model: Callable[[Path, TrainConfig, pd.DataFrame], Any]
    rounds_key: str                              # the search-space key of the round count
    rounds: Callable[[TrainConfig], int]
    metrics: Callable[[TrainConfig], list[str]]  # the val_* names trials report
    base_params: Callable[[TrainConfig], dict[str, Any]]
    check: Callable[[TrainConfig], None] | None = None


def _backend(model: str) -> _Backend:
    if model == "xgboost":
        from mlplatform.training import _xgb_trial as xgb

        return _Backend(
            trial=xgb.tune_trial, log_model=xgb.log_tuned_model, rounds_key="num_boost_round",
            rounds=lambda c: c.num_boost_round, metrics=xgb.reported_metrics,
            check=xgb.check_params,
            base_params=lambda c: {**{f"params.{k}": v for k, v in c.params.items()},
                                   "num_boost_round": c.num_boost_round,
                                   "early_stopping_rounds": c.early_stopping_rounds})
    if model == "torch":
        module_name = "mlplatform.training.torch_train"
        module = importlib.import_module(module_name) if importlib.util.find_spec(
            module_name) else None
        missing = [f for f in ("tune_trial", "log_tuned_model") if not hasattr(module, f)]
        if missing:
            raise ConfigError(
                f"model 'torch' cannot be swept yet: {module_name} lacks "
                f"{' and '.join(missing)}. A sweep needs tune_trial(config, train, valid, "
                "report, *, metric, mode) calling report (mlplatform.training.tuning."
                "report_round) once per epoch, and log_tuned_model(model_dir, config, sample) "
                "returning MLflow's ModelInfo. Sweep model: xgboost meanwhile.")
        return _Backend(
            trial=module.tune_trial, log_model=module.log_tuned_model, rounds_key="torch.epochs",
            rounds=lambda c: c.torch.epochs,
            metrics=lambda c: list(final_metric_names(c.task or "binary").values()),
            base_params=lambda c: {f"torch.{k}": v for k, v in c.torch.model_dump().items()})
    raise ConfigError(f"model '{model}' cannot be swept; models: xgboost, torch.")


# ------------------------------------------------------------------------- Tune pieces
def _check_args(num_samples, max_concurrent, scheduler, mode, reduction_factor, grace) -> None:
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise ConfigError(f"max_concurrent must be a positive integer or None, got "
                          f"{max_concurrent!r}.")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler '{scheduler}' is unknown; use one of {SCHEDULERS}.")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}.")
    if not reduction_factor > 1:
        raise ConfigError(f"reduction_factor must be more than 1, got {reduction_factor!r}.")
    if grace is not None and (not isinstance(grace, int) or grace < 1):
        raise ConfigError(f"grace_period must be a positive integer, got {grace!r}.")


def _trial_resources(config: TrainConfig):
    """What one trial reserves: ``scaling.resources_per_worker`` (a trial is one process),
    plus a GPU when ``use_gpu``."""
    from ray import tune

    bundle = {"CPU": 1.0, **config.scaling.resources_per_worker}
    if config.scaling.use_gpu:
        bundle.setdefault("GPU", 1.0)
    return tune.PlacementGroupFactory([bundle])


def _resolve_search_alg(search_alg: str | None, space: dict[str, Any]) -> str:
    installed = {name: importlib.util.find_spec(name) is not None for name in ("optuna", "hyperopt")}
    has_grid = any(isinstance(v, dict) and "grid_search" in v for v in space.values())
    if search_alg is None:
        if has_grid:
            return "random"  # only Tune's own generator expands grids
        return next((name for name, ok in installed.items() if ok), "random")
    if search_alg not in SEARCH_ALGS:
        raise ConfigError(f"search_alg '{search_alg}' is unknown; use one of {SEARCH_ALGS} "
                          "(or None: Optuna or HyperOpt if installed, else random).")
    if search_alg != "random" and not installed[search_alg]:
        raise ConfigError(f"search_alg '{search_alg}' needs the {search_alg} package: "
                          f"pip install {search_alg} (or use search_alg='random').")
    if search_alg != "random" and has_grid:
        raise ConfigError(f"search_alg '{search_alg}' cannot expand grid_search keys; use "
                          "choice, or search_alg='random'.")
    return search_alg


def _searcher(name: str, metric: str, mode: str, seed: int | None, max_concurrent: int | None):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if name == "random":
        return BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=seed)
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=_final(metric), mode=mode, seed=seed)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = HyperOptSearch(metric=_final(metric), mode=mode, random_state_seed=seed)
    return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher


def _scheduler(settings: dict[str, Any]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings["scheduler"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=ROUNDS, max_t=settings["max_rounds"],
                         grace_period=settings["grace_period"],
                         reduction_factor=settings["reduction_factor"])


@contextmanager
def _env(**values: str):
    """Set environment variables for the block, then put back what was there."""
    import os

    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
