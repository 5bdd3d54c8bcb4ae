"""The sweep job: what ``jobs/tune.py`` and ``mlp tune`` run, from one YAML file.

    data:   generate synthetic transactions if <storage_root>/raw is empty
    train:  the base mlplatform.training.TrainConfig every trial starts from
    tune:   the arguments of mlplatform.training.sweep

Steps: raw data (if missing) -> contract gate -> feature store -> training set -> Ray Tune
sweep (one MLflow child run per trial) -> the best trial's model logged; the parent run gets
the sweep's cost (:mod:`mlplatform.cluster.cost`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, confloat

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError
from mlplatform.pipelines.train_job import DataSection
from mlplatform.training import TrainConfig


class TuneSection(BaseModel):
    """The arguments of :func:`mlplatform.training.sweep`."""

    model_config = ConfigDict(extra="forbid")
    search_space: dict = Field(min_length=1, description="Dotted TrainConfig key -> sampler.")
    num_samples: PositiveInt = Field(20, description="Trials to run.")
    max_concurrent: PositiveInt | None = Field(None, description="Most trials at once.")
    scheduler: Literal["asha", "fifo"] = "asha"
    search_alg: Literal["optuna", "hyperopt", "random"] | None = Field(
        None, description="Default: Optuna or HyperOpt if installed, else random.")
    metric: str = "val_auc_pr"
    mode: Literal["max", "min"] = "max"
    grace_period: PositiveInt | None = Field(None, description="ASHA: rounds before a stop.")
    reduction_factor: confloat(gt=1) = 3
    seed: int | None = 0


class TuneJobConfig(BaseModel):
    """A sweep job file (jobs/configs/fraud_tune.yaml)."""

    model_config = ConfigDict(extra="forbid")
    data: DataSection = Field(default_factory=DataSection)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneSection

    @classmethod
    def from_yaml(cls, path: str | Path) -> TuneJobConfig:
        """Load and check a job file (search space included) before any data or MLflow work."""
        from mlplatform.training.tuning import check_sweep

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"job config {path} does not exist")
        try:
            job = cls(**(yaml.safe_load(path.read_text()) or {}))
        except (ValidationError, yaml.YAMLError) as exc:
            details = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}"
                                for e in exc.errors()) if isinstance(exc, ValidationError) else exc
            raise ConfigError(f"invalid job config {path}: {details}") from None
        try:
            check_sweep(job.train, **job.tune.model_dump(exclude={"seed"}))
        except ConfigError as exc:
            raise ConfigError(f"invalid job config {path}: {exc}") from None
        return job


def run_tune_job(job: TuneJobConfig, platform: PlatformConfig,
                 echo: Callable[[str], object] = print):
    """Run the sweep on the connected Ray cluster; returns the trials DataFrame (best first,
    ``df.attrs``: parent_run_id, best_trial_id, best_run_id, best_model_uri)."""
    from mlplatform.cluster.cost import record_cost, trials_usage
    from mlplatform.pipelines.spine import build_spine_features, ensure_raw_data
    from mlplatform.training.tuning import sweep

    cfg = job.train
    if cfg.features_path is None:   # feature_views or the default set: views must be built
        ensure_raw_data(platform, job.data.generate_rows, job.data.seed)
        tset = build_spine_features(platform)   # gates the raw data with its contract first
        echo(f"training set: {tset.num_rows:,} rows at {tset.path} "
             f"(feature versions {tset.feature_versions})")
        if cfg.feature_views is None:
            cfg = cfg.model_copy(update={"features_path": tset.path})
    t0 = time.monotonic()
    df = sweep(cfg, platform=platform, seed=job.tune.seed,
               **job.tune.model_dump(exclude={"seed"}))
    s = cfg.scaling
    record_cost(platform, df.attrs["parent_run_id"],
                trials_usage(s.resources_per_worker, s.use_gpu, df["time_s"],
                             time.monotonic() - t0),
                job="tune", model=platform.model_name, echo=echo)
    return df


def summary(df, metric: str) -> list[str]:
    """The lines a job prints at the end: trials table, parent run, best trial and model."""
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        table = df.drop(columns=["error"]).to_string(index=False)
    best = df[df["trial_id"] == df.attrs["best_trial_id"]].iloc[0]
    return [table, f"parent_run_id: {df.attrs['parent_run_id']}",
            f"best_trial: {df.attrs['best_trial_id']} (run {df.attrs['best_run_id']})",
            f"best_{metric}: {best[metric]:.6f}", f"model_uri: {df.attrs['best_model_uri']}"]
