"""The model CI/CD pipeline on the session's Ray cluster and MLflow: the happy path end to end,
a re-submitted job that reuses its run and version, bad data stopped at validation with no run
and no version, a refused promotion that moves no champion, and config errors before any work."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mlplatform.errors import ConfigError
from mlplatform.pipelines import CIConfig, ModelCIPipeline
from mlplatform.pipelines.ci import DIGEST_TAG, REPORT_ARTIFACT, STAGES
from tests.integration.conftest import N_ROWS, submit_job
from tests.projects import FRAUD

REPO = Path(__file__).resolve().parents[2]
MODEL = "fraud-ci"               # not `fraud`: other tests own that one
EXPERIMENT = "fraud-ci"
GATES = {"min_metrics": {"auc_roc": 0.7}, "behavioural": True, "signature": True,
         "champion": {"metric": "auc_pr", "tolerance": 0.01}}


def _config(**overrides) -> dict:
    """A small CI config; every test that should reuse the first run shares data and train."""
    cfg = {"project": str(FRAUD), "data": {"generate_rows": N_ROWS, "seed": 11},
           "train": {"num_boost_round": 40, "early_stopping_rounds": 10,
                     "experiment_name": EXPERIMENT},
           "register": {"name": MODEL}, "promote": True, "gates": GATES, "actor": "ci-test"}
    return {**cfg, **overrides}


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _all_runs(platform) -> list[str]:
    from mlplatform import _mlflow

    client = _mlflow.client(platform)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(ids, max_results=5000)] if ids else []


def _registry_state(platform) -> dict:
    """Every registered model's versions and aliases."""
    from mlplatform import _mlflow

    client = _mlflow.client(platform)
    return {m.name: (sorted(int(v.version) for v in client.search_model_versions(
        f"name = '{m.name}'")), dict(client.get_registered_model(m.name).aliases or {}))
        for m in client.search_registered_models()}


@pytest.fixture(scope="module")
def first(ray_cluster, platform):
    """One full pipeline run of the small config (promote: true, inline gates)."""
    lines: list[str] = []
    report = ModelCIPipeline(platform, echo=lines.append).run(CIConfig(**_config()))
    return report, lines


def test_happy_path_runs_every_stage_and_promotes_the_first_version(first, platform):
    import mlflow

    from mlplatform import _mlflow
    from mlplatform.registry import ModelRegistry

    report, lines = first
    assert report.ok, report.table()
    assert [s.name for s in report.stages] == list(STAGES)
    assert all(s.status == "ok" and s.seconds > 0 for s in report.stages), report.table()
    assert not report.reused_run and report.stage("train").details["reused"] is False
    # progress: a line as each stage starts and ends
    assert sum(f"] {name}: " in line for line in lines for name in STAGES) == 2 * len(STAGES)

    reg = ModelRegistry(platform)
    versions = reg.list_versions(MODEL)
    assert [v.version for v in versions] == [report.version]
    mv = versions[0]
    assert mv.run_id == report.run_id and mv.tags[DIGEST_TAG] == report.input_digest
    assert reg.resolve(f"{MODEL}@challenger").version == report.version
    assert reg.resolve(f"{MODEL}@champion").version == report.version   # no champion before
    promote = report.stage("promote")
    assert "ACCEPTED" in promote.message
    assert {g["name"] for g in promote.details["gates"]} >= {"behavioural", "min_metric:auc_roc"}
    behavioural = report.stage("behavioural")
    assert set(behavioural.details["checks"]) == {"invariance_transaction_id",
                                                  "directional_amount"}

    run = _mlflow.client(platform).get_run(report.run_id)
    assert run.data.tags[DIGEST_TAG] == report.input_digest
    assert run.data.params["num_boost_round"] == "40"
    # the training's cost, measured by the TrainingMeter (CPU only here: no GPU type)
    assert run.data.tags["mlplatform.job"] == "ci_pipeline"
    assert run.data.tags["cost.gpu_type"] == "none" and run.data.tags["cost.method"] == "scaling"
    assert run.data.metrics["cost.cpu_hours"] > 0 and run.data.metrics["cost.gpu_hours"] == 0
    logged = mlflow.artifacts.load_dict(f"runs:/{report.run_id}/{REPORT_ARTIFACT}")
    assert logged["ok"] is True and logged["version"] == report.version
    assert [s["status"] for s in logged["stages"]] == ["ok"] * len(STAGES)
    assert report.stage("evaluate").details["rows"] > 0


def test_resubmitted_job_reuses_the_run_and_the_version(first, ray_cluster, platform, tmp_path):
    from mlplatform.registry import ModelRegistry

    report, _ = first
    runs_before = set(_all_runs(platform))
    job = _write(tmp_path / "ci.yaml", _config())
    # Ray points a job's driver at the machine's most recently started cluster (RAY_ADDRESS=auto
    # resolved through /tmp/ray): name this one, in case other test sessions run Ray here too.
    out = submit_job(ray_cluster, ["python", "jobs/ci_pipeline.py", "--config", str(job)],
                     runtime_env={"env_vars": {"MLP_RAY_ADDRESS": ray_cluster["address"]}})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert f"reused run {report.run_id}" in log
    assert re.search(rf"register\s+ok .*already holds run {report.run_id}", log), log[-3000:]
    assert f"registered: models:/{MODEL}/{report.version}" in log
    reg = ModelRegistry(platform)
    assert [v.version for v in reg.list_versions(MODEL)] == [report.version]   # no duplicate
    assert reg.resolve(f"{MODEL}@champion").version == report.version
    assert set(_all_runs(platform)) == runs_before                            # no new run


def test_bad_dataset_stops_at_validation_with_no_run_and_no_version(first, platform, tmp_path):
    from mlplatform.cli.pipeline import pipeline_app

    raw = pd.read_parquet(platform.path("raw", "transactions")).head(2_000).reset_index(drop=True)
    raw.loc[[3, 40, 41], "amount"] = [-5.0, -1.0, -0.5]       # 3 below the contract's min 0
    raw.loc[[12, 13], "user_id"] = None                       # 2 null ids
    bad = tmp_path / "bad_raw"
    bad.mkdir()
    raw.to_parquet(bad / "part-0.parquet", index=False)
    cfg = _write(tmp_path / "ci.yaml", _config(data={"raw_path": str(bad)}))
    runs_before, registry_before = set(_all_runs(platform)), _registry_state(platform)
    offline_before = sorted(p.name for p in platform.path("offline").rglob("versions/*"))

    result = CliRunner().invoke(pipeline_app, ["run", "--config", str(cfg)])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "pipeline FAILED at validate" in out
    # the report names every failing check with its count
    failing = re.findall(r"^\s+(\w+)\s+(\w+)\s+(\d+)\s", out, re.M)
    assert ("min", "amount", "3") in failing and ("nullable", "user_id", "2") in failing, out
    assert re.search(r"train\s+│\s+skipped", out) or "not run: validate failed" in out
    assert set(_all_runs(platform)) == runs_before           # no MLflow run
    assert _registry_state(platform) == registry_before      # no version, no alias moved
    assert sorted(p.name for p in platform.path("offline").rglob("versions/*")) == offline_before


def test_refused_promotion_moves_no_champion_and_lists_the_gate(first, platform, tmp_path):
    from mlplatform.registry import ModelRegistry

    report, _ = first
    gates = _write(tmp_path / "gates.yaml", {"gates": {"min_metrics": {"auc_pr": 0.999}}})
    runs_before = set(_all_runs(platform))
    name = "fraud-ci-strict"
    refused = ModelCIPipeline(platform, echo=lambda _l: None).run(
        CIConfig(**_config(register={"name": name}, gates=str(gates))))
    assert not refused.ok and refused.failed_stage.name == "promote", refused.table()
    assert refused.run_id == report.run_id and refused.reused_run   # same inputs: not retrained
    assert set(_all_runs(platform)) == runs_before
    msg = refused.stage("promote").message
    assert "REFUSED" in msg and "min_metric:auc_pr" in msg and "0.9990" in msg
    failed = [g for g in refused.stage("promote").details["gates"] if not g["passed"]]
    assert [g["name"] for g in failed] == ["min_metric:auc_pr"]
    assert failed[0]["numbers"]["minimum"] == 0.999 and failed[0]["numbers"]["value"] < 0.999
    reg = ModelRegistry(platform)
    assert reg.alias_holder(name, "champion") is None          # the champion did not move
    assert reg.alias_holder(name, "challenger") == refused.version
    logged = json.loads(Path(_download(platform, refused.run_id)).read_text())
    assert logged["ok"] is False and logged["stages"][-1]["status"] == "failed"


def _download(platform, run_id: str) -> str:
    import mlflow

    from mlplatform import _mlflow

    _mlflow.client(platform)
    return mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{REPORT_ARTIFACT}")


def test_config_errors_name_the_file_and_key_before_any_work(tmp_path, platform):
    bad = _write(tmp_path / "bad.yaml", {"train": {"num_boost_rounds": 5}, "promot": True})
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*'train'.*num_boost_rounds.*'promot'"):
        CIConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="features_path"):
        CIConfig.from_yaml(_write(tmp_path / "fp.yaml", {"train": {"features_path": "x"}}))
    with pytest.raises(ConfigError, match="min_metric"):   # gates checked before any stage
        ModelCIPipeline(platform).run(CIConfig(promote=True, gates={"min_metric": {"x": 1}}))
    with pytest.raises(ConfigError, match="invalid model name"):
        ModelCIPipeline(platform).run(CIConfig(register={"name": "../etc"}))
    out = subprocess.run([sys.executable, str(REPO / "jobs/ci_pipeline.py"), "--config", str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "num_boost_rounds" in out.stderr
