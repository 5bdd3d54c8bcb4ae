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


def training_data(config: TrainConfig, platform: PlatformConfig) -> Path:
    """The Parquet training set a config trains on.

    ``features_path`` as given; with ``feature_views``, a training set the feature store builds
    (point-in-time join on the cluster) into ``<storage_root>/training_sets/views-<digest>``,
    reused while the events, features and the views' offline versions are unchanged; otherwise
    ``<storage_root>/training_sets/fraud``.

    Raises:
        ConfigError: A feature reference or a pinned view is unknown, or a view is not built.
    """
    import hashlib
    import json

    from mlplatform.features.training_set import (
        TRAINING_SET_DIR,
        TRAINING_SET_MANIFEST,
        build_training_set,
    )

    source = config.feature_views
    if source is None:
        return Path(config.features_path or platform.path(*TRAINING_SET_DIR))
    from mlplatform.features import FeatureStore
    from mlplatform.features.offline import FeatureStoreError

    store = FeatureStore(platform)
    try:
        current = store.feature_versions(source.features)
    except KeyError as exc:
        raise ConfigError(f"feature_views.features: {exc.args[0]}") from None
    except FeatureStoreError as exc:
        raise ConfigError(f"feature_views: {exc} (build the views first: `mlp features build`)"
                          ) from None
    events = Path(source.events) if source.events else store.source_path("transactions")
    if not events.exists():
        raise DataValidationError(f"feature_views.events {events} does not exist; point it at "
                                  "a Parquet file or folder of labelled transactions.")
    stamp = {"features": source.features, "versions": {**current, **source.versions},
             "events": str(events.resolve()), "events_mtime": events.stat().st_mtime_ns}
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
    out = platform.path("training_sets", f"views-{digest}")
    if (out / TRAINING_SET_MANIFEST).is_file():
        return out      # same inputs, same rows: nothing to rebuild
    try:
        build_training_set(store, events=str(events), out=out, features=source.features,
                           versions=source.versions)
    except (KeyError, FeatureStoreError) as exc:
        raise ConfigError(f"feature_views: {exc.args[0]}") from None
    return out


def time_split(features_path: Path, config: TrainConfig):
    """Split by time: rows before the cutoff train, rows at/after it validate.

    The cutoff is ``config.split_at``, else the point ``validation_fraction`` from the end of
    the time range.

    Returns the two Ray Datasets and the split boundaries (logged as params).
    """

    if not features_path.exists():
        raise DataValidationError(
            f"training set {features_path} does not exist; build it first "
            "(mlplatform.features.build_training_set, `mlp features training-set` or `mlp demo`).")
    schema = pq.ParquetDataset(str(features_path)).schema
    needed = [*config.feature_columns, config.label, config.timestamp_column]
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise DataValidationError(
            f"features {features_path} lack column(s) {missing} named in the training config; "
            f"available: {schema.names}.")
    from ray.data.aggregate import Count, Max, Min, Sum

    # The split's aggregates shuffle with tasks, not Ray 2.60's default aggregator actors
    # (mlplatform._ray.DEFAULT_SHUFFLE; the first aggregate of a job: ~1.9 s vs ~4 s).
    ds = with_shuffle(read_parquet(str(features_path), columns=needed).materialize())
    bounds = ds.aggregate(Min(config.timestamp_column), Max(config.timestamp_column))
    ts_min = _utc(bounds[f"min({config.timestamp_column})"])
    ts_max = _utc(bounds[f"max({config.timestamp_column})"])
    if config.split_at is not None:
        cutoff = _utc(config.split_at)
    else:
        cutoff = ts_min + (ts_max - ts_min) * (1.0 - config.validation_fraction)
    cols = [*config.feature_columns, config.label]

    def side(before: bool):
        def keep(batch: pd.DataFrame) -> pd.DataFrame:
            ts = pd.to_datetime(batch[config.timestamp_column], utc=True)
            mask = ts < cutoff if before else ts >= cutoff
            return batch.loc[mask, cols]
        return ds.map_batches(keep, batch_format="pandas").materialize()

    train_ds, valid_ds = side(True), side(False)
    rows = {}
    for name, part in (("train", train_ds), ("validation", valid_ds)):
        # Train's split coordinator re-prints progress bars per worker; the driver showed them.
        part.context.enable_progress_bars = False
        stats = part.aggregate(Count(), Sum(config.label))
        total, positives = int(stats["count()"]), int(stats[f"sum({config.label})"] or 0)
        if not 0 < positives < total:
            raise DataValidationError(
                f"the {name} split of {features_path} (cutoff {cutoff}) has {total} rows of which "
                f"{positives} are positive; it needs both classes. Use more data or change "
                "validation_fraction.")
        rows[f"{name}_rows"] = total
    split = {"split_cutoff": str(cutoff), "split_min": str(ts_min), "split_max": str(ts_max),
             **rows}
    return train_ds, valid_ds, split


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
