"""Laptop to cluster with token auth, and what every job costs (issue #7).

Each check runs as a user would, from another process: the raw ``ray job submit`` of
jobs/train.py to the session's ``ray start --head`` cluster (token auth on) succeeds, registers
the model and its MLflow run carries the whole job's cost, priced with the table the job was
given (``MLP_PRICE_TABLE``); ``mlp submit`` of a feature build (with
``--env``) follows it to success and the build gets its own MLflow run with its cost; without
the token both are refused with Ray's auth error; a failing job makes ``mlp submit`` exit 1 with
the job's error (``--no-follow`` exits 0 and prints how to follow it); ``mlp cost`` sums the
runs per model and job.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlplatform.registry import ModelRegistry
from tests.integration.conftest import submit_job
from tests.projects import FRAUD

REPO = Path(__file__).resolve().parents[2]
MLP = str(Path(sys.executable).parent / "mlp")
RAY = str(Path(sys.executable).parent / "ray")
MODEL = "fraud-submit"            # not `fraud`: other modules own that one
#: The price table the training job is given, as a cluster YAML gives its nodes (relative to the
#: job's working directory, the uploaded repository): not the built-in prices.
PRICE_TABLE = "cluster/gcp-gpu.yaml"


def _run(cmd: list[str], env: dict | None = None, timeout: float = 600,
         drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=full, timeout=timeout)
    out.log = out.stdout + out.stderr
    return out


def _fraud_copy(folder: Path, edit=None) -> Path:
    """A copy of the fraud example (a user's own project folder, outside the uploaded one),
    its project file changed by ``edit(data)``."""
    import shutil

    shutil.copytree(FRAUD, folder)
    if edit is not None:
        data = yaml.safe_load((folder / "mlplatform.yaml").read_text())
        edit(data)
        (folder / "mlplatform.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _typo(data: dict) -> None:
    data["models"]["xgboost"]["train"]["num_boost_rounds"] = 5      # a key the config refuses


def _pinned(ray_cluster) -> list[str]:
    """Point the job's driver at this cluster: Ray's job supervisor sets the driver's
    RAY_ADDRESS from ``auto``, i.e. /tmp/ray/ray_current_cluster, the last cluster *any* process
    on this machine started (other test sessions sharing the machine overwrite it), and Ray's
    state API follows RAY_ADDRESS unless RAY_API_SERVER_ADDRESS is set. Not needed where the
    head has its own ``--temp-dir`` or is alone on its machine."""
    return ["--env", f"MLP_RAY_ADDRESS={ray_cluster['address']}",
            "--env", f"RAY_API_SERVER_ADDRESS={ray_cluster['dashboard']}"]


def _mlflow_run(platform, run_id: str):
    from mlplatform import _mlflow

    return _mlflow.client(platform).get_run(run_id)


@pytest.fixture(scope="module")
def trained(spine, ray_cluster, platform, tmp_path_factory):
    """The raw door, as the README shows it: ``ray job submit --working-dir . -- python
    jobs/train.py --project <a copy of examples/fraud with a small xgboost model>``, with
    ``MLP_PRICE_TABLE`` set for the job as the cluster YAMLs set it on their nodes."""
    def small(data):
        data["models"]["xgboost"]["train"].update(num_boost_round=30, early_stopping_rounds=10)
        data["models"]["xgboost"]["register"] = {"name": MODEL, "alias": "candidate"}

    folder = _fraud_copy(tmp_path_factory.mktemp("submit") / "fraud", small)
    versions_before = {v.version for v in ModelRegistry(platform).list_versions(MODEL)}
    out = submit_job(ray_cluster, ["python", "jobs/train.py", "--project", str(folder),
                                   "--model", "xgboost"],
                     runtime_env={"env_vars": {"MLP_PRICE_TABLE": PRICE_TABLE}})
    out.log = out.stdout + out.stderr
    out.versions_before = versions_before
    return out


def test_ray_job_submit_trains_registers_and_records_the_cost(trained, platform):
    assert trained.returncode == 0, trained.log[-4000:]
    assert "succeeded" in trained.log
    run_id = re.search(r"run_id: (\w+)", trained.log).group(1)
    mv = ModelRegistry(platform).resolve(f"{MODEL}@candidate")
    assert mv.run_id == run_id and mv.version not in trained.versions_before

    from mlplatform.cluster.cost import DEFAULT_PRICES, load_price_table

    run = _mlflow_run(platform, run_id)
    m, t, p = run.data.metrics, run.data.tags, run.data.params
    # priced with the table the job was given, read from that table (not the built-in one)
    assert t["cost.price_table"] == PRICE_TABLE
    prices = load_price_table(REPO / t["cost.price_table"])
    assert prices.cpu_hour != DEFAULT_PRICES["cpu_hour"], "pick a table that tells them apart"
    assert p["cost.price.cpu_hour"] == f"{prices.cpu_hour:g}"
    assert m["cost.wall_s"] > 0 and m["cost.gpu_hours"] == 0
    # the whole job: the Ray tasks that built the training set, then 2 workers x 1 CPU (the
    # config's scaling) for the training's wall time
    assert m["cost.prep.cpu_hours"] > 0 and m["cost.prep.wall_s"] > 0
    assert m["cost.train.cpu_hours"] == pytest.approx(2 * m["cost.train.wall_s"] / 3600)
    assert m["cost.cpu_hours"] == pytest.approx(m["cost.prep.cpu_hours"]
                                                + m["cost.train.cpu_hours"])
    assert m["cost.wall_s"] >= m["cost.prep.wall_s"] + m["cost.train.wall_s"]
    assert m["cost.usd_estimate"] == pytest.approx(m["cost.cpu_hours"] * prices.cpu_hour)
    assert (t["mlplatform.job"], t["mlplatform.model"]) == ("train", MODEL)
    assert (t["cost.gpu_type"], t["cost.method"]) == ("none", "ray_tasks+scaling")
    assert p["cost.cpus"] == "2"


def test_a_job_with_a_bad_project_fails_clearly(tmp_path):
    bad = _fraud_copy(tmp_path / "fraud", _typo)
    out = subprocess.run([sys.executable, str(REPO / "jobs/train.py"), "--project", str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert "models.xgboost.train.num_boost_rounds" in out.stderr
    assert str(bad / "mlplatform.yaml") in out.stderr
    assert not (tmp_path / ".mlplatform").exists(), "a rejected project must change nothing"


def test_mlp_submit_builds_features_and_the_run_has_its_cost(ray_cluster, tmp_path):
    """The wrapper: prints the job id, says the project is outside the uploaded folder (and
    names it), follows the logs, exits 0. ``--env`` reaches the job; the build's Ray tasks are
    counted from the state API."""
    from mlplatform.config import PlatformConfig
    from mlplatform.datasets import RAW_DIR, write_transactions

    project = _fraud_copy(tmp_path / "fraud")
    root = tmp_path / "store"
    write_transactions(PlatformConfig(storage_root=root).path(*RAW_DIR), 3000, seed=0)
    out = _run([MLP, "submit", "build_features", "--project", str(project), "--address",
                ray_cluster["dashboard"], "--env", f"MLP_STORAGE_ROOT={root}",
                *_pinned(ray_cluster)])
    assert out.returncode == 0, out.log[-4000:]
    assert re.search(r"^job_id: raysubmit_\w+$", out.stdout, re.M), out.stdout[-2000:]
    assert "is outside the uploaded folder" in out.stdout
    assert "built user_activity: version" in out.stdout          # the job's logs, followed
    assert re.search(r"^job raysubmit_\w+ succeeded$", out.stdout, re.M)

    from mlplatform import _mlflow

    client = _mlflow.client(PlatformConfig(storage_root=root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`mlplatform.job` = 'build_features'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["mlplatform.feature_build"] == "true"
    assert run.data.tags["cost.method"] == "ray_tasks"      # measured from the state API
    assert run.data.tags["feature_version.user_activity"]
    assert run.data.metrics["cost.cpu_hours"] > 0 and run.data.metrics["cost.wall_s"] > 0
    assert run.info.status == "FINISHED"


def test_raw_ray_job_submit_without_the_token_is_refused(ray_cluster, tmp_path):
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    cmd = [RAY, "job", "submit", "--address", ray_cluster["dashboard"], "--", "echo", "hi"]
    token_vars = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    # RAY_AUTH_MODE=token and no token anywhere: Ray's client refuses to send the request
    no_token = _run(cmd, {"HOME": str(empty_home), "RAY_AUTH_MODE": "token"}, 120, token_vars)
    assert no_token.returncode != 0
    assert ("AuthenticationError: Token authentication is enabled but Ray couldn't find an "
            "authentication token" in no_token.log), no_token.log[-3000:]
    # a client without token mode sends no token: the cluster answers 401
    no_mode = _run(cmd, {"HOME": str(empty_home)}, 120, (*token_vars, "RAY_AUTH_MODE"))
    assert no_mode.returncode != 0
    assert "Authentication required" in no_mode.log, no_mode.log[-3000:]
    assert "Token authentication is enabled but no authentication token was found" in no_mode.log
    # the wrong token: 403
    wrong = _run(cmd, {"RAY_AUTH_TOKEN": "not-the-token", "RAY_AUTH_MODE": "token"}, 120)
    assert wrong.returncode != 0
    assert "Authentication failed" in wrong.log
    assert "the authentication token is invalid or incorrect" in wrong.log, wrong.log[-3000:]

    project = str(FRAUD)
    mlp = _run([MLP, "submit", "train", "--project", project, "--address",
                ray_cluster["dashboard"]], {"HOME": str(empty_home)}, 120, token_vars)
    assert mlp.returncode == 2
    assert "no Ray auth token" in mlp.stderr and "ray get-auth-token --generate" in mlp.stderr
    mlp_wrong = _run([MLP, "submit", "train", "--project", project, "--address",
                      ray_cluster["dashboard"]], {"RAY_AUTH_TOKEN": "not-the-token"}, 120)
    assert mlp_wrong.returncode == 1
    assert "refused the token" in mlp_wrong.stderr and "Authentication failed" in mlp_wrong.stderr


def test_mlp_submit_of_a_failing_job_exits_1_with_its_error(ray_cluster, tmp_path):
    bad = _fraud_copy(tmp_path / "fraud", _typo)                  # a typo the job refuses
    submit = [MLP, "submit", "train", "--project", str(bad), "--address",
              ray_cluster["dashboard"]]
    # --no-follow: submitted, the id and how to follow it printed, exit 0 at once
    detached = _run([*submit, "--no-follow"])
    assert detached.returncode == 0, detached.log[-3000:]
    follow = re.search(r"^follow it with: (ray job logs --follow --address \S+ (raysubmit_\w+))$",
                       detached.stdout, re.M)
    assert follow and f"job_id: {follow.group(2)}" in detached.stdout, detached.stdout
    logs = _run(follow.group(1).replace("ray", RAY, 1).split(), {"RAY_AUTH_MODE": "token"}, 300)
    assert "num_boost_rounds" in logs.log, logs.log[-3000:]    # the printed command works
    # followed: the job's status is the exit status, its error relayed
    out = _run(submit)
    assert out.returncode == 1, out.log[-3000:]
    assert re.search(r"error: job raysubmit_\w+ failed \(driver exit code 2\)", out.stderr), \
        out.stderr[-3000:]
    assert "num_boost_rounds" in out.stderr                    # the job's own error, relayed


def test_mlp_submit_argument_errors_exit_2():
    unknown = _run([MLP, "submit", "trian", "--project", "examples/fraud"])
    assert unknown.returncode == 2
    assert "unknown job 'trian'" in unknown.stderr and "build_features" in unknown.stderr
    missing = _run([MLP, "submit", "train", "--project", "examples/nope"])
    assert missing.returncode == 2 and "no project at examples/nope" in missing.stderr


def test_mlp_cost_sums_per_model_and_job(trained, storage_root, tmp_path):
    assert trained.returncode == 0, trained.log[-2000:]
    env = {"MLP_STORAGE_ROOT": str(storage_root)}
    out = _run([MLP, "cost", "--since", "7d"], env, 120)
    assert out.returncode == 0, out.log
    row = next(line for line in out.stdout.splitlines() if line.startswith(MODEL + " "))
    runs, wall_h, cpu_h = row.split()[1:4]
    assert int(runs) >= 1 and float(cpu_h) > 0, out.stdout
    assert re.search(r"^train\s+\d+", out.stdout, re.M) and "total" in out.stdout

    by_job = _run([MLP, "cost", "--since", "24h", "--by", "job"], env, 120)
    assert by_job.returncode == 0 and by_job.stdout.count("total") == 1
    assert not any(line.startswith(MODEL) for line in by_job.stdout.splitlines())
    future = _run([MLP, "cost", "--since", "2999-01-01"], env, 120)
    assert future.returncode == 0 and "no runs" in future.stdout
    bad = _run([MLP, "cost", "--since", "last week"], env, 120)
    assert bad.returncode == 2 and "7d, 24h, 30m" in bad.stderr
