"""Training on Ray Train (XGBoost now; PyTorch and Tune sweeps arrive with issue #4)."""

from mlplatform.training.config import DEFAULT_XGB_PARAMS, ScalingSpec, TrainConfig
from mlplatform.training.xgb import TrainResult, train_xgboost

__all__ = ["DEFAULT_XGB_PARAMS", "ScalingSpec", "TrainConfig", "TrainResult", "train_xgboost"]
