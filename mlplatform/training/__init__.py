"""Training on Ray Train (XGBoost, PyTorch) and Ray Tune sweeps, tracked in MLflow."""

from mlplatform.training.config import (
    DEFAULT_XGB_PARAMS,
    CheckpointSpec,
    FailureSpec,
    ScalingSpec,
    TorchParams,
    TrainConfig,
)
from mlplatform.training.tracking import TrainResult
from mlplatform.training.xgb import train_xgboost

__all__ = ["DEFAULT_XGB_PARAMS", "CheckpointSpec", "FailureSpec", "ScalingSpec", "TorchParams",
           "TrainConfig", "TrainResult", "train_xgboost"]
