"""Training configuration (pydantic; a project's ``models.<name>.train``).

One ``TrainConfig`` trains either model (``model: xgboost | torch``) on a laptop or a GPU
cluster: only ``scaling`` changes between the two. What the project declares (the task, the
label, the model inputs, the time column) fills the keys left unset, from the training set's
lineage file (:meth:`TrainConfig.resolved`), so a config names only how to train.
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

from mlplatform.errors import ConfigError, config_error

Task = Literal["binary", "multiclass", "regression"]
#: XGBoost's objective and evaluation metrics per task; early stopping watches the last metric.
TASK_XGB_PARAMS: dict[str, dict[str, Any]] = {
    "binary": {"objective": "binary:logistic", "eval_metric": ["logloss", "auc", "aucpr"]},
    "multiclass": {"objective": "multi:softprob", "eval_metric": ["merror", "mlogloss"]},
    "regression": {"objective": "reg:squarederror", "eval_metric": ["mae", "rmse"]},
}
#: The torch trainer's validation metrics per task -> the run's final metric names.
TORCH_FINAL_METRICS: dict[str, dict[str, str]] = {
    "binary": {"validation_auc_pr": "val_auc_pr", "validation_auc_roc": "val_auc_roc",
               "validation_loss": "val_logloss"},
    "multiclass": {"validation_loss": "val_logloss", "validation_accuracy": "val_accuracy"},
    "regression": {"validation_rmse": "val_rmse", "validation_mae": "val_mae"},
}


def final_metric_names(task: str) -> dict[str, str]:
    """The torch trainer's per-epoch validation metric -> final metric name, for ``task``."""
    return TORCH_FINAL_METRICS[task]


#: Booster parameters every task starts from (a config's ``params`` add to and override them).
DEFAULT_XGB_PARAMS: dict[str, Any] = {
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


class TorchParams(BaseModel):
    """The tabular network (embeddings for categorical codes + an MLP) and its optimiser."""

    model_config = ConfigDict(extra="forbid")

    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [128, 64], min_length=1,
                                            description="Widths of the MLP's hidden layers.")
    embedding_dim: PositiveInt = Field(default=8, description="Embedding width per categorical.")
    categorical: dict[str, PositiveInt] | None = Field(
        default=None,
        description="Integer code columns to embed -> number of embedding rows; code c is row "
        "c + 1 (row 0: unknown, code -1). Other feature columns are standardised numerics. "
        "Default: the project's model-input columns that declare `categories` (n + 1 rows).")
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
    and the views' offline versions are unchanged. It holds the project's model inputs, and
    beside them the features named here and the request fields, so ``feature_columns`` may
    name any of them.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(
        default_factory=list, description="Feature references joined beside the project's: "
        "'view', 'view:feature' or a feature name.")
    events: Path | None = Field(
        default=None, description="Parquet of labelled events (request fields + label). "
        "Default: the project's `data.events` source.")
    versions: dict[str, str] = Field(
        default_factory=dict, description="Pin offline versions per view (default: current).")


class TrainConfig(BaseModel):
    """What :func:`mlplatform.training.train` trains, on what data, and how.

    Keys left unset (``task``, ``label``, ``feature_columns``, ``timestamp_column``,
    ``validation_fraction``, ``params``' objective and metrics, ``torch.categorical``) come from
    the training set's project (:meth:`resolved`).
    """

    model_config = ConfigDict(extra="forbid")

    model: Literal["xgboost", "torch"] = Field(default="xgboost", description="Which trainer.")
    features_path: Path | None = Field(
        default=None, description="Parquet folder of the training set. Default: "
        "<storage_root>/training_sets/<project> (what build_training_set writes).")
    feature_views: FeatureViewsSource | None = Field(
        default=None, description="Or train from the project's events joined point-in-time "
        "with extra feature views (built by the feature store); excludes features_path.")
    task: Task | None = Field(default=None, description="binary, multiclass or regression "
                              "(default: the project's).")
    classes: list[Any] | None = Field(default=None, description="Multiclass: the class values "
                                      "in label-index order (default: the project's).")
    label: str | None = Field(default=None, description="Label column (default: the project's; "
                              "0/1 for binary, the class index for multiclass).")
    feature_columns: list[str] | None = Field(
        default=None, min_length=1, description="Model inputs, in order (default: the project's "
        "model_inputs.columns).")
    timestamp_column: str | None = Field(
        default=None, description="Time column the train/validation split uses (default: the "
        "project's data.timestamp; none: a seeded random split).")
    validation_fraction: confloat(gt=0.0, lt=1.0) | None = Field(
        default=None, description="Share held out for validation: the last share of the time "
        "range (train on the past, validate on the future), or of the rows at random without "
        "a time column. Default: the project's data.validation_fraction.")
    split_at: datetime | None = Field(
        default=None, description="Explicit train/validation boundary (rows before it train); "
        "overrides validation_fraction.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="XGBoost booster parameters, over "
                                   "DEFAULT_XGB_PARAMS and the task's objective and metrics.")
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
                                        "(default: the platform config's, else the project's "
                                        "name).")
    run_name: str | None = Field(default=None, description="MLflow run name.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags.")

    def resolved(self, manifest: dict[str, Any]) -> TrainConfig:
        """This config with every unset key taken from a training set's lineage file
        (``_training_set.json``: the project's task, label, inputs and split).

        Raises:
            ConfigError: A key is unset and the training set does not say it either.
        """
        task_spec = manifest.get("task") or {}
        task = self.task or task_spec.get("type") or "binary"
        update: dict[str, Any] = {"task": task}
        if self.classes is None and task == "multiclass":
            update["classes"] = task_spec.get("classes")
        for key, source in (("label", "label"), ("feature_columns", "features"),
                            ("timestamp_column", "timestamp")):
            if getattr(self, key) is None:
                update[key] = manifest.get(source)
        if self.validation_fraction is None:
            update["validation_fraction"] = manifest.get("validation_fraction") or 0.2
        missing = [k for k in ("label", "feature_columns") if not (update.get(k)
                                                                   or getattr(self, k))]
        if missing:
            raise ConfigError(f"training config: {missing} not given, and the training set does "
                              "not name them (build it with mlplatform.features."
                              "build_training_set, or set them)")
        if task == "multiclass" and not (update.get("classes") or self.classes):
            raise ConfigError("training config: a multiclass task needs `classes`")
        if self.torch.categorical is None:
            features = update.get("feature_columns") or self.feature_columns
            categorical = {c: int(n) + 1 for c, n in (manifest.get("categorical") or {}).items()
                           if c in features}
            update["torch"] = self.torch.model_copy(update={"categorical": categorical})
        return self.model_copy(update=update)

    def xgb_params(self) -> dict[str, Any]:
        """The booster parameters: the defaults, the task's objective and metrics, then
        ``params`` (``num_class`` added for multiclass)."""
        task = self.task or "binary"
        params = {**DEFAULT_XGB_PARAMS, **TASK_XGB_PARAMS[task], **self.params}
        if task == "multiclass":
            params["num_class"] = len(self.classes or [])
        return params

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
        return cls.load(data, f"training config {path}")

    @classmethod
    def load(cls, data: dict[str, Any], where: str, prefix: str = "") -> TrainConfig:
        """Validate a mapping; errors name ``where`` and every bad key (under ``prefix``)."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise config_error(where, exc, cls, prefix) from None
