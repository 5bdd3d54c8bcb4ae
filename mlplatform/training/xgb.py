"""Distributed XGBoost training with Ray Train, tracked in MLflow.

Ray Train's ``XGBoostTrainer`` runs the boosting loop on ``scaling.num_workers`` workers, each
reading its shard of a Ray Data dataset; XGBoost's collective all-reduces histograms and
evaluation metrics, so early stopping sees metrics over the whole validation set. Rank 0 puts
the booster (UBJ, never pickle) and the per-round history in the final checkpoint; the driver
then logs one MLflow run with params, per-round and final metrics, and the model + signature.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mlplatform.config import PlatformConfig
from mlplatform.errors import TrainingError
from mlplatform.features.training_set import TRAINING_SET_DIR
from mlplatform.training.config import TrainConfig
from mlplatform.training.data import time_split
from mlplatform.training.tracking import TrainResult, log_training_run, signature_for

MODEL_FILE = "model.ubj"
HISTORY_FILE = "evals_result.json"
#: Final metric names logged to MLflow, from XGBoost's eval metric names.
FINAL_METRICS = {"aucpr": "val_auc_pr", "auc": "val_auc_roc", "logloss": "val_logloss"}


def train_xgboost(config: TrainConfig, platform: PlatformConfig | None = None) -> TrainResult:
    """Train an XGBoost classifier on Ray Train and log it to MLflow.

    Args:
        config: What to train and how (data, split, params, scaling).
        platform: Where MLflow and storage live (default: ``PlatformConfig.load()``).

    Returns:
        The MLflow run id, the logged model's URI, final validation metrics and the checkpoint.

    Raises:
        DataValidationError: The features are missing, lack a column, or a split is empty or
            single-class. Nothing is logged to MLflow in that case.
        TrainingError: Ray Train finished without a checkpoint.
    """
    import mlflow
    import ray.train
    from ray.train.xgboost import XGBoostTrainer


    platform = platform or PlatformConfig.load()
    features_path = Path(config.features_path or platform.path(*TRAINING_SET_DIR))
    train_ds, valid_ds, split = time_split(features_path, config)

    scaling = config.scaling
    params = dict(config.params)
    if scaling.use_gpu:
        params["device"] = "cuda"
    trainer = XGBoostTrainer(
        _train_loop,
        train_loop_config={
            "params": params, "label": config.label, "features": config.feature_columns,
            "num_boost_round": config.num_boost_round,
            "early_stopping_rounds": config.early_stopping_rounds,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker=dict(scaling.resources_per_worker)),
        run_config=ray.train.RunConfig(
            name=config.run_name or "xgboost", storage_path=str(platform.path("ray_results"))),
        datasets={"train": train_ds, "validation": valid_ds},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise TrainingError(f"Ray Train finished without a checkpoint (error: {result.error}); "
                            "see the worker logs above.")

    with result.checkpoint.as_directory() as ckpt:
        booster = _load_booster(Path(ckpt) / MODEL_FILE)
        history = json.loads((Path(ckpt) / HISTORY_FILE).read_text())

    sample = valid_ds.limit(5).to_pandas()[config.feature_columns]
    import xgboost

    sample_scores = booster.predict(xgboost.DMatrix(sample))
    run_params = {
        **params,
        "num_boost_round": config.num_boost_round,
        "early_stopping_rounds": config.early_stopping_rounds,
        "num_workers": scaling.num_workers, "use_gpu": scaling.use_gpu,
        "best_iteration": history["best_iteration"],
        **split,
    }
    metrics = {FINAL_METRICS[k]: v for k, v in history["best"].items() if k in FINAL_METRICS}
    per_round = {f"{split_name}_{name}": values
                 for split_name, per_metric in history["evals_result"].items()
                 for name, values in per_metric.items()}

    def log_model():
        return mlflow.xgboost.log_model(
            booster, name="model", signature=signature_for(sample, sample_scores),
            input_example=sample.head(2), model_format="ubj")

    return log_training_run(
        platform, config, trainer="xgboost", params=run_params, history=per_round,
        metrics=metrics, features_path=features_path, log_model=log_model,
        artifacts={"training/evals_result.json": history},
        checkpoint_path=result.checkpoint.path)


def _train_loop(cfg: dict) -> None:
    """Runs on every Ray Train worker (inside XGBoost's collective context)."""
    import ray.train
    import xgboost

    feats, label = cfg["features"], cfg["label"]
    train = ray.train.get_dataset_shard("train").materialize().to_pandas()
    valid = ray.train.get_dataset_shard("validation").materialize().to_pandas()
    dtrain = xgboost.DMatrix(train[feats], label=train[label])
    dvalid = xgboost.DMatrix(valid[feats], label=valid[label])
    evals_result: dict = {}
    booster = xgboost.train(
        cfg["params"], dtrain, num_boost_round=cfg["num_boost_round"],
        evals=[(dtrain, "train"), (dvalid, "validation")], evals_result=evals_result,
        early_stopping_rounds=cfg["early_stopping_rounds"] or None, verbose_eval=False)
    best = booster.best_iteration if cfg["early_stopping_rounds"] else booster.num_boosted_rounds() - 1
    booster = booster[: best + 1]  # keep the trees up to the best round: serve what was validated
    final = {m: float(v[best]) for m, v in evals_result["validation"].items()}
    history = {"best_iteration": int(best), "best": final,
               "evals_result": {s: {m: [float(x) for x in v] for m, v in ms.items()}
                                for s, ms in evals_result.items()}}
    metrics = {f"validation_{m}": v for m, v in final.items()}
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            booster.save_model(os.path.join(tmp, MODEL_FILE))
            Path(tmp, HISTORY_FILE).write_text(json.dumps(history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics, checkpoint=None)


def _load_booster(path: Path):
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(path))
    return booster
