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


def test_train_with_a_bad_project_exits_2_naming_the_file_and_keys(tmp_path):
    """A bad key fails before any Ray or MLflow work, naming the project file and the key."""
    import shutil

    import yaml

    from tests.projects import FRAUD

    shutil.copytree(FRAUD, tmp_path / "fraud")
    file = tmp_path / "fraud" / "mlplatform.yaml"
    data = yaml.safe_load(file.read_text())
    data["models"]["xgboost"]["train"].update(model="lightgbm", num_boost_rounds=5)
    file.write_text(yaml.safe_dump(data))
    out = runner.invoke(app, ["train", "--project", str(tmp_path / "fraud")])
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert str(file) in text.replace("│", "").replace(" ", "") or "mlplatform.yaml" in text
    assert "models.xgboost.train.model" in text and "models.xgboost.train.num_boost_rounds" in text


def test_the_fraud_example_s_model_configs():
    from mlplatform.pipelines import register_spec, train_config
    from tests.projects import project

    fraud = project("fraud")
    xgb, torch = train_config(fraud, "xgboost"), train_config(fraud, "torch")
    assert (xgb.model, torch.model) == ("xgboost", "torch")
    assert torch.failure.max_failures > 0 and register_spec(fraud, "xgboost")[1] == "champion"
    gpu = train_config(fraud, "torch_gpu")
    assert gpu.scaling.use_gpu and gpu.scaling.resources_per_worker["GPU"] == 1
    # the GPU model is the CPU one with other scaling, nothing else
    assert gpu.model_copy(update={"scaling": torch.scaling}) == torch
