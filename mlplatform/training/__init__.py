"""Training on Ray Train (XGBoost, PyTorch) and Ray Tune sweeps, tracked in MLflow."""

from mlplatform.training.config import (
    DEFAULT_XGB_PARAMS,
    CheckpointSpec,
    FailureSpec,
    ScalingSpec,
    TorchParams,
    TrainConfig,
)
from mlplatform.training.evaluation import evaluate, evaluation_report, log_evaluation_artifacts
from mlplatform.training.torch_train import train_torch
from mlplatform.training.tracking import TrainResult
from mlplatform.training.tuning import check_sweep, sweep
from mlplatform.training.xgb import train_xgboost


def train(config: TrainConfig, platform=None) -> TrainResult:
    """Train ``config.model`` (``xgboost`` or ``torch``) on Ray Train; see the trainers."""
    if config.model == "torch":
        return train_torch(config, platform)
    return train_xgboost(config, platform)


__all__ = ["DEFAULT_XGB_PARAMS", "CheckpointSpec", "FailureSpec", "ScalingSpec", "TorchParams",
           "TrainConfig", "TrainResult", "evaluate", "evaluation_report", "log_evaluation_artifacts",
           "check_sweep", "sweep", "train", "train_torch", "train_xgboost"]
