"""The registry through the HTTP door: a real `mlflow server` process (SQLite backend, served
artifacts), real XGBoost models logged to it, promotion through gates, rollback, history and
the audit trail, driven through the library and through the `mlp` CLI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from tests.conftest import free_port, wait_for
from tests.projects import FRAUD

NAME = "fraud-http"
MLP = str(Path(sys.executable).with_name("mlp"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
         "--artifacts-destination", str(work / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/health", timeout=2).ok, 90, "mlflow server /health")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def http_platform(server, tmp_path_factory):
    from mlplatform.config import PlatformConfig

    root = tmp_path_factory.mktemp("http-storage")
    cfg = {"storage_root": str(root), "mlflow_tracking_uri": server,
           "experiment_name": "registry-over-http"}
    path = root / "platform.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return PlatformConfig(**cfg), path


@pytest.fixture(scope="module")
def holdout(spine):
    frame = pd.read_parquet(spine.features_path)
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    cut = ts.quantile(0.8)
    return frame[ts < cut], frame[ts >= cut].reset_index(drop=True)


def _log_model(platform, train: pd.DataFrame, rounds: int, depth: int) -> str:
    """Train a native XGBoost booster and log it to the server as a training run would."""
    import mlflow
    import xgboost

    from mlplatform import _mlflow
    from mlplatform.models import signature_for
    from tests.projects import fraud_columns

    FEATURE_COLUMNS = fraud_columns()["inputs"]
    experiment_id = _mlflow.ensure_experiment(platform)
    x = train[FEATURE_COLUMNS]
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": depth, "eta": 0.3},
                            xgboost.DMatrix(x, label=train["is_fraud"]), rounds)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        sample = x.head(5)
        mlflow.xgboost.log_model(booster, name="model", model_format="ubj",
                                 signature=signature_for(sample, booster.predict(
                                     xgboost.DMatrix(sample))), input_example=sample.head(2))
        mlflow.log_metric("val_auc_pr", float(np.clip(rounds / 100, 0, 1)))
    return run.info.run_id


@pytest.fixture(scope="module")
def models(http_platform, holdout):
    """A weak and a strong model registered on the server; the weak one is champion."""
    from mlplatform.registry import ModelRegistry

    platform, _ = http_platform
    train, _ = holdout
    reg = ModelRegistry(platform)
    weak = reg.register(_log_model(platform, train, rounds=1, depth=1), NAME)
    strong = reg.register(_log_model(platform, train, rounds=60, depth=5), NAME)
    reg.set_alias(NAME, "champion", weak.version, actor="setup")
    return reg, weak, strong


def test_promote_rollback_and_history_over_http(http_platform, models, holdout, tmp_path):
    from mlplatform.errors import PromotionRefused
    from mlplatform.registry import ModelRegistry

    platform, config_path = http_platform
    _, test = holdout
    reg, weak, strong = models
    assert weak.source.startswith("models:/") and int(strong.version) == int(weak.version) + 1
    gates = {"champion": {"metric": "auc_pr", "tolerance": 0.0}, "signature": True,
             "behavioural": True}
    # Models trained outside the platform name no project: the promotion is told which.
    decision = reg.promote(NAME, strong.version, gates=gates, holdout=test, actor="ci",
                           project=FRAUD)
    assert decision.accepted
    assert ModelRegistry(platform).resolve(f"{NAME}@champion").version == strong.version
    with pytest.raises(PromotionRefused, match="no_worse_than_champion"):
        reg.promote(NAME, weak.version, gates=gates, holdout=test, project=FRAUD)

    # The CLI over the same server: history, a rollback, the audit chain.
    env = {**os.environ, "MLP_ACTOR": "oncall"}
    out = subprocess.run([MLP, "registry", "rollback", NAME, "--reason", "pager", "--config",
                          str(config_path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"v{strong.version} -> v{weak.version}" in out.stdout
    assert reg.resolve(f"{NAME}@champion").version == weak.version
    out = subprocess.run([MLP, "registry", "history", NAME, "--config", str(config_path)],
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if "@champion" in line]
    assert [line.split()[2] for line in lines] == ["alias_set", "promote", "promote", "rollback"]
    assert "refused" in lines[2] and "oncall" in lines[3] and "(pager)" in lines[3]
    out = subprocess.run([MLP, "audit", "verify", "--config", str(config_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout
    # The audit events are mirrored to MLflow tags on the server.
    tags = reg.resolve(f"{NAME}/{weak.version}").tags
    assert any("rollback@champion ok by oncall: pager" in v
               for k, v in tags.items() if k.startswith("audit."))

    # Tampering is reported by the CLI with the line number.
    log = reg.audit.path
    backup = tmp_path / "backup.jsonl"
    shutil.copy(log, backup)
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"outcome": "ok"', '"outcome": "okay"')
    log.write_text("".join(lines))
    out = subprocess.run([MLP, "audit", "verify", "--config", str(config_path)],
                         capture_output=True, text=True, timeout=120)
    shutil.copy(backup, log)
    assert out.returncode == 1 and "line 2" in out.stderr, out.stderr


def test_a_refused_promotion_from_the_cli_lists_the_gates(http_platform, models, holdout,
                                                          tmp_path):
    platform, config_path = http_platform
    _, test = holdout
    _, _, strong = models
    data = tmp_path / "holdout.parquet"
    test.to_parquet(data)
    gates = tmp_path / "gates.yaml"
    gates.write_text(yaml.safe_dump({"gates": {"min_metrics": {"auc_pr": 0.999},
                                               "signature": True}}))
    from mlplatform.registry import ModelRegistry

    reg = ModelRegistry(platform)
    before = reg.resolve(f"{NAME}@champion").version
    out = subprocess.run([MLP, "registry", "promote", NAME, strong.version, "--gates", str(gates),
                          "--holdout", str(data), "--config", str(config_path),
                          "--project", str(FRAUD)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "REFUSED" in out.stdout and "FAIL min_metric:auc_pr" in out.stdout
    assert "PASS signature" in out.stdout and "< minimum 0.9990" in out.stdout
    assert reg.resolve(f"{NAME}@champion").version == before


def test_list_show_and_card_from_the_cli(http_platform, models, holdout, tmp_path):
    _, config_path = http_platform
    reg, weak, strong = models
    out = subprocess.run([MLP, "registry", "list", "--config", str(config_path)],
                         capture_output=True, text=True, timeout=120)
    champion = reg.resolve(f"{NAME}@champion").version
    assert out.returncode == 0 and f"{NAME}  @champion=v{champion}" in out.stdout, out.stderr
    out = subprocess.run([MLP, "registry", "list", NAME, "--config", str(config_path)],
                         capture_output=True, text=True, timeout=120)
    assert [line.split()[0] for line in out.stdout.splitlines()][:2] == \
        [f"v{strong.version}", f"v{weak.version}"]
    out = subprocess.run([MLP, "registry", "show", f"{NAME}/{strong.version}", "--config",
                          str(config_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"run_id: {strong.run_id}" in out.stdout
    assert "signature.inputs:" in out.stdout
    data = tmp_path / "holdout.parquet"
    holdout[1].head(3000).to_parquet(data)
    out = subprocess.run([MLP, "registry", "card", NAME, strong.version, "--data", str(data),
                          "--project", str(FRAUD), "--config", str(config_path)],
                         capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"# Model card: {NAME}" in out.stdout and strong.run_id in out.stdout
    assert "Holdout evaluation (3000 rows" in out.stdout and "### By country" in out.stdout
    card = Path(out.stderr.split("card: ")[1].split(" (+")[0])
    assert card.is_file() and card.with_suffix(".html").is_file()
    out = subprocess.run([MLP, "registry", "show", "../etc", "--config", str(config_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid model" in out.stderr
