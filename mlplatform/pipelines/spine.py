"""The end-to-end spine as plain functions: data -> features -> train -> register.

The demo, the ``mlp`` CLI, ``jobs/train.py`` and the tests all call these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlplatform.config import PlatformConfig
from mlplatform.datasets import RAW_DIR
from mlplatform.features import FEATURES_DIR
from mlplatform.registry import ModelRegistry, ModelVersion
from mlplatform.training import TrainConfig, TrainResult, train_xgboost


@dataclass(frozen=True)
class SpineResult:
    """Everything one spine run produced."""

    raw_path: Path
    features_path: Path
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


def build_spine_features(config: PlatformConfig) -> Path:
    """Run the Ray Data feature pipeline on the raw data of ``config``; return the output."""
    from mlplatform.features import build_features

    return build_features(config.path(*RAW_DIR), config.path(*FEATURES_DIR)).path


def register_model(config: PlatformConfig, result: TrainResult, name: str | None = None,
                   alias: str | None = "champion") -> ModelVersion:
    """Register a training result's model, tag it with its metrics, and set ``alias``."""
    tags = {**{f"metric.{k}": f"{v:.6f}" for k, v in result.metrics.items()},
            "run_id": result.run_id}
    return ModelRegistry(config).register(
        result.model_uri, name or config.model_name,
        description="XGBoost fraud model trained by the mlplatform spine", tags=tags, alias=alias)


def run_spine(
    config: PlatformConfig,
    n_rows: int = 100_000,
    seed: int = 0,
    train_config: TrainConfig | None = None,
    alias: str | None = "champion",
    on_step: Callable[[str], None] | None = None,
) -> SpineResult:
    """Generate data, build features, train with Ray Train, register and alias the model.

    Args:
        config: Platform config (storage, MLflow, Ray).
        n_rows: Transactions to generate.
        seed: Data seed.
        train_config: Training settings (default ``TrainConfig()`` on the spine's features).
        alias: Alias to point at the new version (None: register only).
        on_step: Called with a human-readable label before each step (progress display).
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
    feats = timed("features", "Building features with Ray Data", lambda: build_spine_features(config))
    tc = train_config or TrainConfig()
    if tc.features_path is None:
        tc = tc.model_copy(update={"features_path": feats})
    result = timed("train", f"Training XGBoost on Ray Train ({tc.scaling.num_workers} workers)",
                   lambda: train_xgboost(tc, config))
    mv = timed("register", f"Registering '{config.model_name}' and setting @{alias}",
               lambda: register_model(config, result, alias=alias))
    return SpineResult(raw, feats, result, mv, timings)
