"""Training straight from feature views (TrainConfig.feature_views): the feature store joins the
project's labelled events point-in-time on the cluster with the project's features and any
extra ones, the training set is reused while nothing changed, and the MLflow run records the
views' versions."""

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlplatform.errors import ConfigError

RAW = ["user_txn_count_24h", "merchant_fraud_rate_30d", "user_amount_mean_7d"]
LABEL_COLUMN = "is_fraud"


def test_the_fraud_features_from_views_match_the_spine_training_set(spine, platform):
    from mlplatform.training import TrainConfig
    from tests.projects import fraud_columns

    FEATURE_COLUMNS, VIEW_FEATURES = fraud_columns()["inputs"], fraud_columns()["features"]
    from mlplatform.training.data import training_data

    config = TrainConfig(feature_views={"features": VIEW_FEATURES})
    path = training_data(config, platform)
    assert path.name.startswith("views-")
    ours = pd.read_parquet(path).sort_values("transaction_id").reset_index(drop=True)
    spine_set = pd.read_parquet(spine.features_path).sort_values("transaction_id")
    spine_set = spine_set.reset_index(drop=True)
    assert len(ours) == len(spine_set)
    pd.testing.assert_frame_equal(ours[[*FEATURE_COLUMNS, LABEL_COLUMN]],
                                  spine_set[[*FEATURE_COLUMNS, LABEL_COLUMN]])
    # Same inputs: the set is found again, not rebuilt.
    files = {p: p.stat().st_mtime_ns for p in path.glob("*.parquet")}
    assert training_data(config, platform) == path
    assert {p: p.stat().st_mtime_ns for p in path.glob("*.parquet")} == files


def test_xgboost_trains_on_raw_view_features_and_logs_their_versions(spine, platform):
    from pathlib import Path

    from mlflow import MlflowClient

    from mlplatform.features import FeatureStore
    from mlplatform.training import TrainConfig, train_xgboost

    config = TrainConfig(feature_views={"features": RAW}, feature_columns=["amount", *RAW],
                         num_boost_round=60, early_stopping_rounds=10,
                         scaling={"num_workers": 2}, run_name="from-views")
    result = train_xgboost(config, platform)

    run = MlflowClient(platform.mlflow_tracking_uri).get_run(result.run_id)
    folder = Path(run.data.tags["features_path"])
    assert folder.name.startswith("views-")
    frame = pd.read_parquet(folder)
    # The request fields, the extra view features (raw, under their names: no model input has
    # them) beside the project's model inputs, and the label.
    assert {"amount", "country", *RAW, LABEL_COLUMN} <= set(frame.columns)
    assert set(RAW) <= set(pq.ParquetDataset(str(folder)).schema.names)
    base_rate = frame[LABEL_COLUMN].mean()
    assert result.metrics["val_auc_pr"] > 3 * base_rate, (result.metrics, base_rate)

    expected = FeatureStore(platform).feature_versions(RAW)
    assert len(expected) == 2          # user and merchant views
    for view, version in expected.items():
        assert run.data.tags[f"feature_version.{view}"] == version


def test_an_unknown_feature_reference_fails_before_any_run(spine, platform):
    from mlflow import MlflowClient

    from mlplatform.training import TrainConfig, train_xgboost

    client = MlflowClient(platform.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("fraud")
    before = len(client.search_runs([exp.experiment_id], max_results=1000))
    with pytest.raises(ConfigError, match="no_such_feature"):
        train_xgboost(TrainConfig(feature_views={"features": ["no_such_feature"]}), platform)
    with pytest.raises(ConfigError, match="versions pin"):
        train_xgboost(TrainConfig(feature_views={"features": RAW[:1],
                                                 "versions": {"merchant_stats": "v1"}}), platform)
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == before


def test_one_data_source_only():
    from mlplatform.training import TrainConfig

    with pytest.raises(ValueError, match="one data source"):
        TrainConfig(features_path="x", feature_views={"features": ["user_txn_count_24h"]})
