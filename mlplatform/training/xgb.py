"""Distributed XGBoost training with Ray Train, tracked in MLflow (binary, multiclass and
regression: the objective and metrics follow the project's task).

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
from mlplatform.training.config import TrainConfig
from mlplatform.training.data import check_scaling, fit, prepare, time_split, train_run_config
from mlplatform.training.tracking import TrainResult, log_training_run

MODEL_FILE = "model.ubj"
STATE_FILE = "train_state.json"   # rounds done, per-round history, early stopping, resumes
#: Final metric names logged to MLflow, from XGBoost's eval metric names (others: val_<name>).
FINAL_METRICS = {"aucpr": "val_auc_pr", "auc": "val_auc_roc", "logloss": "val_logloss",
                 "mlogloss": "val_logloss", "merror": "val_error", "rmse": "val_rmse",
                 "mae": "val_mae"}


def final_metrics(best: dict[str, float]) -> dict[str, float]:
    """The run's ``val_*`` metrics from XGBoost's validation metrics at the kept round
    (``val_accuracy`` beside a multiclass ``val_error``)."""
    out = {FINAL_METRICS.get(k, f"val_{k}"): float(v) for k, v in best.items()}
    if "val_error" in out:
        out["val_accuracy"] = 1.0 - out["val_error"]
    return out


def train_xgboost(config: TrainConfig, platform: PlatformConfig | None = None) -> TrainResult:
    """Train an XGBoost model on Ray Train and log it to MLflow.

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
    config, features_path = prepare(config, platform)
    train_ds, valid_ds, split = time_split(features_path, config)

    scaling = config.scaling
    params = config.xgb_params()
    if scaling.use_gpu:
        params["device"] = "cuda"
    check_scaling(scaling)
    trainer = XGBoostTrainer(
        _train_loop,
        train_loop_config={
            "params": params, "label": config.label, "features": config.feature_columns,
            "num_boost_round": config.num_boost_round,
            "early_stopping_rounds": config.early_stopping_rounds,
            "checkpoint_frequency": config.checkpoint.frequency,
            "callbacks": [c.model_dump() for c in config.xgb_callbacks],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker=dict(scaling.resources_per_worker)),
        run_config=train_run_config(config, platform, "xgboost"),
        datasets={"train": train_ds, "validation": valid_ds},
    )
    result = fit(trainer, config)

    with result.checkpoint.as_directory() as ckpt:
        booster = _load_booster(Path(ckpt) / MODEL_FILE)
        history = json.loads((Path(ckpt) / STATE_FILE).read_text())

    import xgboost

    from mlplatform.models import model_metadata, signature_for
    from mlplatform.training.evaluation import EVAL_ROWS, PROFILE_ROWS, bounded_sample

    def predict(frame):
        return booster.predict(xgboost.DMatrix(frame[config.feature_columns]))

    valid_frame = bounded_sample(valid_ds, EVAL_ROWS)
    sample = valid_frame[config.feature_columns].head(5)
    sample_scores = predict(sample)
    run_params = {
        **params,
        "num_boost_round": config.num_boost_round,
        "early_stopping_rounds": config.early_stopping_rounds,
        "num_workers": scaling.num_workers, "use_gpu": scaling.use_gpu,
        "best_iteration": history["best_iteration"], "rounds_trained": history["rounds"],
        "checkpoint_frequency": config.checkpoint.frequency,
        "max_failures": config.failure.max_failures,
        "resumed_at_rounds": history["resumed_at"],
        **split,
    }
    metrics = final_metrics(history["best"])
    per_round = {f"{split_name}_{name}": values
                 for split_name, per_metric in history["evals_result"].items()
                 for name, values in per_metric.items()}

    def log_model():
        return mlflow.xgboost.log_model(
            booster, name="model",
            signature=signature_for(sample, sample_scores, config.task, config.classes),
            input_example=sample.head(2), model_format="ubj",
            metadata=model_metadata(config.task, config.classes))

    return log_training_run(
        platform, config, trainer="xgboost", params=run_params, history=per_round,
        metrics=metrics, features_path=features_path, log_model=log_model,
        artifacts={"training/evals_result.json": history},
        checkpoint_path=result.checkpoint.path,
        validation_frame=valid_frame, validation_scores=predict(valid_frame), predict_fn=predict,
        reference_frame=bounded_sample(train_ds, PROFILE_ROWS), explain_model=booster)


def _train_loop(cfg: dict) -> None:
    """Runs on every Ray Train worker (inside XGBoost's collective context).

    Resumes from the latest checkpoint when Ray Train restarted the workers after a failure:
    the booster, the per-round history and the early-stopping state all continue from it.
    """
    import time

    import ray.train
    import xgboost

    t0 = time.perf_counter()
    feats, label = cfg["features"], cfg["label"]
    train = ray.train.get_dataset_shard("train").materialize().to_pandas()
    valid = ray.train.get_dataset_shard("validation").materialize().to_pandas()
    dtrain = xgboost.DMatrix(train[feats], label=train[label])
    dvalid = xgboost.DMatrix(valid[feats], label=valid[label])

    state = {"rounds": 0, "evals_result": {}, "best_iteration": -1, "best_score": None,
             "stopped": False, "resumed_at": []}
    init_model = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            init_model = _load_booster(Path(d) / MODEL_FILE)
            state = json.loads(Path(d, STATE_FILE).read_text())
        state["resumed_at"].append(state["rounds"])
    callbacks = [_round_state(state, cfg), *(_callback(spec) for spec in cfg.get("callbacks", []))]
    remaining = cfg["num_boost_round"] - state["rounds"]
    t1 = time.perf_counter()
    booster = init_model
    if remaining > 0 and not state["stopped"]:
        booster = xgboost.train(
            cfg["params"], dtrain, num_boost_round=remaining,
            evals=[(dtrain, "train"), (dvalid, "validation")], xgb_model=init_model,
            callbacks=callbacks, verbose_eval=False)
    best = state["best_iteration"] if cfg["early_stopping_rounds"] else state["rounds"] - 1
    booster = booster[: best + 1]  # keep the trees up to the best round: serve what was validated
    final = {m: v[best] for m, v in state["evals_result"]["validation"].items()}
    history = {"best_iteration": int(best), "best": final, "rounds": state["rounds"],
               "resumed_at": state["resumed_at"], "evals_result": state["evals_result"],
               # this (last) attempt: shard ingest + DMatrix, then boosting
               "timing": {"ingest_s": t1 - t0, "boost_s": time.perf_counter() - t1}}
    _report({f"validation_{m}": v for m, v in final.items()}, booster, history)



def _report(metrics: dict, booster, state: dict) -> None:
    """``ray.train.report`` on every worker (Train needs all of them); rank 0 adds the
    checkpoint: the booster (UBJ) and the training state as JSON."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        booster.save_model(os.path.join(tmp, MODEL_FILE))
        Path(tmp, STATE_FILE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _callback(spec: dict):
    import importlib

    module, _, name = spec["target"].partition(":")
    factory = importlib.import_module(module)
    for part in name.split("."):
        factory = getattr(factory, part)
    return factory(**spec.get("kwargs", {}))


_MAXIMIZE = ("auc", "aucpr", "map", "ndcg", "pre")


def _round_state(state: dict, cfg: dict):
    """An XGBoost callback that, per round, appends the metrics to the run's history (which
    spans resumes), applies early stopping on the last validation metric (XGBoost's rule) and
    checkpoints every ``checkpoint_frequency`` rounds. Built here so xgboost loads lazily."""
    import xgboost

    every, patience = cfg["checkpoint_frequency"], cfg["early_stopping_rounds"]

    class RoundState(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
            for split, per_metric in evals_log.items():
                for metric, values in per_metric.items():
                    state["evals_result"].setdefault(split, {}).setdefault(metric, []).append(
                        float(values[-1]))
            i = state["rounds"]
            state["rounds"] += 1
            metric, values = list(state["evals_result"]["validation"].items())[-1]
            score, best = values[-1], state["best_score"]
            if best is None or (score > best if metric.split("@")[0] in _MAXIMIZE else score < best):
                state["best_score"], state["best_iteration"] = score, i
            state["stopped"] = bool(patience) and i - state["best_iteration"] >= patience
            if state["rounds"] % every == 0 and not state["stopped"]:
                _report({f"validation_{metric}": score, "round": state["rounds"]}, model, state)
            return state["stopped"]

    return RoundState()


def _load_booster(path: Path):
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(path))
    return booster
