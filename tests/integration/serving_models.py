"""Small XGBoost models for the serving tests, logged to MLflow as training logs them (UBJ,
signature, evaluation threshold) but trained in-process in a second: the serving tests need
several distinct versions, not good ones. And :func:`check_burst`, run against both serving
modes (ModelServer deployments, embedded models)."""

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
    from mlplatform.models import model_metadata, signature_for
    from tests.projects import project

    columns = columns or project("fraud").input_columns
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
                                        signature=signature_for(sample, np.asarray(scores)),
                                        metadata=model_metadata("binary"))
    return info.model_uri


def as_records(batch: list[dict]) -> list[dict]:
    """Request instances as the Ingress validates them (timestamps parsed)."""
    return [{**i, "event_timestamp": pd.Timestamp(i["event_timestamp"])} for i in batch]


def check_burst(url: str, instances: list[dict], platform, model: str, headers: dict,
                threads: int = 32) -> None:
    """A burst of 52 concurrent requests (48 single transactions, 4 of unknown users, and 4
    three-transaction requests) from ``threads`` threads: each answer must be the direct model score of
    its own transactions' looked-up features, in order, with their unknown entities. The
    Ingress batches concurrent lookups and model calls (and, with ModelServers, coalesces the
    calls), so a mix-up between the requests batched together would show here."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from mlplatform.registry import ModelRegistry, load_model
    from mlplatform.serving.deployments import FeatureLookup
    from tests.projects import project

    bodies = [dict(i) for i in instances[40:88]]
    for i in range(0, len(bodies), 12):      # some unknown users (default features) among them
        bodies[i] = {**bodies[i], "user_id": f"u-nobody-{i}"}
    bodies += [{"instances": instances[j:j + 3]} for j in range(90, 102, 3)]

    def post(body):
        with requests.Session() as http:
            return http.post(f"{url}/predict", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(post, bodies))
    lookup = FeatureLookup(platform.model_dump(mode="json"), project("fraud"))
    registry = ModelRegistry(platform)
    models = {}
    for body, r in zip(bodies, answers, strict=True):
        assert r.status_code == 200, r.text
        batch = body.get("instances", [body])
        preds = r.json().get("predictions", [r.json()])
        features = lookup.features(as_records(batch))
        version = preds[0]["model_version"]
        if version not in models:
            models[version] = load_model(registry, f"{model}/{version}")
        direct = models[version].predict(pd.DataFrame(
            features["matrix"], columns=project("fraud").input_columns))
        assert [p["transaction_id"] for p in preds] == [b["transaction_id"] for b in batch]
        assert [p["unknown_entities"] for p in preds] == features["unknown"]
        np.testing.assert_allclose([p["score"] for p in preds], direct, rtol=1e-6)
    assert sum("user" in p["unknown_entities"] for r in answers
               for p in r.json().get("predictions", [r.json()])) == 4
