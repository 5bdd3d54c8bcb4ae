from pathlib import Path

import pytest

from mlplatform.config import PlatformConfig, allowed_keys
from mlplatform.errors import ConfigError


def test_defaults_derive_from_storage_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = PlatformConfig.load(env={})
    assert cfg.storage_root == tmp_path / ".mlplatform"
    assert cfg.mlflow_tracking_uri == f"sqlite:///{tmp_path / '.mlplatform' / 'mlflow.db'}"
    assert cfg.mlflow_registry_uri == cfg.mlflow_tracking_uri
    assert cfg.mlflow_artifact_location == (tmp_path / ".mlplatform" / "mlartifacts").as_uri()
    assert cfg.ray_address is None and cfg.experiment_name is None   # the project's name
    assert cfg.project is None                                         # ./mlplatform.yaml
    assert not (tmp_path / ".mlplatform").exists(), "loading must not create folders"


def test_precedence_defaults_yaml_env_overrides(tmp_path):
    f = tmp_path / "mlp.yaml"
    f.write_text(f"storage_root: {tmp_path / 'from-yaml'}\nexperiment_name: yaml-exp\n"
                 "ray_address: ray://yaml:10001\n")
    env = {"MLP_EXPERIMENT_NAME": "env-exp", "MLP_RAY_ADDRESS": "auto"}
    cfg = PlatformConfig.load(f, env=env)
    assert cfg.storage_root == tmp_path / "from-yaml"       # YAML beats default
    assert cfg.experiment_name == "env-exp"                 # env beats YAML
    assert cfg.ray_address == "auto"
    cfg = PlatformConfig.load(f, overrides={"experiment_name": "arg-exp"}, env=env)
    assert cfg.experiment_name == "arg-exp"                 # explicit override beats env


def test_config_path_from_env(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("experiment_name: from-mlp-config\n")
    assert PlatformConfig.load(env={"MLP_CONFIG": str(f)}).experiment_name == "from-mlp-config"
    # MLP_PROJECT names the project every door uses by default
    assert PlatformConfig.load(env={"MLP_PROJECT": "examples/wine"}).project.name == "wine"


def test_explicit_mlflow_uri_is_kept(tmp_path):
    cfg = PlatformConfig.load(overrides={"mlflow_tracking_uri": "http://head:5000"}, env={})
    assert cfg.mlflow_tracking_uri == "http://head:5000"
    assert cfg.mlflow_registry_uri == "http://head:5000"


def test_unknown_yaml_key_names_key_and_allowed_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("storge_root: /tmp/x\n")
    with pytest.raises(ConfigError) as exc:
        PlatformConfig.load(f, env={})
    msg = str(exc.value)
    assert "storge_root" in msg and str(f) in msg
    for key in allowed_keys():
        assert key in msg


def test_bad_value_names_key_and_source(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("experiment_name: ''\n")
    with pytest.raises(ConfigError, match=r"experiment_name.*config file"):
        PlatformConfig.load(f, env={})


def test_unknown_env_var_is_rejected():
    with pytest.raises(ConfigError, match="MLP_STORAGE_RUT"):
        PlatformConfig.load(env={"MLP_STORAGE_RUT": "/x"})


def test_process_variables_are_not_config_keys():
    cfg = PlatformConfig.load(env={"MLP_ACTOR": "ci-bot", "MLP_CLUSTER_AUTOSCALES": "1"})
    assert cfg == PlatformConfig.load(env={})


@pytest.mark.parametrize("content,match", [("- a\n- b\n", "mapping"), ("a: [\n", "not valid YAML")])
def test_malformed_file(tmp_path, content, match):
    f = tmp_path / "c.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        PlatformConfig.load(f, env={})


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        PlatformConfig.load(Path("/nonexistent/mlp.yaml"), env={})


def test_import_does_no_work(tmp_path):
    import subprocess
    import sys

    code = ("import sys, mlplatform, mlplatform.config, mlplatform.cli; "
            "heavy = [m for m in ('ray', 'mlflow', 'xgboost', 'torch') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, expected", [
    ("s3://bucket/ray_results?endpoint_override=127.0.0.1:9000&scheme=http",
     "s3://bucket/ray_results?endpoint_override=127.0.0.1:9000&scheme=http"),
    ("gs://bucket/ray_results", "gs://bucket/ray_results"),
    ("/mnt/shared/ray_results", "/mnt/shared/ray_results"),
    (None, "{root}/ray_results"),
])
def test_train_storage_path(tmp_path, value, expected):
    config = PlatformConfig.load(overrides={"storage_root": str(tmp_path),
                                            "checkpoint_storage": value}, env={})
    assert config.train_storage_path() == expected.format(root=tmp_path)


@pytest.mark.parametrize("value, match", [
    ("ray_results", "relative path"),
    ("ftp://host/ray_results", "scheme 'ftp://'"),
])
def test_checkpoint_storage_rejects_what_ray_train_cannot_share(value, match):
    with pytest.raises(ConfigError, match=match):
        PlatformConfig.load(overrides={"checkpoint_storage": value}, env={})
