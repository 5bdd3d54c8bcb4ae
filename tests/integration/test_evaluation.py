"""Evaluation on the shared cluster: every artifact of the spine's training run, and
``evaluate`` on the registered model through each dataset door (Parquet path, Ray Dataset,
DataFrame) and each URI form."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.datasets.transactions import CATEGORIES, COUNTRIES
from tests.integration.conftest import N_ROWS
from tests.projects import FRAUD, fraud_columns

FEATURE_COLUMNS = fraud_columns()["inputs"]

PNG = b"\x89PNG\r\n\x1a\n"
EXPECTED = [
    "evaluation/metrics.json",
    *(f"evaluation/{n}.{ext}" for n in ("pr_curve", "confusion_matrix", "calibration")
      for ext in ("png", "json")),
    "explain/shap_importance.json", "explain/shap_importance.png",
    "profile/reference_profile.json",
]


@pytest.fixture(scope="module")
def run_artifacts(spine, platform, tmp_path_factory) -> Path:
    import mlflow

    dst = tmp_path_factory.mktemp("eval-artifacts")
    for folder in ("evaluation", "explain", "profile"):
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{spine.train.run_id}/{folder}", dst_path=str(dst),
            tracking_uri=platform.mlflow_tracking_uri)
    return dst


@pytest.fixture(scope="module")
def run(spine, platform):
    from mlflow import MlflowClient

    return MlflowClient(platform.mlflow_tracking_uri).get_run(spine.train.run_id)


def test_training_run_has_every_evaluation_artifact(run_artifacts, run):
    for rel in EXPECTED:
        path = run_artifacts / rel
        assert path.is_file(), f"{rel} missing from the training run"
        if rel.endswith(".png"):
            data = path.read_bytes()
            assert data[:8] == PNG and len(data) > 5_000, rel   # a drawn figure, not a stub
    valid_rows = int(run.data.params["validation_rows"])
    m = json.loads((run_artifacts / "evaluation/metrics.json").read_text())
    assert m["rows"] == min(valid_rows, 50_000) and 0 < m["positives"] < m["rows"]
    assert m["threshold_source"] == "max_f1" and 0.0 < m["threshold"] < 1.0
    assert m["auc_roc"] > 0.9 and m["auc_pr"] > 0.4 and 0 < m["f1"] <= 1
    # The numbers are logged as metrics too, and agree with XGBoost's own validation metrics.
    for key in ("auc_pr", "auc_roc", "threshold", "f1", "brier", "log_loss"):
        assert run.data.metrics[f"eval_{key}"] == pytest.approx(m[key])
    assert m["auc_roc"] == pytest.approx(run.data.metrics["val_auc_roc"], abs=0.005)
    assert m["log_loss"] == pytest.approx(run.data.metrics["val_logloss"], rel=0.02)

    cm = json.loads((run_artifacts / "evaluation/confusion_matrix.json").read_text())
    assert cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"] == m["rows"]
    assert cm["fn"] + cm["tp"] == m["positives"] and cm["threshold"] == m["threshold"]
    assert cm["precision"] == pytest.approx(cm["tp"] / (cm["tp"] + cm["fp"]))

    pr = json.loads((run_artifacts / "evaluation/pr_curve.json").read_text())
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["threshold"]) > 10
    assert np.all(np.diff(pr["recall"]) >= 0) and pr["recall"][-1] == 1.0
    assert pr["auc_pr"] == pytest.approx(m["auc_pr"])

    cal = json.loads((run_artifacts / "evaluation/calibration.json").read_text())
    assert len(cal["bins"]) == 10 and sum(b["rows"] for b in cal["bins"]) == m["rows"]
    assert 0 <= cal["ece"] < 0.05                          # a logistic objective calibrates


def test_shap_importance_and_reference_profile(run_artifacts, run):
    imp = json.loads((run_artifacts / "explain/shap_importance.json").read_text())
    assert imp["model_kind"] == "xgboost" and imp["method"].startswith("xgboost TreeSHAP")
    assert set(imp["importance"]) == set(FEATURE_COLUMNS)
    values = list(imp["importance"].values())
    assert values == sorted(values, reverse=True) and values[0] > 0.1
    # The fraud patterns of the generator are amount, time, place and device: one of them leads.
    assert list(imp["importance"])[0] in {
        "amount", "amount_log", "amount_z_user_7d", "amount_ratio_user_7d", "hour_of_day",
        "is_night", "country_code", "merchant_category_code", "user_device_txn_count_30d",
        "user_country_txn_count_30d", "device_type_code"}

    profile = json.loads((run_artifacts / "profile/reference_profile.json").read_text())
    train_rows = int(run.data.params["train_rows"])
    assert profile["rows"] == min(train_rows, 100_000)
    assert profile["columns"] == FEATURE_COLUMNS
    for name, f in profile["features"].items():
        assert f["count"] + f["null_count"] == profile["rows"], name
        if f["kind"] == "numeric":
            assert f["min"] <= f["quantiles"]["p50"] <= f["max"], name
            assert sum(f["histogram"]["counts"]) == f["count"], name
            assert f["histogram"]["bin_edges"][0] == f["min"], name
        else:
            assert name.endswith("_code")
            assert sum(f["frequencies"].values()) == pytest.approx(1.0), name
    assert len(profile["features"]["hour_of_day"]["histogram"]["counts"]) == 24
    assert profile["features"]["amount"]["quantiles"]["p50"] > 0


def test_evaluate_registered_model_on_the_training_set(spine, platform, run_artifacts):
    from mlplatform.training.evaluation import evaluate

    out = evaluate(spine.model_version.uri, spine.features_path, platform=platform)
    assert out["model"]["version"] == spine.model_version.version
    assert out["model"]["run_id"] == spine.train.run_id
    assert out["rows"] == N_ROWS
    # The threshold is the one the training run chose on validation data.
    chosen = json.loads((run_artifacts / "evaluation/metrics.json").read_text())["threshold"]
    assert out["threshold_source"] == "run" and out["threshold"] == chosen
    overall = out["overall"]
    assert overall["rows"] == N_ROWS and overall["auc_roc"] > 0.9 and overall["auc_pr"] > 0.4
    assert overall["threshold"] == chosen and overall["threshold_source"] == "run"
    assert sum(overall["confusion_matrix"].values()) == N_ROWS

    for column, vocab in (("country", COUNTRIES), ("merchant_category", CATEGORIES)):
        slices = out["slices"][column]
        assert set(slices) <= set(vocab) and len(slices) > 3, column
        assert sum(s["rows"] for s in slices.values()) == N_ROWS
        assert sum(s["positives"] for s in slices.values()) == overall["positives"]
        big = max(slices.values(), key=lambda s: s["rows"])
        assert big["auc_roc"] > 0.8 and 0 <= big["precision"] <= 1

    inv = out["checks"]["invariance_transaction_id"]
    assert inv["passed"] and inv["rows"] == N_ROWS
    assert inv["changed_inputs"] == 0 and inv["changed_scores"] == 0
    assert inv["max_input_diff_vs_dataset"] < 1e-6   # the request path rebuilds the stored inputs
    dirn = out["checks"]["directional_amount"]
    assert dirn["passed"] and dirn["rows"] > N_ROWS // 2
    assert dirn["share_lowered"] <= dirn["tolerance"] and dirn["mean_delta"] > 0
    assert out["passed"]


def test_evaluate_is_the_same_through_every_door(spine, platform):
    """A DataFrame (in-process), a Ray Dataset and a Parquet path give the same figures, with
    the model named by its logged-model URI and by its run."""
    import ray.data

    from mlplatform.training.evaluation import evaluate

    frame = pd.read_parquet(spine.features_path)
    frame = frame[frame["event_timestamp"] >= frame["event_timestamp"].quantile(0.5)]
    ds = ray.data.from_pandas(frame.reset_index(drop=True))
    a = evaluate(spine.train.model_uri, frame, platform=platform, threshold=0.5)
    b = evaluate(f"runs:/{spine.train.run_id}/model", ds, platform=platform, threshold=0.5)
    assert a["rows"] == b["rows"] == len(frame)
    assert a["threshold_source"] == "given" and a["overall"]["threshold"] == 0.5
    for key in ("auc_pr", "auc_roc", "log_loss", "brier", "confusion_matrix"):
        assert a["overall"][key] == pytest.approx(b["overall"][key]), key
    assert a["slices"]["country"].keys() == b["slices"]["country"].keys()
    assert a["checks"]["directional_amount"]["lowered"] == b["checks"]["directional_amount"]["lowered"]


def test_evaluate_rejects_bad_input(spine, platform):
    from mlplatform.errors import DataValidationError, ModelNotFound
    from mlplatform.training.evaluation import evaluate

    frame = pd.read_parquet(spine.features_path).head(100)
    with pytest.raises(DataValidationError, match="is_fraud"):
        evaluate(spine.model_version.uri, frame.drop(columns=["is_fraud"]), platform=platform)
    with pytest.raises(DataValidationError, match="checks=False"):
        evaluate(spine.model_version.uri, frame.drop(columns=["hours_since_prev"]),
                 platform=platform)
    with pytest.raises(ModelNotFound, match="no version 999"):
        evaluate(f"models:/{spine.model_version.name}/999", frame, platform=platform)


def test_mlp_evaluate_prints_metrics_slices_and_checks(spine, platform, ray_cluster, tmp_path):
    """The CLI door: `mlp evaluate --model-uri ... --data ... --json ...` against the cluster."""
    import os
    import subprocess
    import sys

    out_json = tmp_path / "eval.json"
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mlp"), "evaluate", "--model-uri",
         spine.model_version.uri, "--data", str(spine.features_path), "--json", str(out_json),
         "--project", str(FRAUD)],
        env={**os.environ, "MLP_STORAGE_ROOT": str(platform.storage_root),
             "RAY_ADDRESS": ray_cluster["address"], "RAY_AUTH_MODE": "token"},
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "auc_pr" in out.stdout and "by country" in out.stdout
    assert "check invariance_transaction_id: PASS" in out.stdout
    result = json.loads(out_json.read_text())
    assert result["rows"] == len(pd.read_parquet(spine.features_path))
    assert result["model"]["version"] == str(spine.model_version.version) and result["passed"]
