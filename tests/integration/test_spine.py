"""The spine end to end on the shared cluster: data -> features -> Ray Train -> MLflow -> registry."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlplatform.features import FEATURE_COLUMNS
from mlplatform.registry import ModelRegistry, load_model
from tests.integration.conftest import N_ROWS


def test_raw_and_features_written(spine):
    assert pq.ParquetDataset(str(spine.raw_path)).read().num_rows == N_ROWS
    feats = pd.read_parquet(spine.features_path)
    assert len(feats) == N_ROWS
    assert set(FEATURE_COLUMNS) <= set(feats.columns)
    assert feats["transaction_id"].is_unique
    # Features discriminate: fraud is far more unusual for its user than legit spending.
    by_label = feats.groupby("is_fraud")["amount_z_user"].mean()
    assert by_label[1] > by_label[0] + 0.5


def test_mlflow_run_has_params_metrics_and_safe_model(spine, platform):
    from mlflow import MlflowClient

    client = MlflowClient(platform.mlflow_tracking_uri)
    run = client.get_run(spine.train.run_id)
    for key in ("val_auc_pr", "val_auc_roc", "val_logloss"):
        assert key in run.data.metrics
    assert run.data.metrics["val_auc_roc"] > 0.9          # the patterns are learnable
    assert run.data.metrics["val_auc_pr"] > 0.4           # far above the ~2 % base rate
    assert run.data.params["num_workers"] == "2"
    assert run.data.params["objective"] == "binary:logistic"
    assert pd.Timestamp(run.data.params["split_cutoff"]) > pd.Timestamp(run.data.params["split_min"])
    history = client.get_metric_history(run.info.run_id, "validation_aucpr")
    assert len(history) > 5 and [m.step for m in history] == list(range(len(history)))
    # The model is stored as UBJ with a signature; no pickle anywhere in its artifacts.
    mv = spine.model_version
    registry = ModelRegistry(platform)
    _, folder = registry.download(f"{mv.name}/{mv.version}", Path(platform.storage_root) / "dl")
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert "model.ubj" in files
    assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)
    mlmodel = (folder / "MLmodel").read_text()
    assert "model_format: ubj" in mlmodel and "signature:" in mlmodel


def test_champion_alias_points_to_new_version(spine, platform):
    mv = ModelRegistry(platform).resolve("fraud@champion")
    assert mv.version == spine.model_version.version
    assert mv.run_id == spine.train.run_id
    assert "champion" in mv.aliases
    loaded = load_model(ModelRegistry(platform), "fraud@champion")
    assert loaded.feature_names == FEATURE_COLUMNS


def test_rejected_dataset_creates_no_run_and_no_model(spine, platform, tmp_path):
    """A features table missing a column is refused before anything is logged."""
    from mlflow import MlflowClient

    from mlplatform.errors import DataValidationError
    from mlplatform.training import TrainConfig, train_xgboost

    bad = tmp_path / "bad_features"
    bad.mkdir()
    pd.read_parquet(spine.features_path).drop(columns=["amount_z_user"]).to_parquet(
        bad / "part.parquet")
    client = MlflowClient(platform.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(platform.experiment_name)
    runs_before = len(client.search_runs([exp.experiment_id]))
    versions_before = len(ModelRegistry(platform).list_versions("fraud"))
    with pytest.raises(DataValidationError, match="amount_z_user"):
        train_xgboost(TrainConfig(features_path=bad), platform)
    assert len(client.search_runs([exp.experiment_id])) == runs_before
    assert len(ModelRegistry(platform).list_versions("fraud")) == versions_before


def test_failed_feature_build_keeps_previous_output(spine, tmp_path):
    from mlplatform.errors import DataValidationError
    from mlplatform.features import build_features

    before = sorted(p.name for p in Path(spine.features_path).iterdir())
    bad_raw = tmp_path / "raw"
    bad_raw.mkdir()
    pd.DataFrame({"user_id": ["u1"], "amount": [1.0]}).to_parquet(bad_raw / "p.parquet")
    with pytest.raises(DataValidationError, match="lacks required column"):
        build_features(bad_raw, spine.features_path)
    assert sorted(p.name for p in Path(spine.features_path).iterdir()) == before


def test_missing_model_is_a_clear_error(spine, platform):
    from mlplatform.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="no alias 'staging'.*champion"):
        ModelRegistry(platform).resolve("fraud@staging")


def test_training_history_artifact(spine, platform):
    import mlflow

    mlflow.set_tracking_uri(platform.mlflow_tracking_uri)
    history = mlflow.artifacts.load_dict(f"runs:/{spine.train.run_id}/training/evals_result.json")
    assert history["best_iteration"] == int(spine.train.params["best_iteration"])
    assert json.dumps(history)  # plain JSON, nothing pickled
