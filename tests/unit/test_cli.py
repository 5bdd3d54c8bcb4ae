from typer.testing import CliRunner

from mlplatform.cli import app

runner = CliRunner()


def test_version_lists_libraries():
    out = runner.invoke(app, ["version"])
    assert out.exit_code == 0
    assert out.stdout.startswith("mlplatform ")
    assert "ray 2." in out.stdout and "mlflow" in out.stdout


def test_config_show_reflects_env_and_file(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("experiment_name: from-file\n")
    monkeypatch.setenv("MLP_STORAGE_ROOT", str(tmp_path / "root"))
    out = runner.invoke(app, ["config", "show", "--config", str(f)])
    assert out.exit_code == 0, out.output
    assert "from-file" in out.stdout
    assert f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}" in out.stdout


def test_bad_config_exits_2_with_message(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("nope: 1\n")
    out = runner.invoke(app, ["config", "show", "--config", str(f)])
    assert out.exit_code == 2
    assert "unknown key 'nope'" in out.output and "storage_root" in out.output


def test_train_with_a_bad_job_config_exits_2_naming_the_key(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("train: {model: lightgbm, num_boost_rounds: 5}\n")
    out = runner.invoke(app, ["train", "--config", str(f)])
    assert out.exit_code == 2
    assert "train.model" in out.output and "train.num_boost_rounds" in out.output


def test_shipped_training_job_configs_load():
    from mlplatform.pipelines.train_job import TrainJobConfig

    xgb = TrainJobConfig.from_yaml("jobs/configs/fraud_xgb.yaml")
    torch = TrainJobConfig.from_yaml("jobs/configs/fraud_torch.yaml")
    assert (xgb.train.model, torch.train.model) == ("xgboost", "torch")
    assert torch.train.failure.max_failures > 0 and xgb.registration.alias == "champion"
    gpu = TrainJobConfig.from_yaml("jobs/configs/fraud_torch_gpu.yaml")
    assert gpu.train.scaling.use_gpu and gpu.train.scaling.resources_per_worker["GPU"] == 1
    # the GPU job is the CPU one with other scaling, nothing else
    assert gpu.train.model_copy(update={"scaling": torch.train.scaling}) == torch.train
