"""The regression and multiclass examples through every door, as a user runs them.

- ``examples/delivery`` (regression; courier and restaurant entities, their own views and
  request fields): ``ray job submit`` of jobs/train.py, a Tune sweep whose best model becomes
  the challenger, promotion through the project's gates (RMSE: lower is better), ``serve
  deploy`` of serve_configs/delivery.yaml with a two-arm split, HTTP in the project's schema.
- ``examples/wine`` (multiclass, one table from scikit-learn's bundled dataset, no feature
  store): ``ray job submit``, the model CI pipeline for the torch model (promotion included), a
  Tune sweep, a scikit-learn model trained elsewhere and imported as ONNX (registered, gated
  and served; its probabilities match scikit-learn's to 1e-5), and ``serve deploy`` of
  serve_configs/wine.yaml with three arms: every answer's probabilities sum to 1 and equal the
  arm's model offline, its class their argmax.
- A pickled model (``mlflow.sklearn``) is refused at registration, at load and at import.

The fraud example goes through the same doors in the other integration suites.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from mlplatform.errors import ModelRefused, PromotionRefused
from mlplatform.registry import ModelRegistry, load_model
from tests.conftest import free_port, wait_for
from tests.integration.conftest import ADMIN, AUTH, REPO, serve_deploy, submit_job
from tests.projects import EXAMPLES

BIN = Path(sys.executable).parent
#: Rows of generated delivery orders (the example's default is 100,000).
DELIVERY_ROWS = 6_000


def _copy(name: str, folder: Path, edit) -> Path:
    """A copy of an example (the same project name, so the same data and registered model),
    its project file changed by ``edit(data)``: the sweep made small for a test."""
    shutil.copytree(EXAMPLES / name, folder)
    file = folder / "mlplatform.yaml"
    data = yaml.safe_load(file.read_text())
    edit(data)
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _small_sweep(data: dict) -> None:
    data["models"]["xgboost"]["tune"].update(num_samples=2, max_concurrent=2)
    data["models"]["xgboost"]["train"].update(num_boost_round=60)


def _train_job(ray_cluster, name: str, registry: ModelRegistry):
    """The raw door: ``ray job submit --working-dir . -- python jobs/train.py --project
    examples/<name> --model xgboost``; returns the version it registered."""
    out = submit_job(ray_cluster, ["python", "jobs/train.py", "--project", f"examples/{name}",
                                   "--model", "xgboost"])
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "succeeded" in log
    return registry.resolve(f"{name}@champion")


def _sweep(project_dir: Path, platform, metric: str):
    from mlplatform.pipelines import load
    from mlplatform.pipelines.tune_job import run_tune_job

    df = run_tune_job(load(project_dir, platform), platform, "xgboost", echo=lambda _l: None)
    assert len(df) == 2 and metric in df.columns
    ok = df[df["status"] != "ERROR"][metric]
    assert list(ok) == sorted(ok), f"best first for a lower-is-better {metric}: {list(ok)}"
    return df


def _champion_gate(decision):
    (gate,) = [g for g in decision.gates if g.name.startswith("no_worse_than_champion")]
    return gate


def _promote(registry, name, version, project, holdout=None):
    """Promote through the project's gates; the decision whether accepted or refused."""
    from mlplatform.registry.promotion import promote

    try:
        return promote(registry, name, version, project=project, holdout=holdout)
    except PromotionRefused as exc:
        return exc.decision


def _requests(project, rows: pd.DataFrame) -> list[dict]:
    """Request bodies in the project's own schema, from training-set rows."""
    from mlplatform.features.training_set import raw_frame

    raw = raw_frame(rows, project.request_fields)
    records = json.loads(raw.to_json(orient="records", date_format="iso"))
    return [{k: v for k, v in r.items() if v is not None} for r in records]


def _deploy(ray_cluster, platform, name: str, arms: list[tuple[str, str, int]], tmp: Path):
    """serve_configs/<name>.yaml as shipped, with ``arms`` (arm, model ref, weight) on a free
    port, deployed with the real ``serve deploy``; returns the base URL."""
    from ray import serve

    from mlplatform.serving import wait_until_running

    raw = yaml.safe_load((REPO / "serve_configs" / f"{name}.yaml").read_text())
    (app,) = raw["applications"]
    assert app["args"]["project"] == f"examples/{name}"      # relative: the shipped folder
    port = free_port()
    raw["http_options"]["port"] = port
    app["args"].update(models=[m for _, m, _ in arms], reload_interval_s=0,
                       platform=platform.model_dump(mode="json"))
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    router["user_config"] = {"arms": [{"name": a, "model": m, "weight": w} for a, m, w in arms]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    serve.shutdown()
    serve_deploy(ray_cluster, path)
    wait_for(lambda: serve.status().applications.get(name) is not None, 60, "the app")
    wait_until_running([name], 300)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(f"{base}/healthz", timeout=10).status_code == 200, 120,
             "the app to route", ignore=(requests.RequestException,))
    return base


def _predict(base: str, body: dict) -> requests.Response:
    return requests.post(f"{base}/predict", json=body, headers=AUTH, timeout=30)


# ---------------------------------------------------------------------------------- delivery
@pytest.fixture(scope="module")
def delivery(ray_cluster, platform, tmp_path_factory):
    from mlplatform.pipelines import load, steps
    from mlplatform.pipelines.ci import ModelCIPipeline
    from mlplatform.pipelines.ci_config import CIConfig
    from mlplatform.registry.promotion import default_holdout

    cfg = platform.model_copy(update={"project": EXAMPLES / "delivery"})
    project = load(EXAMPLES / "delivery", cfg)
    steps.ensure_data(cfg, project, DELIVERY_ROWS, seed=5, force=True, echo=lambda _l: None)
    registry = ModelRegistry(cfg)
    champion = _train_job(ray_cluster, "delivery", registry)
    small = _copy("delivery", tmp_path_factory.mktemp("delivery") / "delivery", _small_sweep)
    df = _sweep(small, cfg, "val_rmse")
    # The model CI pipeline on a regression project: its own version, @challenger, no promotion.
    report = ModelCIPipeline(cfg, echo=lambda _l: None).run(
        CIConfig(project=str(small), model="xgboost", train={"num_boost_round": 40}))
    challenger = registry.register(df.attrs["best_model_uri"], "delivery", alias="challenger")
    holdout = default_holdout(registry, champion)
    decision = _promote(registry, "delivery", challenger.version, project, holdout)
    tmp = tmp_path_factory.mktemp("delivery-serve")
    base = _deploy(ray_cluster, cfg, "delivery",
                   [("xgb", f"delivery/{champion.version}", 50),
                    ("tuned", f"delivery/{challenger.version}", 50)], tmp)
    yield {"project": project, "registry": registry, "champion": champion,
           "challenger": challenger, "decision": decision, "holdout": holdout, "base": base,
           "sweep": df, "report": report}
    from ray import serve

    serve.shutdown()


def _artifacts(registry, run_id: str) -> set[str]:
    client = registry._client
    return {a.path for top in ("evaluation", "explain", "profile")
            for a in client.list_artifacts(run_id, top)}


def test_delivery_job_trains_a_regression_model(delivery):
    registry = delivery["registry"]
    run = registry._client.get_run(delivery["champion"].run_id)
    assert run.data.tags["mlplatform.task"] == "regression"
    assert run.data.tags["mlplatform.project"] == "delivery"
    m = run.data.metrics
    assert 0 < m["val_mae"] <= m["val_rmse"] < 30          # minutes
    assert m["eval_rmse"] > 0 and "eval_auc_pr" not in m
    assert m["cost.cpu_hours"] > 0 and run.data.tags["mlplatform.job"] == "train"
    assert {"evaluation/metrics.json", "explain/shap_importance.json",
            "profile/reference_profile.json"} <= _artifacts(registry, run.info.run_id)
    assert any(p.startswith("evaluation/") and p.endswith(".png")
               for p in _artifacts(registry, run.info.run_id))


def test_delivery_model_card_speaks_regression(delivery):
    from mlplatform.registry.cards import generate_model_card

    registry, mv = delivery["registry"], delivery["champion"]
    card = generate_model_card("delivery", mv.version, registry.config,
                               dataset=delivery["holdout"], project=delivery["project"]).read_text()
    assert "rmse" in card and "mae" in card and "auc_pr" not in card
    assert "### By vehicle" in card and "### Behavioural tests" in card


def test_delivery_explains_the_value(delivery):
    bodies = _requests(delivery["project"], delivery["holdout"].head(2))
    r = requests.post(f"{delivery['base']}/explain", json={"instances": bodies},
                      headers={**ADMIN, "X-MLP-Arm": "xgb"}, timeout=120)
    assert r.status_code == 200, r.text
    for e in r.json()["explanations"]:
        assert set(e["contributions"]) == set(delivery["project"].input_columns)
        assert e["additivity_ok"] and "explained" not in e
        # TreeSHAP of a squared-error booster adds up to the value itself
        assert e["base_value"] + sum(e["contributions"].values()) == pytest.approx(
            e["value"], abs=1e-2)


def test_delivery_ci_pipeline_runs_every_stage(delivery):
    report, registry = delivery["report"], delivery["registry"]
    assert report.ok, [(s.name, s.status, s.message) for s in report.stages]
    stages = {s.name: s.status for s in report.stages}
    assert stages["promote"] == "skipped"
    assert {stages[n] for n in ("validate", "features", "train", "evaluate", "behavioural",
                                "register", "challenger")} == {"ok"}
    # (the fixture then moved @challenger on to the sweep's best model)
    mv = registry.resolve(f"delivery/{report.version}")
    assert mv.version not in (delivery["champion"].version, delivery["challenger"].version)
    run = registry._client.get_run(mv.run_id)
    assert run.data.tags["mlplatform.task"] == "regression" and "val_rmse" in run.data.metrics


def test_delivery_is_gated_lower_is_better(delivery):
    decision, registry = delivery["decision"], delivery["registry"]
    gate = _champion_gate(decision)
    assert gate.name == "no_worse_than_champion:rmse"
    n = gate.numbers
    assert n["higher_is_better"] is False
    assert n["drop"] == pytest.approx(n["candidate"] - n["champion"])    # a rise is worse
    assert gate.passed == (n["drop"] <= n["tolerance"])
    (ceiling,) = [g for g in decision.gates if g.name == "max_metric:rmse"]
    assert ceiling.passed == (ceiling.numbers["value"] <= ceiling.numbers["maximum"])
    holder = registry.resolve("delivery@champion").version
    assert decision.accepted == all(g.passed for g in decision.gates)
    assert holder == (delivery["challenger"].version if decision.accepted
                      else delivery["champion"].version)


def test_delivery_answers_values_from_both_arms(delivery):
    project, base = delivery["project"], delivery["base"]
    bodies = _requests(project, delivery["holdout"].head(30))
    assert {"courier_id", "restaurant_id", "distance_km", "vehicle"} <= set(bodies[0])
    arms = Counter()
    for body in bodies:
        r = _predict(base, body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer) >= {"value", "arm", "model_version", "unknown_entities", "order_id"}
        assert "score" not in answer and "decision" not in answer
        assert math.isfinite(answer["value"]) and 0 < answer["value"] < 300
        assert answer["order_id"] == body["order_id"]
        arms[answer["arm"]] += 1
    assert set(arms) == {"xgb", "tuned"}, arms
    batch = _predict(base, {"instances": bodies[:5]})
    assert batch.status_code == 200 and len(batch.json()["predictions"]) == 5
    bad = _predict(base, {**bodies[0], "vehicle": "rocket", "distance_km": -2.0})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} >= {"vehicle", "distance_km"}


# -------------------------------------------------------------------------------------- wine
@pytest.fixture(scope="module")
def wine(ray_cluster, platform, tmp_path_factory):
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    from mlplatform.pipelines import load, steps
    from mlplatform.pipelines.ci import ModelCIPipeline
    from mlplatform.pipelines.ci_config import CIConfig
    from mlplatform.pipelines.import_job import run_import_job
    from mlplatform.registry.promotion import default_holdout

    cfg = platform.model_copy(update={"project": EXAMPLES / "wine"})
    project = load(EXAMPLES / "wine", cfg)
    steps.ensure_data(cfg, project, force=True, echo=lambda _l: None)
    registry = ModelRegistry(cfg)
    champion = _train_job(ray_cluster, "wine", registry)
    report = ModelCIPipeline(cfg, echo=lambda _l: None).run(
        CIConfig(project=str(EXAMPLES / "wine"), model="torch", promote=True))
    tmp = tmp_path_factory.mktemp("wine")
    df = _sweep(_copy("wine", tmp / "wine", _small_sweep), cfg, "val_logloss")
    # A model trained elsewhere: scikit-learn on the training split, exported to ONNX.
    holdout = default_holdout(registry, champion)
    rows = pd.read_parquet(champion.tags["features_path"])
    train = rows[rows["_split_u"] < 1 - project.data.validation_fraction]   # its train split
    columns = project.input_columns
    clf = GradientBoostingClassifier(n_estimators=60, max_depth=2, random_state=0)
    clf.fit(train[columns].to_numpy(np.float32), train[project.task.label].to_numpy())
    onnx_file = tmp / "wine_gb.onnx"
    onnx_file.write_bytes(to_onnx(clf, train[columns].to_numpy(np.float32)[:1],
                                  options={"zipmap": False}).SerializeToString())
    _, imported = run_import_job(project, cfg, onnx_file, name="wine_onnx",
                                 echo=lambda _l: None)
    onnx_decision = _promote(registry, "wine_onnx", imported.version, project)
    torch_version = report.version
    base = _deploy(ray_cluster, cfg, "wine",
                   [("xgb", f"wine/{champion.version}", 34),
                    ("torch", f"wine/{torch_version}", 33),
                    ("onnx", "wine_onnx@champion", 33)], tmp)
    yield {"project": project, "registry": registry, "champion": champion, "report": report,
           "sweep": df, "clf": clf, "imported": imported, "onnx_decision": onnx_decision,
           "holdout": holdout, "base": base, "torch_version": torch_version}
    from ray import serve

    serve.shutdown()


def test_wine_ci_pipeline_trains_registers_and_gates_the_torch_model(wine):
    report, registry = wine["report"], wine["registry"]
    stages = {s.name: s for s in report.stages}
    for name in ("validate", "features", "train", "evaluate", "behavioural", "register",
                 "challenger"):
        assert stages[name].status == "ok", (name, stages[name].message)
    mv = registry.resolve(f"wine/{report.version}")
    run = registry._client.get_run(mv.run_id)
    assert run.data.tags["mlplatform.trainer"] == "torch"
    assert run.data.tags["mlplatform.task"] == "multiclass"
    assert {"val_logloss", "val_accuracy"} <= set(run.data.metrics)
    # promotion to champion: the gates decided, log loss lower-is-better
    promote = stages["promote"]
    assert promote.status in ("ok", "failed")
    holder = registry.resolve("wine@champion").version
    assert holder == (report.version if promote.status == "ok" else wine["champion"].version)
    assert "log_loss" in promote.message
    assert {"evaluation/metrics.json", "explain/shap_importance.json"} <= _artifacts(
        registry, mv.run_id)


def test_wine_model_card_and_explanations_speak_multiclass(wine):
    from mlplatform.registry.cards import generate_model_card

    registry, project = wine["registry"], wine["project"]
    card = generate_model_card("wine", wine["champion"].version, registry.config,
                               dataset=wine["holdout"], project=project).read_text()
    assert "accuracy" in card and "log_loss" in card and "auc_pr" not in card
    bodies = _requests(project, wine["holdout"].head(2))
    for arm in ("xgb", "onnx"):       # TreeSHAP; kernel SHAP of a model trained elsewhere
        r = requests.post(f"{wine['base']}/explain", json={"instances": bodies},
                          headers={**ADMIN, "X-MLP-Arm": arm}, timeout=180)
        assert r.status_code == 200, r.text
        for e in r.json()["explanations"]:
            assert e["arm"] == arm and set(e["contributions"]) == set(project.input_columns)
            assert e["explained"] == e["class"] and e["explained"] in project.task.classes


def test_onnx_model_is_registered_gated_and_scored_like_the_original(wine):
    decision, imported, registry = wine["onnx_decision"], wine["imported"], wine["registry"]
    assert decision.accepted, decision.summary()
    assert {g.name for g in decision.gates} >= {"min_metric:accuracy", "max_metric:log_loss",
                                                "data_validation", "signature"}
    assert registry.resolve("wine_onnx@champion").version == imported.version
    run = registry._client.get_run(imported.run_id)
    assert run.data.tags["mlplatform.trainer"] == "onnx"
    assert run.data.tags["mlplatform.project"] == "wine"
    paths = {a.path for a in registry._client.list_artifacts(imported.run_id, "evaluation")}
    assert "evaluation/metrics.json" in paths
    model = load_model(registry, "wine_onnx@champion")
    holdout, columns = wine["holdout"], wine["project"].input_columns
    np.testing.assert_allclose(model.predict(holdout[columns]),
                               wine["clf"].predict_proba(holdout[columns].to_numpy(np.float32)),
                               atol=1e-5)


def test_wine_answers_classes_with_probabilities_from_three_arms(wine):
    project, base, registry = wine["project"], wine["base"], wine["registry"]
    classes = project.task.classes
    holdout = wine["holdout"]
    columns = project.input_columns
    offline = {"xgb": load_model(registry, f"wine/{wine['champion'].version}"),
               "torch": load_model(registry, f"wine/{wine['torch_version']}"),
               "onnx": load_model(registry, "wine_onnx@champion")}
    bodies = _requests(project, holdout)
    assert set(bodies[0]) == set(columns)
    arms = Counter()
    for i, body in enumerate(bodies):
        r = _predict(base, body)
        assert r.status_code == 200, r.text
        answer = r.json()
        probs = answer["probabilities"]
        assert list(probs) == classes and sum(probs.values()) == pytest.approx(1, abs=1e-6)
        assert answer["class"] == max(probs, key=probs.get)
        assert answer["score"] == pytest.approx(probs[answer["class"]])
        arm = answer["arm"]
        arms[arm] += 1
        expected = offline[arm].predict(holdout.iloc[[i]][columns])[0]
        np.testing.assert_allclose([probs[c] for c in classes], expected, atol=1e-6)
        assert answer["class"] == classes[int(np.argmax(expected))]
        if arm == "onnx":
            sk = wine["clf"].predict_proba(holdout.iloc[[i]][columns].to_numpy(np.float32))[0]
            np.testing.assert_allclose([probs[c] for c in classes], sk, atol=1e-5)
    assert set(arms) == {"xgb", "torch", "onnx"}, arms
    bad = _predict(base, {**bodies[0], "alcohol": "13%", "proline": -1.0})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} >= {"alcohol", "proline"}


def test_a_pickled_model_is_refused_everywhere(wine, tmp_path):
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from mlplatform import _mlflow
    from mlplatform.models import load_model_uri

    registry, project = wine["registry"], wine["project"]
    rows = wine["holdout"]
    clf = LogisticRegression(max_iter=200).fit(rows[project.input_columns],
                                               rows[project.task.label])
    with mlflow.start_run(experiment_id=_mlflow.ensure_experiment(registry.config, "pickles")):
        info = mlflow.sklearn.log_model(clf, name="model")
    with pytest.raises(ModelRefused, match="(?i)pickle.*onnx"):
        registry.register(info.model_uri, "wine_pickle")
    assert registry.list_versions("wine_pickle") == []
    with pytest.raises(ModelRefused, match="skl2onnx"):
        load_model_uri(info.model_uri, registry.config)
    # `mlp registry import` of a pickle file: refused before any work, with how to convert
    pickled = tmp_path / "model.pkl"
    import pickle

    pickled.write_bytes(pickle.dumps({"not": "onnx"}))
    env = {**os.environ, "MLP_STORAGE_ROOT": str(registry.config.storage_root)}
    out = subprocess.run([str(BIN / "mlp"), "registry", "import", str(pickled), "--project",
                          str(EXAMPLES / "wine"), "--name", "wine_pickle"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not an ONNX model" in out.stderr and "export" in out.stderr
    assert registry.list_versions("wine_pickle") == []
