"""The end-to-end spine as plain functions: data -> feature store -> train -> register.

Features come from the feature store: the views are built offline with Ray Data (the source is
gated by its data contract first), materialized to the online store for serving, and the
training set is a point-in-time join of the labelled events.

The demo, the ``mlp`` CLI, ``jobs/train.py`` and the tests all call these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlplatform.config import PlatformConfig
from mlplatform.datasets import RAW_DIR
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.training import TrainConfig, TrainResult, train_xgboost


@dataclass(frozen=True)
class SpineResult:
    """Everything one spine run produced."""

    raw_path: Path
    features_path: Path          # the training set (model inputs + label)
    feature_versions: dict[str, str]
    train: TrainResult
    model_version: ModelVersion
    timings_s: dict[str, float]


def generate_data(config: PlatformConfig, n_rows: int, seed: int = 0, **kwargs) -> Path:
    """Generate ``n_rows`` transactions and write them as Parquet under ``storage_root``.

    Extra keyword arguments go to :func:`mlplatform.datasets.make_transactions`.
    """
    from mlplatform.datasets import make_transactions, save_transactions

    config.ensure_dirs()
    df = make_transactions(n_rows, seed=seed, **kwargs)
    return save_transactions(df, config.path(*RAW_DIR))


def ensure_raw_data(config: PlatformConfig, n_rows: int, seed: int = 0) -> Path:
    """Generate ``n_rows`` transactions unless ``<storage_root>/raw`` already holds Parquet.

    ``n_rows=0`` never generates (the data must be there). Returns the raw data folder.
    """
    raw = config.path(*RAW_DIR)
    if n_rows and (not raw.exists() or not any(raw.glob("*.parquet"))):
        print(f"no raw data under {raw}: generating {n_rows:,} transactions")
        generate_data(config, n_rows, seed)
    return raw


def build_spine_features(config: PlatformConfig, online_until=None):
    """Build every feature view, materialize it online, and write the training set.

    Args:
        config: Platform config.
        online_until: Materialize rows before this time only (default: all), e.g. to replay
            the later transactions as live traffic, as the demo does.

    Returns:
        The :class:`~mlplatform.features.TrainingSet` (path, rows, feature versions).

    Raises:
        DataValidationError: The raw data fails its contract (nothing is built or logged).
    """
    from mlplatform.features import FeatureStore, build_training_set

    store = FeatureStore(config)
    store.validate_source()               # the gate: bad data stops here, before any MLflow run
    store.build(validate=False)
    store.materialize_incremental(end=online_until)
    return build_training_set(store)


def register_model(config: PlatformConfig, result: TrainResult, name: str | None = None,
                   alias: str | None = "champion",
                   feature_versions: dict[str, str] | None = None) -> ModelVersion:
    """Register a training result's model, tag it with its metrics and feature versions, and
    set ``alias``."""
    tags = {**{f"metric.{k}": f"{v:.6f}" for k, v in result.metrics.items()},
            **{f"feature_version.{k}": v for k, v in (feature_versions or {}).items()},
            "run_id": result.run_id}
    return ModelRegistry(config).register(
        result.model_uri, name or config.model_name,
        description=f"fraud model trained by mlplatform (MLflow run {result.run_id})", tags=tags,
        alias=alias)


def run_spine(
    config: PlatformConfig,
    n_rows: int = 100_000,
    seed: int = 0,
    train_config: TrainConfig | None = None,
    alias: str | None = "champion",
    on_step: Callable[[str], None] | None = None,
    online_until=None,
) -> SpineResult:
    """Generate data, build features, train with Ray Train, register and alias the model.

    Args:
        config: Platform config (storage, MLflow, Ray).
        n_rows: Transactions to generate.
        seed: Data seed.
        train_config: Training settings (default ``TrainConfig()`` on the spine's features).
        alias: Alias to point at the new version (None: register only).
        on_step: Called with a human-readable label before each step (progress display).
        online_until: Materialize the online store up to this time only (default: all).
    """
    step = on_step or (lambda _label: None)
    timings: dict[str, float] = {}

    def timed(name: str, label: str, fn):
        step(label)
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    raw = timed("generate", f"Generating {n_rows:,} transactions (seed {seed})",
                lambda: generate_data(config, n_rows, seed))
    tset = timed("features", "Building the feature store with Ray Data (offline, online, "
                 "training set)", lambda: build_spine_features(config, online_until))
    tc = train_config or TrainConfig()
    if tc.features_path is None:
        tc = tc.model_copy(update={"features_path": tset.path})
    result = timed("train", f"Training XGBoost on Ray Train ({tc.scaling.num_workers} workers)",
                   lambda: train_xgboost(tc, config))
    mv = timed("register", f"Registering '{config.model_name}' and setting @{alias}",
               lambda: register_model(config, result, alias=alias,
                                          feature_versions=tset.feature_versions))
    return SpineResult(raw, tset.path, tset.feature_versions, result, mv, timings)
