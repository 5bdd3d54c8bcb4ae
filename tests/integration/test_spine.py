"""The spine end to end on the shared cluster: data -> contract gate -> feature store (offline,
online, point-in-time training set) -> Ray Train -> MLflow -> registry."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlplatform.registry import ModelRegistry, load_model
from tests.integration.conftest import N_ROWS
from tests.projects import fraud_columns, project

FEATURE_COLUMNS = fraud_columns()["inputs"]
EXPERIMENT = "fraud"     # the project's name: its default MLflow experiment


def test_raw_and_training_set_written(spine, platform):
    from mlplatform.features import FeatureStore

    assert pq.ParquetDataset(str(spine.raw_path)).read().num_rows == N_ROWS
    feats = pd.read_parquet(spine.features_path)
    assert len(feats) == N_ROWS
    assert set(FEATURE_COLUMNS) <= set(feats.columns)
    assert feats["transaction_id"].is_unique
    # Point-in-time features discriminate: fraud is far more unusual for its user.
    by_label = feats.groupby("is_fraud")["amount_z_user_7d"].median()
    assert by_label[1] > by_label[0] + 0.5
    # Every feature version used is recorded (immutable, still readable) in the run and on
    # the registered version.
    from mlflow import MlflowClient

    store = FeatureStore(platform)
    assert set(spine.feature_versions) == {v.name for v in store.repo.feature_views}
    tags = MlflowClient(platform.mlflow_tracking_uri).get_run(spine.train.run_id).data.tags
    for view, version in spine.feature_versions.items():
        assert store.offline.manifest(view, version).num_rows > 0
        assert tags[f"feature_version.{view}"] == version
        assert spine.model_version.tags[f"feature_version.{view}"] == version


def test_training_set_never_sees_its_own_transaction(spine):
    """The as-of time is just before each event: no row counts itself or its label."""
    raw = pd.read_parquet(spine.raw_path)
    feats = pd.read_parquet(spine.features_path).set_index("transaction_id")
    # A user's first transaction has no history at all, whatever its own amount.
    first = raw.sort_values("event_timestamp").drop_duplicates("user_id")["transaction_id"]
    assert (feats.loc[first, "user_txn_count_7d"] == 0).all()
    assert (feats.loc[first, "hours_since_prev"] == 720.0).all()


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
    """A training set missing a column is refused before anything is logged."""
    import shutil

    from mlflow import MlflowClient

    from mlplatform.errors import DataValidationError
    from mlplatform.training import TrainConfig, train_xgboost

    bad = tmp_path / "bad_features"
    bad.mkdir()
    pd.read_parquet(spine.features_path).drop(columns=["amount_z_user_7d"]).to_parquet(
        bad / "part.parquet")
    shutil.copy(spine.features_path / "_training_set.json", bad)   # its lineage, as written
    client = MlflowClient(platform.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs_before = len(client.search_runs([exp.experiment_id]))
    versions_before = len(ModelRegistry(platform).list_versions("fraud"))
    with pytest.raises(DataValidationError, match="amount_z_user_7d"):
        train_xgboost(TrainConfig(features_path=bad), platform)
    assert len(client.search_runs([exp.experiment_id])) == runs_before
    assert len(ModelRegistry(platform).list_versions("fraud")) == versions_before


def test_data_failing_its_contract_stops_the_spine_before_mlflow(spine, platform, tmp_path):
    """The gate runs first: raw data that breaks the contract makes no run, no offline
    version and no training set; the error lists every failing check."""
    from mlflow import MlflowClient

    from mlplatform.config import PlatformConfig
    from mlplatform.datasets import RAW_DIR, save_transactions
    from mlplatform.errors import DataValidationError
    from mlplatform.pipelines import build_features

    bad = pd.read_parquet(spine.raw_path)
    bad.loc[:4, "amount"] = -1.0
    bad.loc[5:6, "is_fraud"] = 7
    bad.loc[7:8, "transaction_id"] = bad.loc[9, "transaction_id"]
    # Same MLflow DB as the spine, separate data: only the data is bad.
    cfg = PlatformConfig(storage_root=tmp_path, mlflow_tracking_uri=platform.mlflow_tracking_uri)
    save_transactions(bad, cfg.path(*RAW_DIR))
    client = MlflowClient(platform.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs_before = len(client.search_runs([exp.experiment_id]))
    with pytest.raises(DataValidationError) as exc:
        build_features(cfg, project("fraud"))
    for name in ("amount", "is_fraud", "transaction_id"):
        assert name in str(exc.value)
    assert len(client.search_runs([exp.experiment_id])) == runs_before
    assert not (tmp_path / "feature_store").exists()
    assert not (tmp_path / "training_sets").exists()


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
