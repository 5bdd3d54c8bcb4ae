"""Ray job entrypoint: data (if missing) -> contract gate -> feature store -> training set ->
Ray Train XGBoost -> MLflow -> registry.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/fraud_xgb.yaml

Prints the MLflow run id and model URI at the end; exits non-zero with a clear message on failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generate_rows: PositiveInt = Field(100_000, description="Rows to generate if no raw data.")
    seed: int = 0


class RegisterSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Registered model (default: config.model_name).")
    alias: str | None = "champion"


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: DataSection = Field(default_factory=DataSection)
    train: dict = Field(default_factory=dict, description="mlplatform.training.TrainConfig fields.")
    register: RegisterSection = Field(default_factory=RegisterSection)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="job YAML (jobs/configs/*.yaml)")
    parser.add_argument("--platform-config", type=Path, default=None,
                        help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults)")
    args = parser.parse_args(argv)

    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines import build_spine_features, ensure_raw_data, register_model
    from mlplatform.training import TrainConfig, train_xgboost

    try:
        job = JobConfig(**(yaml.safe_load(args.config.read_text()) or {}))
        train_cfg = TrainConfig(**job.train)
        platform = PlatformConfig.load(args.platform_config)
    except (OSError, ValidationError, MLPlatformError) as exc:
        print(f"error: invalid job config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        init_ray(platform)
        ensure_raw_data(platform, job.data.generate_rows, job.data.seed)
        # Gates the raw data with its contract first: failing data makes no MLflow run.
        tset = build_spine_features(platform)
        print(f"training set: {tset.num_rows:,} rows at {tset.path} "
              f"(feature versions {tset.feature_versions})")
        if train_cfg.features_path is None:
            train_cfg = train_cfg.model_copy(update={"features_path": tset.path})
        result = train_xgboost(train_cfg, platform)
        mv = register_model(platform, result, name=job.register.name, alias=job.register.alias,
                            feature_versions=tset.feature_versions)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"metrics: {result.metrics}")
    print(f"run_id: {result.run_id}")
    print(f"model_uri: {result.model_uri}")
    print(f"registered: models:/{mv.name}/{mv.version}"
          + (f" (alias @{job.register.alias})" if job.register.alias else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
