"""train_torch on the shared Ray cluster: 2 DDP workers on the spine's training set, the MLflow
run it logs, and the registered model loaded by serving's loader (no pickle anywhere)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

EPOCHS = 4
MODEL_NAME = "fraud-torch"


@pytest.fixture(scope="module")
def trained(ray_cluster, platform, spine):
    from mlplatform.pipelines import train_config
    from mlplatform.training.torch_train import train_torch
    from tests.projects import project

    # The fraud example's torch model, as its project declares it (task, inputs, embeddings).
    config = train_config(
        project("fraud"), "torch", features_path=str(spine.features_path),
        experiment_name="torch-training", run_name="torch-2-workers",
        torch={"epochs": EPOCHS, "batch_size": 256, "hidden_sizes": [64, 32],
               "learning_rate": 3e-3},
        scaling={"num_workers": 2}, checkpoint={"frequency": 2})
    return config, train_torch(config, platform)


@pytest.fixture(scope="module")
def validation(trained, spine):
    config, result = trained
    frame = pd.read_parquet(spine.features_path)
    cutoff = pd.Timestamp(result.params["split_cutoff"])
    ts = pd.to_datetime(frame[config.timestamp_column], utc=True)
    return frame[ts < cutoff], frame[ts >= cutoff]


def test_validation_metrics_beat_the_base_rate(trained, validation):
    _, result = trained
    _, valid = validation
    base_rate = valid["is_fraud"].mean()
    assert 0.005 < base_rate < 0.1
    # Measured (4 epochs, 2 workers): AUC-PR ~0.62, AUC-ROC ~0.96, log loss ~0.046.
    assert result.metrics["val_auc_pr"] > 0.4 > 10 * base_rate, result.metrics
    assert result.metrics["val_auc_roc"] > 0.9, result.metrics
    assert result.metrics["val_logloss"] < 0.1, result.metrics  # a constant base-rate guess: ~0.1


def test_mlflow_run_has_params_history_and_final_metrics(trained, platform):
    from mlflow import MlflowClient

    config, result = trained
    client = MlflowClient(platform.mlflow_tracking_uri)
    run = client.get_run(result.run_id)

    params = run.data.params
    assert params["num_workers"] == "2" and params["epochs"] == str(EPOCHS)
    assert json.loads(params["hidden_sizes"]) == [64, 32]
    assert json.loads(params["categorical"]) == config.torch.categorical
    assert json.loads(params["resumed_at_epochs"]) == []
    assert params["amp"] == "False" and params["use_gpu"] == "False" and params["device"] == "cpu"
    assert "split_cutoff" in params and int(params["train_rows"]) > int(params["validation_rows"])
    assert run.data.tags["mlplatform.trainer"] == "torch"

    for name in ("train_loss", "validation_loss", "validation_auc_pr", "validation_auc_roc"):
        history = client.get_metric_history(result.run_id, name)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), name
    by_step = {m.step: m.value for m in client.get_metric_history(result.run_id, "train_loss")}
    assert by_step[EPOCHS - 1] < by_step[0]
    last_pr = {m.step: m.value for m in client.get_metric_history(result.run_id, "validation_auc_pr")}
    for final in ("val_auc_pr", "val_auc_roc", "val_logloss"):
        assert run.data.metrics[final] == pytest.approx(result.metrics[final])
    assert result.metrics["val_auc_pr"] == pytest.approx(last_pr[EPOCHS - 1])


def test_run_has_evaluation_shap_and_reference_profile_artifacts(trained, platform, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    _, result = trained
    client = MlflowClient(platform.mlflow_tracking_uri)
    names = {a.path for folder in ("evaluation", "explain", "profile", "training")
             for a in client.list_artifacts(result.run_id, folder)}
    assert {"evaluation/pr_curve.png", "evaluation/confusion_matrix.json",
            "evaluation/calibration.png", "explain/shap_importance.json",
            "profile/reference_profile.json", "training/history.json",
            "training/arch.json"} <= names
    importance = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{result.run_id}/explain/shap_importance.json", dst_path=str(tmp_path))).read_text())
    assert importance["model_kind"] == "torch"
    # The evaluation scored the logged model on the same validation rows as the last epoch.
    run = client.get_run(result.run_id)
    assert run.data.metrics["eval_auc_pr"] == pytest.approx(result.metrics["val_auc_pr"], abs=2e-3)


def test_model_is_a_pickle_free_pyfunc_with_signature(trained, tmp_path):
    import mlflow

    config, result = trained
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(tmp_path)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())

    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlplatform.models.torch_net"
    assert mlmodel["metadata"]["mlplatform"]["task"] == "binary"
    assert "python_model" not in pyfunc
    assert sorted(p.name for p in (local / pyfunc["data"]).iterdir()) == ["arch.json", "model.pt"]
    assert not list(local.rglob("*.pkl"))
    inputs = [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])]
    assert inputs == config.feature_columns


def test_standardisation_statistics_come_from_the_training_split(trained, validation, tmp_path):
    import mlflow

    config, result = trained
    train, _ = validation
    arch = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{result.run_id}/training/arch.json", dst_path=str(tmp_path))).read_text())

    assert len(train) == int(result.params["train_rows"])
    numeric = [c for c in config.feature_columns if c not in config.torch.categorical]
    assert list(arch["numeric_means"]) == numeric
    values = train[numeric].replace([np.inf, -np.inf], np.nan)
    np.testing.assert_allclose([arch["numeric_means"][c] for c in numeric],
                               values.mean().to_numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose([arch["numeric_stds"][c] for c in numeric],
                               values.std(ddof=0).replace(0.0, 1.0).to_numpy(), rtol=1e-6)


def test_checkpoint_holds_the_model_optimizer_and_history(trained):
    _, result = trained
    ckpt = Path(result.checkpoint_path)
    assert {p.name for p in ckpt.iterdir()} >= {"model.pt", "arch.json", "optimizer.pt",
                                                "train_state.json"}
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["epoch"] == EPOCHS - 1 and state["resumed_at"] == []
    assert len(state["history"]["validation_auc_pr"]) == EPOCHS


def test_registered_version_loads_for_serving_and_scores_like_the_saved_model(
        trained, validation, platform, tmp_path):
    import mlflow

    from mlplatform.models.torch_net import load_torch_model
    from mlplatform.registry import ModelRegistry, load_model

    config, result = trained
    _, valid = validation
    registry = ModelRegistry(platform)
    mv = registry.register(result.model_uri, MODEL_NAME, alias="challenger")

    loaded = load_model(registry, f"{MODEL_NAME}@challenger")

    assert loaded.kind == "torch" and loaded.version.version == mv.version
    assert loaded.feature_names == config.feature_columns
    rows = valid.head(500)
    scores = loaded.predict(rows)
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(tmp_path)))
    data = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["data"]
    np.testing.assert_array_equal(scores, load_torch_model(local / data).predict(rows))
    np.testing.assert_array_equal(
        scores, mlflow.pyfunc.load_model(result.model_uri).predict(rows[config.feature_columns]))
    assert ((scores > 0) & (scores < 1)).all()
    # It ranks frauds above legitimate rows on these validation rows too.
    frauds = rows["is_fraud"] == 1
    assert frauds.any() and scores[frauds.to_numpy()].mean() > 3 * scores[~frauds.to_numpy()].mean()


def test_streaming_ingest_learns_as_the_cached_shard_does(trained, platform):
    """`torch.cache_data: false` (batches streamed from Ray Data every epoch, for shards larger
    than a worker's memory) trains the same network to a comparable quality."""
    from mlplatform.training.torch_train import train_torch

    config, cached = trained
    streamed = train_torch(config.model_copy(update={
        "run_name": "torch-streamed",
        "torch": config.torch.model_copy(update={"cache_data": False})}), platform)
    assert streamed.params["cache_data"] is False and cached.params["cache_data"] is True
    assert streamed.metrics["val_auc_roc"] > 0.9, streamed.metrics
    assert abs(streamed.metrics["val_auc_pr"] - cached.metrics["val_auc_pr"]) < 0.1
