"""Model cards of registered versions: the spine's real numbers, holdout slices and behavioural
tests, HTML escaping, the artifact and tag on MLflow, and refused names."""

import json
import re

import pandas as pd
import pytest

from mlplatform.registry.cards import generate_model_card, load_evaluation, store_evaluation

SAMPLE_ROWS = 3000
BAD_NAMES = ["../escape", "a/b", "a\\b", "x#y", "why?", "p%2e", "/abs"]


@pytest.fixture(scope="module")
def client(platform):
    from mlplatform import _mlflow

    return _mlflow.client(platform)


@pytest.fixture(scope="module")
def sample(spine) -> pd.DataFrame:
    return pd.read_parquet(spine.features_path).sample(n=SAMPLE_ROWS, random_state=5)


@pytest.fixture(scope="module")
def spine_card(spine, platform, sample):
    mv = spine.model_version
    path = generate_model_card(mv.name, mv.version, platform, dataset=sample)
    return path, path.read_text()


@pytest.fixture(scope="module")
def bare_version(spine, platform, client):
    """A version of another model, on a run of its own that logged one metric and nothing
    else (no SHAP, no evaluation), with hostile text in its descriptions."""
    from mlplatform import _mlflow

    exp = _mlflow.ensure_experiment(platform, "model-card-tests")   # artifacts under storage
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_auc_pr", 0.5)
    client.set_terminated(run.info.run_id)
    name = "card_bare"
    client.create_registered_model(name, description="owner: <b>risk</b> team")
    mv = client.create_model_version(name, spine.model_version.source, run_id=run.info.run_id)
    client.update_model_version(name, mv.version,
                                description="<script>alert('x')</script> use | with care")
    return name, mv.version, run.info.run_id


def test_card_holds_the_runs_numbers(spine, platform, client, spine_card, tmp_path):
    import mlflow

    path, md = spine_card
    mv, run_id = spine.model_version, spine.train.run_id
    assert path == platform.path("model_cards", mv.name, f"v{mv.version}", "model_card.md")
    run = client.get_run(run_id)
    assert f"| val_auc_pr | {run.data.metrics['val_auc_pr']:.4f} |" in md
    assert f"**{run.data.metrics['eval_threshold']:.4f}**" in md      # the run's threshold
    for view, version in spine.feature_versions.items():
        assert f"| {view} | {version} | {version} |" in md
    assert f"| train_rows | {run.data.params['train_rows']} |" in md
    assert f"| run id | {run_id} |" in md and str(spine.features_path) in md
    shap = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run_id}/explain/shap_importance.json", dst_path=str(tmp_path),
        tracking_uri=platform.mlflow_tracking_uri)
    top = next(iter(json.loads(open(shap).read())["importance"]))
    assert f"| 1 | {top} |" in md
    assert "not evaluated on a holdout yet" not in md
    # What the model answers, from its project: the fraud example's task and decision words.
    assert "the project **fraud**" in md and "`is_fraud`" in md and "`fraud`" in md
    assert "from a **generator** (`mlplatform.datasets:write_transactions`)" in md


def test_card_has_slices_and_behavioural_results(spine, platform, spine_card, sample):
    _, md = spine_card
    mv = spine.model_version
    report = load_evaluation(platform, mv.name, mv.version)
    assert report is not None and report["rows"] == SAMPLE_ROWS
    assert f"Holdout evaluation ({SAMPLE_ROWS} rows" in md
    # Row counts per country, counted independently of evaluate().
    counts = sample["country"].value_counts()      # the request field, as the slices read it
    for country in (counts.index[0], counts.index[-1]):
        assert re.search(rf"^\| {re.escape(country)} \| {counts[country]} \|", md, re.M), country
    for check, result in report["checks"].items():
        assert f"| {check} | {'PASS' if result['passed'] else 'FAIL'} |" in md
    small = [c for c, n in counts.items() if n < 100]
    for country in small:                              # flagged under Limitations
        assert f"- country = {country}: only {counts[country]} holdout rows" in md


def test_card_is_logged_on_the_run_and_tagged(spine, platform, client, spine_card):
    path, md = spine_card
    mv, run_id = spine.model_version, spine.train.run_id
    logged = {a.path for a in client.list_artifacts(run_id, f"model_card/v{mv.version}")}
    assert logged == {f"model_card/v{mv.version}/model_card.md",
                      f"model_card/v{mv.version}/model_card.html"}
    tag = client.get_model_version(mv.name, mv.version).tags["model_card"]
    assert tag == f"runs:/{run_id}/model_card/v{mv.version}/model_card.md"
    import mlflow

    assert mlflow.artifacts.load_text(tag) == md
    html = path.with_name("model_card.html").read_text()
    assert "<table>" in html and f"<td>{run_id}</td>" in html


def test_unevaluated_version_and_html_escaping(platform, client, bare_version):
    name, version, run_id = bare_version
    path = generate_model_card(name, version, platform)
    md = path.read_text()
    assert "not evaluated on a holdout yet: run `mlp evaluate` or promote through the gates" in md
    assert "No SHAP importance was logged" in md and "| val_auc_pr | 0.5000 |" in md
    html = path.with_name("model_card.html").read_text()
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(" in html and "&lt;b&gt;risk&lt;/b&gt; team" in html
    assert client.get_model_version(name, version).tags["model_card"].startswith(f"runs:/{run_id}/")


def test_stored_report_flags_weak_slices(platform, client, bare_version):
    name, version, run_id = bare_version

    def metrics(rows, positives, recall):
        return {"rows": rows, "positives": positives, "recall": recall, "precision": 0.9,
                "auc_pr": None, "auc_roc": 0.9, "flagged_share": 0.01}

    report = {"rows": 5000, "threshold": 0.25, "threshold_source": "given",
              "overall": metrics(5000, 100, 0.8),
              "slices": {"country": {"US": metrics(4000, 80, 0.85), "FR": metrics(900, 15, 0.2),
                                     "CN": metrics(40, 5, 1.0)}},
              "checks": {"directional_amount": {"passed": False, "rows": 7,
                                                "description": "amount x10 | no lower score"}},
              "passed": False}
    store_evaluation(platform, name, version, report)
    assert load_evaluation(platform, name, version) == report
    assert f"registry/evaluation_v{version}.json" in {
        a.path for a in client.list_artifacts(run_id, "registry")}
    md = generate_model_card(name, version, platform).read_text()
    assert "not evaluated on a holdout yet" not in md
    assert "threshold 0.2500 given by the caller" in md
    assert "- country = FR: recall 0.2000 vs 0.8000 overall." in md
    assert "- country = CN: only 40 holdout rows" in md and "country = US" not in md
    assert "| directional_amount | FAIL | 7 | amount x10 \\| no lower score |" in md


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_model_name_is_refused(platform, bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        generate_model_card(bad, 1, platform)
    with pytest.raises(ValueError, match="invalid model name"):
        load_evaluation(platform, bad, 1)
    assert not platform.path("model_cards", bad).exists()      # nothing written anywhere
    assert not platform.path("escape").exists()
