"""The feature store's doors: `ray job submit ... jobs/build_features.py` and `mlp features ...`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlplatform.cli import app
from mlplatform.config import PlatformConfig
from mlplatform.datasets import RAW_DIR, make_transactions, save_transactions, write_transactions
from mlplatform.features import FeatureStore
from tests.integration.conftest import submit_job
from tests.projects import FRAUD

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job_root(ray_cluster, tmp_path_factory):
    """Run the build job once, into its own storage root, through the real job CLI."""
    root = tmp_path_factory.mktemp("feature-job")
    # The user's data, where the fraud project's source reads it (3,000 rows).
    write_transactions(PlatformConfig(storage_root=root).path(*RAW_DIR), 3000, seed=0)
    out = submit_job(ray_cluster, ["python", "jobs/build_features.py", "--project",
                                   "examples/fraud"],
                     runtime_env={"env_vars": {"MLP_STORAGE_ROOT": str(root)}})
    return root, out.returncode, out.stdout + out.stderr


def test_build_job_validates_builds_and_materializes(job_root):
    root, code, log = job_root
    assert code == 0, log[-4000:]
    assert "data contract 'raw_transactions'" in log and "checks passed" in log
    store = FeatureStore(PlatformConfig(storage_root=root, project=FRAUD))
    for view in store.repo.feature_views:
        assert f"built {view.name}: version" in log
        m = store.offline.manifest(view.name)
        assert m.num_rows > 0
        assert store.online.count(view.name) > 0
        assert store.online.get_watermark(view.name) is not None
    # 3,000 rows: the fewest buckets (FeatureStore.build_buckets), recorded on the job's run.
    from mlplatform import _mlflow

    client = _mlflow.client(PlatformConfig(storage_root=root))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`mlplatform.job` = 'build_features'")
    assert run.data.params["num_buckets"] == str(store.build_buckets()) == "8"


def test_cli_show_validate_and_materialize(job_root, monkeypatch):
    root, code, _ = job_root
    assert code == 0
    monkeypatch.setenv("MLP_STORAGE_ROOT", str(root))
    monkeypatch.setenv("MLP_PROJECT", str(FRAUD))      # the default project of every door
    runner = CliRunner()
    shown = runner.invoke(app, ["features", "show", "user_activity"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["join_keys"] == ["user_id"] and info["current_version"]["num_rows"] > 0
    assert info["online"]["entities"] > 0 and not info["current_version"]["stale_definition"]

    ok = runner.invoke(app, ["features", "validate"])
    assert ok.exit_code == 0, ok.output

    bad = pd.read_parquet(PlatformConfig(storage_root=root).path(*RAW_DIR))
    bad.loc[:2, "device_type"] = "smart_fridge"
    bad.loc[3:5, "amount"] = None
    bad_dir = root / "bad"
    save_transactions(bad, bad_dir)
    failed = runner.invoke(app, ["features", "validate", str(bad_dir)])
    assert failed.exit_code == 1
    assert "device_type" in failed.stdout and "amount" in failed.stdout

    again = runner.invoke(app, ["features", "materialize"])     # incremental: nothing new
    assert again.exit_code == 0, again.output
    assert "user_activity: 0 entities written" in again.stdout

    unknown = runner.invoke(app, ["features", "show", "nope"])
    assert unknown.exit_code == 1 and "no feature view 'nope'" in unknown.output


def test_build_job_refuses_bad_data_with_every_failure(ray_cluster, tmp_path):
    config = PlatformConfig(storage_root=tmp_path)
    df = make_transactions(500, seed=4)
    df.loc[:3, "country"] = "Atlantis"
    df.loc[4:6, "is_fraud"] = 3
    save_transactions(df, config.path(*RAW_DIR))
    out = subprocess.run(
        [sys.executable, str(REPO / "jobs/build_features.py"), "--project", str(FRAUD)],
        env={**os.environ, "MLP_STORAGE_ROOT": str(tmp_path), "RAY_ADDRESS": ray_cluster["address"],
             "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "country" in out.stderr and "is_fraud" in out.stderr
    assert not (tmp_path / "feature_store").exists()
