"""What every trainer shares: the training set read with Ray Data and split by time (past ->
train, future -> validation), the checks run before a fit, and the Ray Train run settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mlplatform._ray import read_parquet, with_shuffle
from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError, DataValidationError, TrainingError
from mlplatform.training.config import ScalingSpec, TrainConfig


def training_data(config: TrainConfig, platform: PlatformConfig, project=None) -> Path:
    """The Parquet training set a config trains on.

    ``features_path`` as given; with ``feature_views``, a training set the feature store builds
    (point-in-time join on the cluster) into ``<storage_root>/training_sets/views-<digest>``,
    reused while the events, features and the views' offline versions are unchanged; otherwise
    the project's training set, ``<storage_root>/training_sets/<project>``.

    Args:
        project: The project (default: the platform config's, else ``./mlplatform.yaml``);
            only read when ``features_path`` is not given.

    Raises:
        ConfigError: A feature reference or a pinned view is unknown, or a view is not built.
    """
    import hashlib
    import json

    from mlplatform.features.training_set import (
        TRAINING_SET_MANIFEST,
        build_training_set,
        training_set_dir,
    )

    if config.features_path is not None:
        return Path(config.features_path)
    from mlplatform.project import load_project

    project = load_project(project if project is not None else platform.project)
    source = config.feature_views
    if source is None:
        return training_set_dir(platform, project)
    from mlplatform.features import FeatureStore
    from mlplatform.features.offline import FeatureStoreError

    store = FeatureStore(platform, project)
    features = [*project.features, *source.features]
    try:
        current = store.feature_versions(features)
    except KeyError as exc:
        raise ConfigError(f"feature_views.features: {exc.args[0]}") from None
    except FeatureStoreError as exc:
        raise ConfigError(f"feature_views: {exc} (build the views first: `mlp features build`)"
                          ) from None
    events = Path(source.events) if source.events else store.source_path(project.data.events)
    if not events.exists():
        raise DataValidationError(f"feature_views.events {events} does not exist; point it at "
                                  "a Parquet file or folder of labelled events.")
    stamp = {"project": project.name, "features": features,
             "versions": {**current, **source.versions},
             "events": str(events.resolve()), "events_mtime": events.stat().st_mtime_ns}
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
    out = platform.path("training_sets", f"views-{digest}")
    if (out / TRAINING_SET_MANIFEST).is_file():
        return out      # same inputs, same rows: nothing to rebuild
    try:
        build_training_set(project, store, events=str(events), out=out,
                           features=source.features, versions=source.versions)
    except (KeyError, FeatureStoreError) as exc:
        raise ConfigError(f"feature_views: {exc.args[0]}") from None
    return out


def prepare(config: TrainConfig, platform: PlatformConfig, project=None
            ) -> tuple[TrainConfig, Path]:
    """The training set a config trains on, and the config with what the training set's
    project declares filled in (:meth:`TrainConfig.resolved`)."""
    from mlplatform.features.training_set import read_training_set_manifest

    path = training_data(config, platform, project)
    return config.resolved(read_training_set_manifest(path)), path


def time_split(features_path: Path, config: TrainConfig):
    """Split the training set: by time when the config has a time column (rows before the
    cutoff train, rows at/after it validate), else at random on the rows' ``_split_u``.

    The time cutoff is ``config.split_at``, else the point ``validation_fraction`` from the end
    of the time range. Every split must hold rows (and, for a classifier, more than one class).

    Returns the two Ray Datasets and the split boundaries (logged as params).
    """
    from mlplatform.features.training_set import SPLIT_COLUMN

    if not features_path.exists():
        raise DataValidationError(
            f"training set {features_path} does not exist; build it first "
            "(mlplatform.features.build_training_set, `mlp train` or `mlp demo`).")
    schema = pq.ParquetDataset(str(features_path)).schema
    by_time = config.timestamp_column is not None
    split_col = config.timestamp_column if by_time else SPLIT_COLUMN
    needed = [*config.feature_columns, config.label, split_col]
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise DataValidationError(
            f"features {features_path} lack column(s) {missing} named in the training config; "
            f"available: {schema.names}.")
    from ray.data.aggregate import Count, Max, Min, Sum

    # The split's aggregates shuffle with tasks, not Ray 2.60's default aggregator actors
    # (mlplatform._ray.DEFAULT_SHUFFLE; the first aggregate of a job: ~1.9 s vs ~4 s).
    ds = with_shuffle(read_parquet(str(features_path), columns=needed).materialize())
    cols = [*config.feature_columns, config.label]
    if by_time:
        bounds = ds.aggregate(Min(split_col), Max(split_col))
        ts_min = _utc(bounds[f"min({split_col})"])
        ts_max = _utc(bounds[f"max({split_col})"])
        if config.split_at is not None:
            cutoff = _utc(config.split_at)
        else:
            cutoff = ts_min + (ts_max - ts_min) * (1.0 - config.validation_fraction)
        split = {"split": "time", "split_cutoff": str(cutoff), "split_min": str(ts_min),
                 "split_max": str(ts_max)}

        def before_cutoff(batch: pd.DataFrame) -> pd.Series:
            return pd.to_datetime(batch[split_col], utc=True) < cutoff
    else:
        u_cut = 1.0 - config.validation_fraction
        split = {"split": "random", "split_u_cutoff": u_cut}

        def before_cutoff(batch: pd.DataFrame) -> pd.Series:
            return batch[split_col] < u_cut

    def side(before: bool):
        def keep(batch: pd.DataFrame) -> pd.DataFrame:
            mask = before_cutoff(batch)
            return batch.loc[mask if before else ~mask, cols]
        return ds.map_batches(keep, batch_format="pandas").materialize()

    train_ds, valid_ds = side(True), side(False)
    for name, part in (("train", train_ds), ("validation", valid_ds)):
        # Train's split coordinator re-prints progress bars per worker; the driver showed them.
        part.context.enable_progress_bars = False
        if config.task == "binary":
            stats = part.aggregate(Count(), Sum(config.label))
            total = int(stats["count()"])
            positives = int(stats[f"sum({config.label})"] or 0)
            ok, what = 0 < positives < total, f"of which {positives} are positive"
        elif config.task == "multiclass":
            total = int(part.aggregate(Count())["count()"])
            seen = part.unique(config.label)
            ok, what = len(seen) > 1, f"with classes {sorted(seen)}"
        else:
            total = int(part.aggregate(Count())["count()"])
            ok, what = total > 1, "rows"
        if not ok:
            raise DataValidationError(
                f"the {name} split of {features_path} ({split}) has {total} rows {what}; it "
                "needs more than one class (regression: more than one row). Use more data or "
                "change validation_fraction.")
        split[f"{name}_rows"] = total
    return train_ds, valid_ds, split


def holdout_rows(features_path: str | Path, params: dict) -> pd.DataFrame:
    """The validation rows of a training run (its params: the time split's ``split_cutoff``,
    or the random split's ``split_u_cutoff``), read back from its training set.

    Raises:
        DataValidationError: The params name no split.
    """
    from mlplatform.features.training_set import SPLIT_COLUMN, read_training_set_manifest

    if params.get("split_u_cutoff") is not None:
        flt = [(SPLIT_COLUMN, ">=", float(params["split_u_cutoff"]))]
    elif params.get("split_cutoff"):
        column = read_training_set_manifest(features_path).get("timestamp") or "event_timestamp"
        flt = [(column, ">=", pd.Timestamp(params["split_cutoff"]))]
    else:
        raise DataValidationError(f"the run of {features_path} logged no split (split_cutoff or "
                                  "split_u_cutoff): no holdout to take")
    return pq.read_table(str(features_path), filters=flt).to_pandas()


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def check_scaling(scaling: ScalingSpec) -> None:
    """Fail fast when the workers can never be placed on this cluster (fixed size, no autoscaler).

    A cluster with an autoscaler may grow, so only a fixed cluster is checked: a Ray Train run
    that asks for more than the cluster holds would otherwise wait forever.
    """
    import ray

    per_worker = dict(scaling.resources_per_worker)
    if scaling.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    if _has_autoscaler():
        return
    total = ray.cluster_resources()
    short = {r: (need * scaling.num_workers, total.get(r, 0.0)) for r, need in per_worker.items()
             if need * scaling.num_workers > total.get(r, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{r}: needs {n:g}, cluster has {h:g}" for r, (n, h) in short.items())
        raise ConfigError(
            f"scaling asks for {scaling.num_workers} workers x {per_worker}, more than this Ray "
            f"cluster can ever hold ({detail}). Lower scaling.num_workers or "
            "scaling.resources_per_worker, or add nodes.")


def _has_autoscaler() -> bool:
    """Whether the cluster may grow: ``MLP_CLUSTER_AUTOSCALES=1`` (set on the head by the
    cluster YAMLs in cluster/) or Ray's fake multinode provider (``RAY_FAKE_CLUSTER=1``)."""
    import os

    return "1" in (os.environ.get("MLP_CLUSTER_AUTOSCALES"), os.environ.get("RAY_FAKE_CLUSTER"))


def train_run_config(config: TrainConfig, platform: PlatformConfig, trainer: str):
    """Ray Train ``RunConfig``: a fresh run folder (Train v2 resumes any run folder it finds
    again, so a reused name would continue an old run), checkpoints kept, failure retries."""
    import time
    import uuid

    import ray.train

    name = f"{config.run_name or trainer}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return ray.train.RunConfig(
        name=name, storage_path=platform.train_storage_path(),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.num_to_keep),
        failure_config=ray.train.FailureConfig(max_failures=config.failure.max_failures))


def fit(trainer, config: TrainConfig):
    """``trainer.fit()``; a failed run raises :class:`TrainingError` naming the cause and the
    failure budget. Returns the Result, which has a checkpoint."""
    _without_placement_group_cleaner(trainer)
    try:
        result = trainer.fit()
    except Exception as exc:   # Ray Train's TrainingFailedError and worker errors
        raise TrainingError(
            f"training failed ({type(exc).__name__}: {str(exc).strip()[:1500]}) with "
            f"failure.max_failures={config.failure.max_failures}: a worker died or raised. "
            "Raise failure.max_failures to restart from the latest checkpoint, or see the "
            "worker logs above.") from exc
    if result.checkpoint is None:
        raise TrainingError(f"Ray Train finished without a checkpoint (error: {result.error}); "
                            "see the worker logs above.")
    return result


def _without_placement_group_cleaner(trainer) -> None:
    """Drop Ray Train 2.60's ``PlacementGroupCleanerCallback`` from this trainer.

    Its detached cleaner polls the controller through the state API and reads a missing answer
    (``get_actor`` -> None, which a busy dashboard gives) as "controller dead", then removes the
    placement group of a live run: the workers die with "Destroying worker since its placement
    group was removed" (seen on a loaded 2-core machine, about one run in ten). Without it, a
    controller that dies ungracefully leaves its placement group until the driver's job ends,
    when Ray removes it. If Ray's internals change, the trainer is left as it is.
    """
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )
    except ImportError:
        return
    make = getattr(trainer, "_create_default_callbacks", None)
    if make is None:
        return

    def callbacks():
        return [c for c in make() if not isinstance(c, PlacementGroupCleanerCallback)]

    trainer._create_default_callbacks = callbacks
