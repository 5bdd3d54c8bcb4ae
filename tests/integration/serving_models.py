"""Small XGBoost models for the serving tests, logged to MLflow as training logs them (UBJ,
signature, evaluation threshold) but trained in-process in a second: the serving tests need
several distinct versions, not good ones."""

from pathlib import Path

import numpy as np
import pandas as pd


def log_xgboost(platform, features_path: Path, rounds: int, seed: int,
                columns: list[str] | None = None, threshold: float = 0.3,
                faulty: bool = False) -> str:
    """Train a booster on the spine's training set and log it; returns its model URI.

    ``columns``: train on these inputs only (a model the platform must refuse to serve).
    ``faulty``: the booster's feature names differ from its signature's, so it loads but every
    prediction raises (a model that fails at request time).
    """
    import mlflow
    import xgboost

    from mlplatform import _mlflow
    from mlplatform.features import FEATURE_COLUMNS
    from mlplatform.training.tracking import signature_for

    columns = columns or FEATURE_COLUMNS
    frame = pd.read_parquet(features_path, columns=[*columns, "is_fraud"]).sample(
        n=4000, random_state=seed)
    train = frame[columns].rename(columns=lambda c: f"x_{c}") if faulty else frame[columns]
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": seed,
         "nthread": 1}, xgboost.DMatrix(train, label=frame["is_fraud"]), rounds)
    sample = frame[columns].head(20)
    scores = booster.predict(xgboost.DMatrix(train.head(20)))
    experiment = _mlflow.ensure_experiment(platform, "serving-tests")
    with mlflow.start_run(experiment_id=experiment):
        mlflow.set_tag("features_path", str(features_path))
        mlflow.log_dict({"threshold": threshold}, "evaluation/metrics.json")
        info = mlflow.xgboost.log_model(booster, name="model", model_format="ubj",
                                        signature=signature_for(sample, np.asarray(scores)))
    return info.model_uri
