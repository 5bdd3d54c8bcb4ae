"""Training configuration (pydantic, loadable from YAML).

One ``TrainConfig`` trains either model (``model: xgboost | torch``) on a laptop or a GPU
cluster: only ``scaling`` changes between the two.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    confloat,
    model_validator,
)

from mlplatform.errors import ConfigError
from mlplatform.features.transforms import FEATURE_COLUMNS, LABEL_COLUMN, VOCABULARIES

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


def _default_categorical() -> dict[str, int]:
    """Code columns the torch model embeds -> embedding rows (vocabulary + 1 for unknown, -1)."""
    return {f"{col}_code": len(vocab) + 1 for col, vocab in VOCABULARIES.items()}


class TorchParams(BaseModel):
    """The tabular network (embeddings for categorical codes + an MLP) and its optimiser."""

    model_config = ConfigDict(extra="forbid")

    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [128, 64], min_length=1,
                                            description="Widths of the MLP's hidden layers.")
    embedding_dim: PositiveInt = Field(default=8, description="Embedding width per categorical.")
    categorical: dict[str, PositiveInt] = Field(
        default_factory=_default_categorical,
        description="Integer code columns to embed -> number of embedding rows; code c is row "
        "c + 1 (row 0: unknown, code -1). Other feature columns are standardised numerics.")
    dropout: confloat(ge=0.0, lt=1.0) = Field(default=0.1, description="Dropout after each layer.")
    epochs: PositiveInt = Field(default=8, description="Passes over the training data.")
    batch_size: PositiveInt = Field(default=512, description="Rows per step per worker.")
    learning_rate: PositiveFloat = Field(default=2e-3, description="AdamW learning rate.")
    weight_decay: NonNegativeFloat = Field(default=1e-5, description="AdamW weight decay.")
    amp: bool = Field(default=True, description="bf16 autocast on GPU (no effect on CPU).")
    cache_data: bool = Field(
        default=True, description="Each worker reads its data shard once into tensors on its "
        "device and reshuffles them every epoch (fast: no per-batch ingest); false streams "
        "batches from Ray Data every epoch, for shards larger than a worker's memory.")
    seed: int = Field(default=0, description="Seeds torch, numpy and data order per worker.")


class CheckpointSpec(BaseModel):
    """How often training saves a checkpoint it can resume from."""

    model_config = ConfigDict(extra="forbid")

    frequency: PositiveInt = Field(default=10, description="Boosting rounds (XGBoost) or "
                                   "epochs (torch) between checkpoints.")
    num_to_keep: PositiveInt | None = Field(default=2, description="Checkpoints kept (None: all).")


class FailureSpec(BaseModel):
    """What happens when a training worker dies."""

    model_config = ConfigDict(extra="forbid")

    max_failures: NonNegativeInt = Field(
        default=0, description="Worker-group restarts (from the latest checkpoint) before the "
        "run fails; 0 fails at the first worker failure.")


class CallbackSpec(BaseModel):
    """An XGBoost ``TrainingCallback`` to add on every worker: ``target`` is ``module:factory``
    (a class or function), called with ``kwargs``."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="module:factory")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class FeatureViewsSource(BaseModel):
    """Train straight from the feature store: labelled events joined point-in-time (as of one
    microsecond before each event, as serving sees them) with features of the named views.

    The training set is built on the cluster (Ray Data) under
    ``<storage_root>/training_sets/views-<digest>`` and reused while the events, the features
    and the views' offline versions are unchanged. When every feature the fraud model reads is
    requested, the derived model inputs (``FEATURE_COLUMNS``) are added; the requested view
    features and the event's own fields (amount, country, ...) are always there, so
    ``feature_columns`` may name any of them.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(
        min_length=1, description="Feature references: 'view', 'view:feature' or a feature name.")
    events: Path | None = Field(
        default=None, description="Parquet of labelled events (transaction fields + label). "
        "Default: the feature store's `transactions` source.")
    versions: dict[str, str] = Field(
        default_factory=dict, description="Pin offline versions per view (default: current).")


class TrainConfig(BaseModel):
    """What :func:`mlplatform.training.train_xgboost` trains, on what data, and how."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["xgboost", "torch"] = Field(default="xgboost", description="Which trainer.")
    features_path: Path | None = Field(
        default=None, description="Parquet folder of the training set. Default: "
        "<storage_root>/training_sets/fraud (what build_training_set writes).")
    feature_views: FeatureViewsSource | None = Field(
        default=None, description="Or train from feature views + the label (built and joined "
        "point-in-time by the feature store); excludes features_path.")
    label: str = Field(default=LABEL_COLUMN, description="Binary label column (0/1).")
    feature_columns: list[str] = Field(default_factory=lambda: list(FEATURE_COLUMNS),
                                       min_length=1, description="Model inputs, in order.")
    timestamp_column: str = Field(default="event_timestamp",
                                  description="Time column the train/validation split uses.")
    validation_fraction: confloat(gt=0.0, lt=1.0) = Field(
        default=0.2, description="Last share of the time range held out for validation "
        "(time-based split: train on the past, validate on the future).")
    split_at: datetime | None = Field(
        default=None, description="Explicit train/validation boundary (rows before it train); "
        "overrides validation_fraction.")
    params: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_XGB_PARAMS),
                                   description="XGBoost booster parameters.")
    xgb_callbacks: list[CallbackSpec] = Field(
        default_factory=list, description="Extra XGBoost callbacks run on every worker.")
    torch: TorchParams = Field(default_factory=TorchParams, description="The torch model.")
    num_boost_round: PositiveInt = Field(default=300, description="Maximum boosting rounds.")
    early_stopping_rounds: NonNegativeInt = Field(
        default=20, description="Stop after this many rounds without validation improvement "
        "(0 disables early stopping).")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    experiment_name: str | None = Field(default=None, description="MLflow experiment "
                                        "(default: the platform config's experiment_name).")
    run_name: str | None = Field(default=None, description="MLflow run name.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags.")

    @model_validator(mode="after")
    def _one_data_source(self) -> TrainConfig:
        if self.features_path is not None and self.feature_views is not None:
            raise ValueError("give one data source: features_path (a Parquet training set) or "
                             "feature_views (built from the feature store), not both")
        return self

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
