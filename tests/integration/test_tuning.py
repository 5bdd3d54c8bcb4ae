"""The notebook door: `sweep()` on the shared Ray cluster, tracked in MLflow, and the shipped
notebook executed against the same cluster."""

import ast
import os
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import xgboost

from mlplatform import _mlflow
from mlplatform.errors import ConfigError
from mlplatform.training import TrainConfig
from mlplatform.training.tuning import sweep

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "fraud"       # the project's name: its default MLflow experiment
ROUNDS = 40
SPACE = {"params.max_depth": {"randint": [1, 8]}, "params.eta": {"loguniform": [0.02, 0.4]}}
PARENT = "tags.`mlflow.parentRunId` = '{}'"


@pytest.fixture(scope="module")
def swept(spine, platform):
    """Six trials, ASHA (rungs at 5 and 15 rounds), early stopping off: a trial that trained
    fewer than ROUNDS rounds was stopped by ASHA."""
    config = TrainConfig(features_path=spine.features_path, num_boost_round=ROUNDS,
                         early_stopping_rounds=0, run_name="test-sweep")
    # A notebook user may have made their own experiment active: the sweep must not care, and
    # must leave it active.
    theirs = _mlflow.ensure_experiment(platform, "someone-elses-experiment")
    mlflow.set_experiment(experiment_id=theirs)
    df = sweep(config, SPACE, num_samples=6, max_concurrent=2, scheduler="asha",
               search_alg="random", grace_period=5, reduction_factor=3, platform=platform)
    assert mlflow.tracking.fluent._get_experiment_id() == theirs
    yield df
    mlflow.tracking.fluent._active_experiment_id = None


def test_sweep_returns_trials_sorted_best_first(swept, spine):
    assert len(swept) == 6 and swept["status"].isin(["completed", "stopped_early"]).all()
    assert swept["val_auc_pr"].is_monotonic_decreasing
    assert swept["params.max_depth"].between(1, 7).all()
    assert swept["params.eta"].between(0.02, 0.4).all()
    assert swept["run_id"].notna().all() and swept["trial_id"].is_unique
    label = "is_fraud"
    positives = pd.read_parquet(spine.features_path, columns=[label])[label].mean()
    assert swept["val_auc_pr"].iloc[0] > 10 * positives  # far above a constant score
    assert swept.attrs["best_run_id"] == swept["run_id"].iloc[0]
    assert swept.attrs["best_params"] == {k: swept[k].iloc[0].item() for k in SPACE}


def test_asha_stopped_trailing_trials_at_a_rung(swept):
    stopped = swept[swept["stopped_early"]]
    finished = swept[~swept["stopped_early"]]
    assert len(stopped) >= 1 and len(finished) >= 1
    assert set(stopped["rounds"]) <= {5, 15}        # ASHA's rungs: grace 5, factor 3, 40 rounds
    assert (finished["rounds"] == ROUNDS).all()
    # ASHA stops the trailing trials: the best trial trained every round.
    assert swept["rounds"].iloc[0] == ROUNDS


def test_mlflow_has_a_parent_run_with_one_child_per_trial(swept, platform):
    client = _mlflow.client(platform)
    parent = client.get_run(swept.attrs["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "test-sweep"
    assert parent.data.params["num_samples"] == "6" and parent.data.params["scheduler"] == "asha"
    assert parent.data.params["search_alg"] == "random"
    assert '"params.eta": {"loguniform": [0.02, 0.4]}' in parent.data.params["search_space"]
    assert parent.data.metrics["best_val_auc_pr"] == pytest.approx(swept["val_auc_pr"].iloc[0])
    assert parent.data.metrics["trials_stopped_early"] == swept["stopped_early"].sum()
    assert parent.data.tags["best_model_uri"] == swept.attrs["best_model_uri"]

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=PARENT.format(parent.info.run_id))
    assert sorted(r.info.run_id for r in children) == sorted(swept["run_id"])
    for run in children:
        row = swept[swept["run_id"] == run.info.run_id].iloc[0]
        assert run.info.status == "FINISHED"
        assert run.data.params["params.max_depth"] == str(row["params.max_depth"])
        assert float(run.data.params["params.eta"]) == pytest.approx(row["params.eta"])
        assert run.data.params["num_boost_round"] == str(ROUNDS)   # the base config, too
        assert run.data.metrics["final_val_auc_pr"] == pytest.approx(row["val_auc_pr"])
        assert run.data.tags["mlplatform.stopped_early"] == str(row["stopped_early"]).lower()
        history = client.get_metric_history(run.info.run_id, "val_auc_pr")
        assert [m.step for m in history] == list(range(1, row["rounds"] + 1))


def test_best_model_is_logged_as_ubj_and_loads(swept, spine, platform):
    _mlflow.client(platform)
    uri = swept.attrs["best_model_uri"]
    info = mlflow.models.get_model_info(uri)
    assert info.run_id == swept.attrs["best_run_id"]
    assert info.signature is not None and info.signature.outputs.input_names() == ["score"]
    assert Path(mlflow.artifacts.download_artifacts(uri), "model.ubj").is_file()
    booster = mlflow.xgboost.load_model(uri)
    assert booster.num_boosted_rounds() == ROUNDS
    from tests.projects import fraud_columns

    sample = pd.read_parquet(spine.features_path, columns=fraud_columns()["inputs"])
    scores = booster.predict(xgboost.DMatrix(sample.head(50)))
    assert ((scores >= 0) & (scores <= 1)).all() and scores.std() > 0


def test_bad_search_space_fails_before_any_run(swept, spine, platform):
    client = _mlflow.client(platform)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    before = len(client.search_runs([experiment.experiment_id], max_results=10_000))
    config = TrainConfig(features_path=spine.features_path, num_boost_round=20)
    with pytest.raises(ConfigError, match="'params.max_dept'"):
        sweep(config, {"params.max_dept": {"randint": [2, 5]}}, num_samples=2, platform=platform)
    assert len(client.search_runs([experiment.experiment_id], max_results=10_000)) == before


def test_notebook_runs_two_sweeps_in_one_kernel(ray_cluster, storage_root, platform):
    """The notebook on another task than its default: the wine example (multiclass, one
    table), its metric (val_logloss, lower is better) from the project's tune section."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extras")
    NotebookClient = pytest.importorskip("nbclient").NotebookClient
    pytest.importorskip("ipykernel")

    nb = nbformat.read(REPO / "notebooks/tune_sweep.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "PROJECT = 'examples/fraud'" in params.source
    params.source = params.source.replace("'examples/fraud'", "'examples/wine'")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"],
           "MLP_STORAGE_ROOT": str(storage_root)}
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute(env=env)

    def output(tag: str) -> str:
        cell = next(c for c in nb.cells if tag in c.metadata.get("tags", []))
        return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                       for o in cell.outputs)

    table_1, table_2 = output("table-1"), output("table-2")
    for table, trials in ((table_1, 4), (table_2, 3)):
        assert "val_logloss" in table and "stopped_early" in table
        assert len(re.findall(r"^\d+\s+[0-9a-f]{5,}(_\d{5})?\s", table, re.M)) == trials
    assert "params.eta" in table_1 and "params.min_child_weight" in table_2
    assert "best params: {'params.max_depth': " in output("best-1")
    parents = re.findall(r"parent run: (\w+)", output("best-1") + table_2)
    assert len(set(parents)) == 2, parents
    client = _mlflow.client(platform)
    for parent_id, trials in zip(parents, (4, 3), strict=True):
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED"
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=PARENT.format(parent_id))
        assert len(children) == trials
    # three rows of three class probabilities each, summing to 1
    rows = ast.literal_eval(re.search(r"predictions: (\[.*\])", output("load")).group(1))
    assert len(rows) == 3 and all(len(r) == 3 and abs(sum(r) - 1) < 1e-3 for r in rows)
    best = float(re.search(r"best val_logloss: ([0-9.]+)", output("best-1")).group(1))
    assert best == pytest.approx(min(float(v) for v in re.findall(
        r"\s(\d+\.\d+)\s+\d+\s+(?:True|False)\s*$", table_1, re.M)), abs=1e-4)


def test_ray_job_submit_runs_a_sweep(ray_cluster, spine, platform, tmp_path):
    import shutil

    import yaml

    from tests.integration.conftest import submit_job
    from tests.projects import FRAUD

    # A copy of the fraud example with a small sweep, on the spine's training set.
    folder = tmp_path / "fraud"
    shutil.copytree(FRAUD, folder)
    cfg = yaml.safe_load((folder / "mlplatform.yaml").read_text())
    model = cfg["models"]["xgboost"]
    model["train"].update(features_path=str(spine.features_path), num_boost_round=20)
    model["tune"].update(num_samples=3, max_concurrent=2, scheduler="fifo", grace_period=None)
    (folder / "mlplatform.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    out = submit_job(ray_cluster, ["python", "jobs/tune.py", "--project", str(folder),
                                   "--model", "xgboost"])
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in log, log[-4000:]
    parent_id = re.search(r"parent_run_id: (\w+)", log).group(1)
    model_uri = re.search(r"model_uri: (models:/\S+)", log).group(1)
    best = float(re.search(r"best_val_auc_pr: ([\d.]+)", log).group(1))
    client = _mlflow.client(platform)
    parent = client.get_run(parent_id)
    assert parent.data.tags["best_model_uri"] == model_uri
    assert parent.data.metrics["best_val_auc_pr"] == pytest.approx(best, abs=1e-6)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=PARENT.format(parent_id))
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert mlflow.xgboost.load_model(model_uri).num_boosted_rounds() <= 20
