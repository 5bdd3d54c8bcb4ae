"""Fault tolerance and fail-fast checks of the XGBoost trainer on the shared cluster."""

import pytest

from mlplatform.errors import ConfigError, TrainingError

ROUNDS, EVERY, KILL_AT = 60, 10, 25


def _config(spine, **over):
    from mlplatform.training import TrainConfig

    return TrainConfig(features_path=spine.features_path, num_boost_round=ROUNDS,
                       early_stopping_rounds=0, checkpoint={"frequency": EVERY}, **over)


def _kill(marker):
    return [{"target": "tests.integration.chaos:die_once",
             "kwargs": {"at_round": KILL_AT, "rank": 1, "marker": str(marker)}}]


def test_a_killed_worker_resumes_from_the_latest_checkpoint_on_s3(
        spine, platform, s3_server, tmp_path, monkeypatch):
    """The interrupted run keeps its checkpoints on object storage (``checkpoint_storage`` =
    an ``s3://`` URI, the launcher YAMLs' setting), served over HTTP by a real S3 API server:
    the restarted workers resume from what they read back from there."""
    import pyarrow.fs
    from mlflow import MlflowClient

    from mlplatform.config import PlatformConfig
    from mlplatform.training import train_xgboost
    from tests.integration.conftest import S3_CREDENTIALS

    clean = train_xgboost(_config(spine, run_name="uninterrupted"), platform)
    for key, value in S3_CREDENTIALS.items():      # the workers got them from their node's env
        monkeypatch.setenv(key, value)
    uri = s3_server("mlp-checkpoints", "ray_results")
    s3, _ = pyarrow.fs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    s3.create_dir("mlp-checkpoints")               # the bucket, made beforehand as on a cloud
    on_s3 = PlatformConfig(**{**platform.model_dump(), "checkpoint_storage": uri})
    marker = tmp_path / "killed"
    resumed = train_xgboost(_config(spine, run_name="killed-once", failure={"max_failures": 2},
                                    xgb_callbacks=_kill(marker)), on_s3)
    assert marker.exists(), "the worker was never killed: the test did not test anything"
    # The run folder and its checkpoints are in the bucket, nothing under the local root.
    assert resumed.checkpoint_path.startswith("mlp-checkpoints/ray_results/killed-once-")
    assert s3.get_file_info(f"{resumed.checkpoint_path}/model.ubj").size > 0
    assert not list(platform.path("ray_results").glob("killed-once-*"))
    # Resumed once, from a checkpoint taken before the kill (Ray Train registers checkpoints
    # asynchronously, so the newest one may not have landed yet), not from scratch.
    (at,) = resumed.params["resumed_at_rounds"]
    assert 0 < at <= KILL_AT and at % EVERY == 0
    assert resumed.params["rounds_trained"] == ROUNDS
    run = MlflowClient(platform.mlflow_tracking_uri).get_run(resumed.run_id)
    assert run.data.params["resumed_at_rounds"] == f"[{at}]"
    # The history spans the resume: one value per round, no gap and no repeat.
    history = MlflowClient(platform.mlflow_tracking_uri).get_metric_history(
        resumed.run_id, "validation_aucpr")
    assert sorted(m.step for m in history) == list(range(ROUNDS))
    rel = abs(resumed.metrics["val_auc_pr"] - clean.metrics["val_auc_pr"]) / clean.metrics["val_auc_pr"]
    # A resumed run is not bit-identical to an uninterrupted one (the restarted workers read
    # their shards anew): 1.03% apart once (2026-12-07, the resumed run the better), <1% before.
    assert rel < 0.02, (resumed.metrics, clean.metrics)


def test_without_failure_budget_a_killed_worker_fails_the_run_and_logs_nothing(
        spine, platform, tmp_path):
    from mlflow import MlflowClient

    from mlplatform.training import train_xgboost

    client = MlflowClient(platform.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(platform.experiment_name or "fraud")  # the project's
    runs_before = len(client.search_runs([exp.experiment_id], max_results=1000))
    with pytest.raises(TrainingError, match="max_failures=0"):
        train_xgboost(_config(spine, run_name="killed-no-retry",
                              xgb_callbacks=_kill(tmp_path / "killed")), platform)
    assert (tmp_path / "killed").exists()
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == runs_before


def test_more_workers_than_the_cluster_holds_fails_fast(spine, platform):
    from mlplatform.training import ScalingSpec, train_xgboost

    big = ScalingSpec(num_workers=3, resources_per_worker={"CPU": 4})
    with pytest.raises(ConfigError, match="num_workers"):
        train_xgboost(_config(spine, scaling=big), platform)


def test_a_missing_label_column_fails_fast(spine, platform):
    from mlplatform.errors import DataValidationError
    from mlplatform.training import train_xgboost

    with pytest.raises(DataValidationError, match="is_chargeback"):
        train_xgboost(_config(spine, label="is_chargeback"), platform)
