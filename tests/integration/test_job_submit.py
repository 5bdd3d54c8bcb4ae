"""The laptop-to-cluster door: `ray job submit --working-dir . -- python jobs/train.py ...`."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from mlplatform.registry import ModelRegistry
from tests.integration.conftest import submit_job

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_trains_and_registers(spine, ray_cluster, platform, tmp_path):
    cfg = yaml.safe_load((REPO / "jobs/configs/fraud_xgb.yaml").read_text())
    cfg["train"].update(num_boost_round=60, early_stopping_rounds=10)
    cfg["register"]["alias"] = "from-job"
    small = tmp_path / "job.yaml"
    small.write_text(yaml.safe_dump(cfg))
    versions_before = {v.version for v in ModelRegistry(platform).list_versions("fraud")}

    out = submit_job(ray_cluster, ["python", "jobs/train.py", "--config", str(small)])
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "succeeded" in log
    run_id = re.search(r"run_id: (\w+)", log).group(1)
    mv = ModelRegistry(platform).resolve("fraud@from-job")
    assert mv.version not in versions_before and mv.run_id == run_id
    assert ModelRegistry(platform).resolve("fraud@champion").version in versions_before


def test_job_with_bad_config_fails_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {num_boost_rounds: 5}\n")
    out = subprocess.run([sys.executable, str(REPO / "jobs/train.py"), "--config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "num_boost_rounds" in out.stderr
