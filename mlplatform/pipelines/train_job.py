"""The training job: what ``jobs/train.py`` and ``mlp train`` run, from one YAML file.

    data:      generate synthetic transactions if <storage_root>/raw is empty
    train:     mlplatform.training.TrainConfig (model: xgboost | torch; only `scaling`
               changes for a GPU cluster)
    register:  registered model name and alias

Steps: raw data (if missing) -> contract gate -> feature store -> training set -> Ray Train ->
MLflow run (with the whole job's cost, :mod:`mlplatform.cluster.cost`: the Ray tasks of the
steps before training plus the training's reservation, GPUs by the type the workers ran on) ->
registry. Failing data stops at the gate: no MLflow run, no model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError
from mlplatform.training import TrainConfig

#: Where the state API cannot list the feature build's tasks, it is costed as this many CPUs
#: (at most the cluster's) for its wall time: FeatureStore.build's default bucket count.
_PREP_PARALLELISM = 64


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generate_rows: PositiveInt = Field(100_000, description="Rows to generate if no raw data.")
    seed: int = 0


class RegisterSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Registered model (default: config.model_name).")
    alias: str | None = "champion"


class TrainJobConfig(BaseModel):
    """A training job file (jobs/configs/fraud_xgb.yaml, fraud_torch.yaml)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # `register` in the YAML (the name shadows pydantic's BaseModel.register in Python)
    registration: RegisterSection = Field(default_factory=RegisterSection, alias="register")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainJobConfig:
        """Load a job file; errors name the file and every bad key."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"job config {path} does not exist")
        try:
            return cls(**(yaml.safe_load(path.read_text()) or {}))
        except (ValidationError, TypeError) as exc:
            details = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}"
                                for e in exc.errors()) if isinstance(exc, ValidationError) else exc
            raise ConfigError(f"invalid job config {path}: {details}") from None


def run_train_job(job: TrainJobConfig, platform: PlatformConfig,
                  echo: Callable[[str], object] = print):
    """Run the job on the connected Ray cluster; returns the TrainResult and the ModelVersion."""
    from mlplatform.cluster.cost import data_usage, record_cost
    from mlplatform.cluster.job_usage import TrainingMeter, combine
    from mlplatform.features.training_set import read_training_set_manifest
    from mlplatform.pipelines.spine import build_spine_features, ensure_raw_data, register_model
    from mlplatform.training import train
    from mlplatform.training.data import training_data

    started = time.time()    # the job's cost covers every step, not only train()
    ensure_raw_data(platform, job.data.generate_rows, job.data.seed)
    tset = build_spine_features(platform)   # gates the raw data with its contract first
    echo(f"training set: {tset.num_rows:,} rows at {tset.path} "
         f"(feature versions {tset.feature_versions})")
    cfg = job.train
    versions = tset.feature_versions
    if cfg.feature_views is not None:
        path = training_data(cfg, platform)    # built once here; train() finds it again
        versions = read_training_set_manifest(path)["feature_versions"]
        echo(f"training set from feature views {cfg.feature_views.features}: {path} "
             f"(feature versions {versions})")
    elif cfg.features_path is None:
        cfg = cfg.model_copy(update={"features_path": tset.path})
    echo(f"training {cfg.model} on {cfg.scaling.num_workers} worker(s)"
         f"{' with GPUs' if cfg.scaling.use_gpu else ''}")
    s = cfg.scaling
    training_from = time.time()
    with TrainingMeter(s.resources_per_worker, s.num_workers, s.use_gpu) as meter:
        result = train(cfg, platform)
    # The steps before train() (data, contract gate, feature build, training set): the CPU time
    # of their Ray tasks, counted now that their task events have reached the state API.
    prep = data_usage(training_from - started, _PREP_PARALLELISM, since=started,
                      until=training_from)
    record_cost(platform, result.run_id,
                combine({"prep": prep, "train": meter.usage()}, time.time() - started),
                job="train", model=job.registration.name or platform.model_name, echo=echo)
    mv = register_model(platform, result, name=job.registration.name, alias=job.registration.alias,
                        feature_versions=versions)
    return result, mv
