"""The sweep job: what ``jobs/tune.py`` and ``mlp tune`` run, for one model of a project.

The model's ``train`` section is the base every trial starts from; its ``tune`` section holds
the arguments of :func:`mlplatform.training.sweep` (:class:`TuneSection`).

Steps: example data (if missing) -> contract gate -> feature store -> training set -> Ray Tune
sweep (one MLflow child run per trial) -> the best trial's model logged; the parent run gets
the sweep's cost (:mod:`mlplatform.cluster.cost`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, confloat

from mlplatform.config import PlatformConfig
from mlplatform.errors import ProjectError, config_error
from mlplatform.pipelines import steps
from mlplatform.project import Project
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

    @classmethod
    def load(cls, data: dict, where: str, prefix: str = "") -> TuneSection:
        """Validate a mapping; errors name ``where`` and every bad key (under ``prefix``)."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise config_error(where, exc, cls, prefix, cls=ProjectError) from None


def check_tune(config: TrainConfig, tune: TuneSection) -> None:
    """Check a sweep (search space, metric, scheduler) against its base config, before any data
    or MLflow work.

    Raises:
        ConfigError: Naming what is wrong.
    """
    from mlplatform.training.tuning import check_sweep

    check_sweep(config, **tune.model_dump(exclude={"seed"}))


def tune_section(project: Project, model: str | None = None) -> TuneSection:
    """The ``tune`` section of the project's model ``model``.

    Raises:
        ProjectError: The model has none, or it is invalid.
    """
    name = model or project.default_model
    spec = project.model(name)
    if spec.tune is None:
        raise ProjectError(f"project file {project.file}: models.{name} has no `tune` section "
                           "to sweep with; add one (search_space, num_samples, metric, mode)")
    return TuneSection.load(spec.tune, f"project file {project.file}",
                            prefix=f"models.{name}.tune.")


def run_tune_job(project: Project, platform: PlatformConfig, model: str | None = None,
                 echo: Callable[[str], object] = print):
    """Sweep the project's model ``model`` on the connected Ray cluster; returns the trials
    DataFrame (best first, ``df.attrs``: parent_run_id, best_trial_id, best_run_id,
    best_model_uri)."""
    from mlplatform.cluster.cost import record_cost, trials_usage
    from mlplatform.training.tuning import sweep

    cfg = steps.train_config(project, model)
    tune = tune_section(project, model)
    if cfg.features_path is None:   # feature_views or the default set: views must be built
        steps.ensure_data(platform, project, echo=echo)
        tset = steps.build_features(platform, project)  # gates the data with its contract first
        echo(f"training set: {tset.num_rows:,} rows at {tset.path}")
        if cfg.feature_views is None:
            cfg = cfg.model_copy(update={"features_path": tset.path})
    t0 = time.monotonic()
    df = sweep(cfg, platform=platform, seed=tune.seed, **tune.model_dump(exclude={"seed"}))
    s = cfg.scaling
    record_cost(platform, df.attrs["parent_run_id"],
                trials_usage(s.resources_per_worker, s.use_gpu, df["time_s"],
                             time.monotonic() - t0),
                job="tune", model=steps.register_spec(project, model)[0], echo=echo)
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
