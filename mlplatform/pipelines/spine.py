"""The end-to-end spine as plain functions: data -> features -> train -> register, for any
project.

For a feature-store project the views are built offline with Ray Data (the source is gated by
its data contract first), materialized to the online store for serving, and the training set is
a point-in-time join of the labelled events; a tabular project's training set is its table. The
model inputs come from the project's own transformation either way.

The demo, the ``mlp`` CLI, ``jobs/train.py`` and the tests all call these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlplatform.config import PlatformConfig
from mlplatform.pipelines import steps
from mlplatform.project import Project
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.training import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class SpineResult:
    """Everything one spine run produced."""

    project: Project
    raw_path: Path
    features_path: Path          # the training set (request fields, features, inputs, label)
    feature_versions: dict[str, str]
    train: TrainResult
    model_version: ModelVersion
    timings_s: dict[str, float]


def register_model(config: PlatformConfig, result: TrainResult, name: str,
                   alias: str | None = None, feature_versions: dict[str, str] | None = None,
                   description: str | None = None) -> ModelVersion:
    """Register a training result's model, tag it with its metrics and feature versions, and
    set ``alias``."""
    tags = {**{f"metric.{k}": f"{v:.6f}" for k, v in result.metrics.items()},
            **{f"feature_version.{k}": v for k, v in (feature_versions or {}).items()},
            "run_id": result.run_id}
    return ModelRegistry(config).register(
        result.model_uri, name,
        description=description or f"trained by mlplatform (MLflow run {result.run_id})",
        tags=tags, alias=alias)


def run_spine(
    config: PlatformConfig,
    project: str | Path | Project | None = None,
    n_rows: int | None = None,
    seed: int | None = None,
    model: str | None = None,
    train_config: TrainConfig | None = None,
    alias: str | None = "champion",
    on_step: Callable[[str], None] | None = None,
    online_until=None,
    generate: bool = True,
) -> SpineResult:
    """Write the project's example data, build its features, train, register and alias.

    Args:
        config: Platform config (storage, MLflow, Ray).
        project: The project (default: ``config.project``, else ``./mlplatform.yaml``).
        n_rows, seed: Rows and seed of the example data (default: the project's
            ``data.generate``); the data is written again.
        model: The project's model config (default: its first).
        train_config: Training settings that override the model config's (only the keys set).
        alias: Alias to point at the new version (None: register only).
        on_step: Called with a human-readable label before each step (progress display).
        online_until: Materialize the online store up to this time only (default: all).
        generate: Write the example data first (False: use the data that is there).
    """
    step = on_step or (lambda _label: None)
    timings: dict[str, float] = {}
    project = steps.load(project, config)

    def timed(name: str, label: str, fn):
        step(label)
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    gen = project.data.generate
    rows = n_rows or (gen.rows if gen else 0)
    if generate and gen is not None:
        raw = timed("generate", f"Writing {rows:,} example rows of project '{project.name}'",
                    lambda: steps.ensure_data(config, project, n_rows, seed, force=True,
                                              echo=lambda _line: None))
    else:
        raw = steps.data_path(config, project)
    label = ("Building the feature store with Ray Data (offline, online, training set)"
             if project.uses_feature_store else "Making the training set with Ray Data")
    tset = timed("features", label, lambda: steps.build_features(config, project, online_until))
    overrides = train_config.model_dump(exclude_unset=True) if train_config else {}
    tc = steps.train_config(project, model, **overrides)
    if tc.features_path is None:
        tc = tc.model_copy(update={"features_path": tset.path})
    result = timed("train", f"Training {tc.model} on Ray Train ({tc.scaling.num_workers} "
                   "workers)", lambda: train(tc, config))
    name, _ = steps.register_spec(project, model)
    mv = timed("register", f"Registering '{name}'" + (f" and setting @{alias}" if alias else ""),
               lambda: register_model(config, result, name, alias=alias,
                                      feature_versions=tset.feature_versions))
    return SpineResult(project, raw, tset.path, tset.feature_versions, result, mv, timings)
