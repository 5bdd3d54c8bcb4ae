"""Models trained elsewhere: an ONNX graph logged as a run of the project, like a trained one.

The run has what a platform training run has, so the rest of the platform treats the model the
same: the project's tags and the training set it is judged on (``features_path`` and the same
train/validation split, so promotion's default holdout is the validation rows), ``val_*``
metrics, the evaluation artifacts, SHAP importance and the reference profile for drift. Only the
training itself happened elsewhere (tag ``mlplatform.trainer: onnx``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig
from mlplatform.training.config import TrainConfig
from mlplatform.training.tracking import TrainResult

#: The run's ``val_*`` metrics per task, from the evaluation report's keys (the names the
#: trainers log, so sweeps, gates and comparisons read them alike).
IMPORTED_METRICS: dict[str, dict[str, str]] = {
    "binary": {"auc_pr": "val_auc_pr", "auc_roc": "val_auc_roc", "log_loss": "val_logloss"},
    "multiclass": {"log_loss": "val_logloss", "accuracy": "val_accuracy"},
    "regression": {"rmse": "val_rmse", "mae": "val_mae"},
}


def log_onnx_run(config: TrainConfig, platform: PlatformConfig,
                 onnx_model: Any, source: str | os.PathLike[str] | None = None) -> TrainResult:
    """Log ``onnx_model`` (a graph, its bytes or a ``.onnx`` path) as one MLflow run of the
    training set ``config.features_path``, judged on its validation split.

    Args:
        config: A resolved config (:func:`mlplatform.training.data.prepare`): the task, label,
            model inputs and split of the project.
        source: Where the model came from (a run param).

    Raises:
        ModelRefused: The graph does not run on the model inputs, or gives the wrong outputs
            for the task (nothing is logged).
        DataValidationError: The training set is missing or a split is empty.
    """
    import numpy as np

    from mlplatform.models.onnx_model import OnnxModel, load_graph, log_onnx_model
    from mlplatform.training.data import time_split
    from mlplatform.training.evaluation import (
        EVAL_ROWS,
        PROFILE_ROWS,
        bounded_sample,
        task_report,
    )
    from mlplatform.training.tracking import log_training_run

    features_path = Path(config.features_path)
    train_ds, valid_ds, split = time_split(features_path, config)
    valid = bounded_sample(valid_ds, EVAL_ROWS)
    columns = list(config.feature_columns)
    proto = load_graph(onnx_model)
    # Scored before any run exists: a graph that does not fit the inputs logs nothing.
    model = OnnxModel(proto, columns, config.task, config.classes, source="the ONNX model")
    scores = model.predict(valid[columns])
    y = valid[config.label].to_numpy()
    if config.task == "multiclass":
        y = y.astype(np.int64)
    report = task_report(config.task, y, scores, classes=config.classes)
    metrics = {name: float(report[key]) for key, name in IMPORTED_METRICS[config.task].items()
               if report.get(key) is not None}
    params = {"model": "onnx", "source": str(source) if source is not None else "in-memory",
              "opset": ",".join(f"{o.domain or 'ai.onnx'}:{o.version}"
                                for o in proto.opset_import),
              "producer": f"{proto.producer_name} {proto.producer_version}".strip(), **split}
    return log_training_run(
        platform, config, trainer="onnx", params=params, history={}, metrics=metrics,
        features_path=features_path,
        log_model=lambda: log_onnx_model(proto, valid[columns].head(200), config.task,
                                         config.classes),
        validation_frame=valid, validation_scores=scores, predict_fn=model.predict,
        reference_frame=bounded_sample(train_ds, PROFILE_ROWS))
