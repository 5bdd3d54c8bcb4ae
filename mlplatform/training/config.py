"""Training configuration (pydantic, loadable from YAML). Issue #4 extends it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    confloat,
)

from mlplatform.errors import ConfigError
from mlplatform.features.transforms import FEATURE_COLUMNS, LABEL_COLUMN

DEFAULT_XGB_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": ["logloss", "auc", "aucpr"],
    "tree_method": "hist",
    "max_depth": 6,
    "eta": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "seed": 0,
}


class ScalingSpec(BaseModel):
    """How many Ray Train workers, and what each gets. The only section a GPU cluster changes."""

    model_config = ConfigDict(extra="forbid")

    num_workers: PositiveInt = Field(default=2, description="Ray Train worker processes.")
    use_gpu: bool = Field(default=False, description="Give each worker one GPU (device=cuda).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Ray resources each worker reserves, e.g. {CPU: 4, GPU: 1}.")


class TrainConfig(BaseModel):
    """What :func:`mlplatform.training.train_xgboost` trains, on what data, and how."""

    model_config = ConfigDict(extra="forbid")

    features_path: Path | None = Field(
        default=None, description="Parquet folder of the training set. Default: "
        "<storage_root>/training_sets/fraud (what build_training_set writes).")
    label: str = Field(default=LABEL_COLUMN, description="Binary label column (0/1).")
    feature_columns: list[str] = Field(default_factory=lambda: list(FEATURE_COLUMNS),
                                       min_length=1, description="Model inputs, in order.")
    timestamp_column: str = Field(default="event_timestamp",
                                  description="Time column the train/validation split uses.")
    validation_fraction: confloat(gt=0.0, lt=1.0) = Field(
        default=0.2, description="Last share of the time range held out for validation "
        "(time-based split: train on the past, validate on the future).")
    params: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_XGB_PARAMS),
                                   description="XGBoost booster parameters.")
    num_boost_round: PositiveInt = Field(default=300, description="Maximum boosting rounds.")
    early_stopping_rounds: NonNegativeInt = Field(
        default=20, description="Stop after this many rounds without validation improvement "
        "(0 disables early stopping).")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    run_name: str | None = Field(default=None, description="MLflow run name.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load from a YAML file; errors name the key and the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        try:
            return cls(**data)
        except ValidationError as exc:
            details = "; ".join(
                f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid training config {path}: {details}. "
                              f"Allowed keys: {', '.join(cls.model_fields)}.") from None
