"""The training job: what ``jobs/train.py`` and ``mlp train`` run, for one model of a project.

Steps: example data (if the project writes some and none is there) -> data contract gate ->
feature store (feature-store projects) -> training set (the project's model inputs) -> Ray
Train -> MLflow run (with the whole job's cost, :mod:`mlplatform.cluster.cost`: the Ray tasks
of the steps before training plus the training's reservation, GPUs by the type the workers ran
on) -> registry (the model's ``register`` name and alias). Failing data stops at the gate: no
MLflow run, no model.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mlplatform.config import PlatformConfig
from mlplatform.pipelines import steps
from mlplatform.project import Project

#: Where the state API cannot list the feature build's tasks, it is costed as this many CPUs
#: (at most the cluster's) for its wall time: FeatureStore.build's default bucket count.
_PREP_PARALLELISM = 64


def run_train_job(project: Project, platform: PlatformConfig, model: str | None = None,
                  echo: Callable[[str], object] = print):
    """Train the project's model ``model`` (default: its first) on the connected Ray cluster;
    returns the TrainResult and the registered ModelVersion."""
    from mlplatform.cluster.cost import data_usage, record_cost
    from mlplatform.cluster.job_usage import TrainingMeter, combine
    from mlplatform.features.training_set import read_training_set_manifest
    from mlplatform.pipelines.spine import register_model
    from mlplatform.training import train
    from mlplatform.training.data import training_data

    started = time.time()    # the job's cost covers every step, not only train()
    cfg = steps.train_config(project, model)
    name, alias = steps.register_spec(project, model)
    steps.ensure_data(platform, project, echo=echo)
    tset = steps.build_features(platform, project)   # gates the data with its contract first
    echo(f"training set: {tset.num_rows:,} rows at {tset.path}"
         + (f" (feature versions {tset.feature_versions})" if tset.feature_versions else ""))
    versions = tset.feature_versions
    if cfg.feature_views is not None:
        path = training_data(cfg, platform, project)   # built once here; train() finds it again
        versions = read_training_set_manifest(path)["feature_versions"]
        echo(f"training set with feature views {cfg.feature_views.features}: {path} "
             f"(feature versions {versions})")
    elif cfg.features_path is None:
        cfg = cfg.model_copy(update={"features_path": tset.path})
    echo(f"training {cfg.model} ({cfg.task}) on {cfg.scaling.num_workers} worker(s)"
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
                job="train", model=name, echo=echo)
    mv = register_model(platform, result, name, alias=alias, feature_versions=versions)
    return result, mv
