"""XGBoost as a Tune trial: native ``xgboost.train`` in the trial's actor, one report per round.

The sweep's trial contract (see :mod:`mlplatform.training.tuning`): :func:`tune_trial` trains
and reports, :func:`log_tuned_model` logs the kept model; :func:`check_params` lets the sweep
reject bad parameters before any trial starts.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mlplatform.training.config import TrainConfig
from mlplatform.training.xgb import FINAL_METRICS, MODEL_FILE


def tune_trial(config: TrainConfig, train: pd.DataFrame, valid: pd.DataFrame,
               report: Callable[..., None], *, metric: str, mode: str) -> None:
    """Native ``xgboost.train`` on the trial's CPUs (Ray sets OMP_NUM_THREADS to them).

    Every round is reported (``report`` is :func:`mlplatform.training.tuning.report_round`);
    early stopping (``early_stopping_rounds``) watches the sweep's metric, and the kept model
    is the booster up to its best round, as :func:`~mlplatform.training.train_xgboost` keeps.
    """
    import xgboost

    feats, label = config.feature_columns, config.label
    params = config.xgb_params()
    if config.scaling.use_gpu:
        params["device"] = "cuda"
    dtrain = xgboost.DMatrix(train[feats], label=train[label])
    dvalid = xgboost.DMatrix(valid[feats], label=valid[label])
    xgboost.train(params, dtrain, num_boost_round=config.num_boost_round,
                  evals=[(dvalid, "validation")], verbose_eval=False,
                  callbacks=[_round_reporter(report, metric, mode == "max",
                                             config.early_stopping_rounds,
                                             config.num_boost_round)])


def _round_reporter(report: Callable[..., None], metric: str, maximize: bool, patience: int,
                    num_rounds: int):
    import xgboost

    class ReportRounds(xgboost.callback.TrainingCallback):
        """Reports each round to Tune, stops early, and hands over the kept booster (UBJ)."""

        def __init__(self) -> None:
            super().__init__()
            self.history: list[dict[str, float]] = []
            self.best = 0

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            values = {metric_name(m): float(v[-1]) for m, v in evals_log["validation"].items()}
            self.history.append(values)
            best = self.history[self.best][metric]
            if (values[metric] > best) if maximize else (values[metric] < best):
                self.best = epoch
            stop = bool(patience) and epoch - self.best >= patience
            kept = self.best if patience else epoch
            args = {"best_round": kept + 1, "final": self.history[kept]}
            if not (stop or epoch + 1 >= num_rounds):
                report(epoch + 1, values, **args)
                return False
            with tempfile.TemporaryDirectory() as tmp:
                model[: kept + 1].save_model(os.path.join(tmp, MODEL_FILE))
                report(epoch + 1, values, **args, model_dir=tmp)
            return stop

    return ReportRounds()


def log_tuned_model(model_dir: Path, config: TrainConfig, sample: pd.DataFrame):
    """Log the trial's booster (UBJ, never pickle) with its signature into the active run."""
    import mlflow
    import xgboost

    from mlplatform.models import model_metadata, signature_for

    booster = xgboost.Booster()
    booster.load_model(str(model_dir / MODEL_FILE))
    scores = booster.predict(xgboost.DMatrix(sample))
    return mlflow.xgboost.log_model(
        booster, name="model", signature=signature_for(sample, scores, config.task,
                                                       config.classes),
        input_example=sample.head(2), model_format="ubj",
        metadata=model_metadata(config.task or "binary", config.classes))


def check_params(config: TrainConfig) -> None:
    """One round on 8 synthetic rows: XGBoost rejects bad values and names unknown params."""
    import numpy as np
    import xgboost

    n = len(config.feature_columns or []) or 1
    classes = max(2, len(config.classes or [])) if config.task == "multiclass" else 2
    data = xgboost.DMatrix(np.arange(8 * n, dtype=float).reshape(8, n) % 3,
                           label=np.arange(8) % classes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            xgboost.train({**config.xgb_params(), "nthread": 1}, data, num_boost_round=1)
        except xgboost.core.XGBoostError as exc:
            text = re.sub(r"\[[\d:]+\] \S+: ", "", str(exc)).strip().splitlines()
            raise ValueError(f"XGBoost says: {text[0] if text else exc}") from None
    for w in caught:
        unused = re.search(r"Parameters: \{(.*?)\} are not used", str(w.message), re.S)
        if unused:
            raise ValueError(f"XGBoost does not know parameter(s) {unused.group(1).strip()}.")


def reported_metrics(config: TrainConfig) -> list[str]:
    """The ``val_*`` names a trial reports: one per ``eval_metric`` of the task's params."""
    names = config.xgb_params().get("eval_metric", [])
    return [metric_name(m) for m in ([names] if isinstance(names, str) else names)]


def metric_name(xgb_name: str) -> str:
    """XGBoost's metric name -> the platform's (``aucpr`` -> ``val_auc_pr``)."""
    return FINAL_METRICS.get(xgb_name, f"val_{xgb_name}")
