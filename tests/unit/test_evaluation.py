"""Evaluation without Ray: report math against scikit-learn, threshold choice, the reference
profile, the behavioural checks on the request path, SHAP importance and the MLflow artifacts."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from mlplatform.monitoring import reference_profile
from mlplatform.training import behaviour
from mlplatform.training.metrics import MAX_CURVE_POINTS, evaluation_report
from tests.projects import fraud_columns, inputs, project

FEATURE_COLUMNS = fraud_columns()["inputs"]
VIEW_FEATURES = fraud_columns()["features"]


def _scores(n=20_000, seed=0, rounded=True):
    """Imbalanced labels with informative, partly tied scores (rounding makes ties)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.03).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(-3.5, 1.2, n) + 2.5 * y)))
    return y, (s.round(3) if rounded else s)


@pytest.mark.parametrize("rounded", [True, False])
def test_report_matches_sklearn(rounded):
    y, s = _scores(rounded=rounded)
    r = evaluation_report(y, s, threshold=0.2)
    assert r["auc_pr"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert r["auc_roc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, s), rel=1e-9)
    assert r["brier"] == pytest.approx(skm.brier_score_loss(y, s), rel=1e-12)
    pred = (s >= 0.2).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert r["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert r["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert r["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert r["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert (r["rows"], r["positives"]) == (len(y), y.sum())
    assert r["threshold"] == 0.2 and r["threshold_source"] == "given"
    json.dumps(r, allow_nan=False)  # the report is logged as JSON as is


def test_default_threshold_maximises_f1_over_every_candidate():
    y, s = _scores(n=5_000, seed=1)
    r = evaluation_report(y, s)
    f1 = {t: skm.f1_score(y, s >= t) for t in np.unique(s)}
    best = max(f1.values())
    assert r["threshold_source"] == "max_f1"
    assert r["threshold"] in f1                      # a score seen in the data
    assert r["f1"] == pytest.approx(best)
    assert f1[r["threshold"]] == pytest.approx(best)
    # The same threshold given explicitly reproduces the figures.
    again = evaluation_report(y, s, threshold=r["threshold"])
    assert again["confusion_matrix"] == r["confusion_matrix"] and again["f1"] == r["f1"]


def test_small_known_case():
    r = evaluation_report([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert r["auc_roc"] == 0.75
    assert r["threshold"] == 0.35
    assert r["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 0, "tp": 2}
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0


def test_pr_curve_and_calibration():
    y, s = _scores(seed=2, rounded=False)
    r = evaluation_report(y, s)
    curve = r["pr_curve"]
    assert 10 < len(curve["threshold"]) <= MAX_CURVE_POINTS
    assert len(curve["precision"]) == len(curve["recall"]) == len(curve["threshold"])
    assert np.all(np.diff(curve["threshold"]) < 0)          # highest threshold first
    assert np.all(np.diff(curve["recall"]) >= 0) and curve["recall"][-1] == 1.0
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    bins = [b for b in r["calibration"]["bins"] if b["rows"]]
    assert sum(b["rows"] for b in r["calibration"]["bins"]) == len(y)
    np.testing.assert_allclose([b["positive_rate"] for b in bins], prob_true, rtol=1e-12)
    np.testing.assert_allclose([b["mean_score"] for b in bins], prob_pred, rtol=1e-12)
    ece = sum(b["rows"] / len(y) * abs(b["mean_score"] - b["positive_rate"]) for b in bins)
    assert r["calibration"]["ece"] == pytest.approx(ece)


def test_single_class_and_bad_input():
    r = evaluation_report([0, 0, 0], [0.1, 0.2, 0.3])
    assert r["auc_pr"] is None and r["auc_roc"] is None
    assert r["confusion_matrix"]["tp"] == 0 and r["confusion_matrix"]["fp"] == 0
    with pytest.raises(ValueError, match="differ in length"):
        evaluation_report([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        evaluation_report([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        evaluation_report([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluation_report([0, 1], [0.1, 1.5])


def test_reference_profile_figures():
    rng = np.random.default_rng(3)
    n = 2_000
    x = rng.lognormal(3, 1, n)
    x[:100] = np.nan
    df = pd.DataFrame({"amount": x, "hour_of_day": rng.integers(0, 24, n).astype(float),
                       "country_code": rng.choice([-1, 0, 1, 2], n, p=[.1, .5, .3, .1]).astype(float)})
    p = reference_profile(df, ["amount", "hour_of_day", "country_code"])
    json.dumps(p, allow_nan=False)
    assert p["rows"] == n and p["columns"] == ["amount", "hour_of_day", "country_code"]
    a = p["features"]["amount"]
    finite = x[~np.isnan(x)]
    assert a["kind"] == "numeric" and a["count"] == n - 100 and a["null_share"] == pytest.approx(0.05)
    assert a["mean"] == pytest.approx(finite.mean()) and a["std"] == pytest.approx(finite.std(ddof=1))
    assert (a["min"], a["max"]) == (finite.min(), finite.max())
    assert a["quantiles"]["p50"] == pytest.approx(np.median(finite))
    assert a["quantiles"]["p99"] == pytest.approx(np.quantile(finite, 0.99))
    edges, counts = a["histogram"]["bin_edges"], a["histogram"]["counts"]
    assert len(edges) == len(counts) + 1 == 11 and np.all(np.diff(edges) > 0)
    assert sum(counts) == a["count"]
    assert max(counts) - min(counts) <= 2                  # equal-frequency bins
    np.testing.assert_array_equal(counts, np.histogram(finite, bins=edges)[0])
    h = p["features"]["hour_of_day"]                        # few values: one bin per hour
    assert len(h["histogram"]["counts"]) == 24
    assert h["histogram"]["counts"] == df["hour_of_day"].value_counts().sort_index().tolist()
    c = p["features"]["country_code"]
    assert c["kind"] == "categorical" and list(c["value_counts"]) == ["-1", "0", "1", "2"]
    assert c["value_counts"] == {str(int(k)): int(v)
                                 for k, v in df["country_code"].value_counts().items()}
    assert sum(c["frequencies"].values()) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="nope"):
        reference_profile(df, ["nope"])


def _training_rows(n=3_000, seed=4, proj=None):
    """Training-set rows made the way the training set makes them (request fields, looked-up
    features, the project's model inputs, the label)."""
    from mlplatform.datasets.transactions import make_transactions
    from mlplatform.features.training_set import _to_training_rows, stored_raw_names

    proj = proj or project("fraud")
    tx = make_transactions(n, seed=seed)
    rng = np.random.default_rng(seed)
    views = {c: rng.poisson(3, n).astype(float) for c in VIEW_FEATURES}
    views["user_amount_mean_7d"] = rng.lognormal(3.4, 0.5, n)
    views["user_amount_mean_24h"] = rng.lognormal(3.4, 0.5, n)
    views["user_amount_std_7d"] = rng.lognormal(2, 1, n)
    views["merchant_fraud_rate_30d"] = rng.random(n) * 0.05
    ts_s = pd.to_datetime(tx["event_timestamp"], utc=True).astype("int64").to_numpy() / 1e9
    views["user_last_event_at"] = ts_s - rng.exponential(20 * 3600, n)
    unknown = rng.random(n) < 0.1                       # new users: nothing looked up
    for c in ("user_amount_mean_7d", "user_amount_std_7d", "user_last_event_at"):
        views[c][unknown] = np.nan
    raw = tx.assign(**views)
    mi = inputs("fraud") if proj is project("fraud") else proj._inputs
    fields = proj.request_fields
    return _to_training_rows(raw, mi, fields, VIEW_FEATURES,
                             stored_raw_names([*fields, *VIEW_FEATURES], mi), "is_fraud",
                             "binary", 1, [], False)


def _logistic(weights: dict[str, float], bias: float = -4.0):
    def predict(frame: pd.DataFrame) -> np.ndarray:
        z = bias + sum(w * np.nan_to_num(frame[c].to_numpy(dtype=float)) for c, w in weights.items())
        return 1 / (1 + np.exp(-z))
    return predict


def test_training_rows_keep_the_raw_columns_the_inputs_come_from():
    """A model input named like a request field or feature keeps the raw value beside it
    (``__raw_<name>``): recomputing the inputs from the raw columns gives the stored inputs."""
    from mlplatform.features.training_set import raw_frame

    rows = _training_rows()
    assert "__raw_amount" in rows and "__raw_user_txn_count_1h" in rows
    assert rows["__raw_user_txn_count_1h"].isna().sum() == 0 or \
        rows["user_txn_count_1h"].isna().sum() == 0      # inputs fill unknown counts with 0
    raw = raw_frame(rows, inputs("fraud").raw_columns)
    assert list(raw.columns) == inputs("fraud").raw_columns
    np.testing.assert_allclose(inputs("fraud").frame(raw).to_numpy(),
                               rows[FEATURE_COLUMNS].to_numpy(), rtol=1e-12, atol=1e-12)


def test_checks_pass_for_a_sensible_model_and_catch_a_bad_one():
    rows = _training_rows()
    good = _logistic({"amount_log": 0.5, "amount_z_user_7d": 0.3, "is_night": 1.0})
    res = behaviour.summarize(behaviour.check_batch(rows, good, FEATURE_COLUMNS,
                                                    project("fraud"), "binary"), project("fraud"))
    inv, dirn = res["invariance_transaction_id"], res["directional_amount"]
    assert inv["passed"] and inv["rows"] == len(rows) and inv["changed_scores"] == 0
    assert inv["max_input_diff_vs_dataset"] < 1e-9
    assert dirn["passed"] and dirn["lowered"] == 0 and dirn["rows"] > len(rows) // 2
    assert dirn["moved_as_expected"] > 0.9 * dirn["rows"]  # the rest saturate at a score of 1
    # A model that scores large amounts lower fails the directional check, with counts.
    bad = _logistic({"amount_log": -0.5, "is_night": 1.0})
    dirn = behaviour.summarize(behaviour.check_batch(rows, bad, FEATURE_COLUMNS,
                                                     project("fraud"), "binary"),
                               project("fraud"))["directional_amount"]
    assert not dirn["passed"] and dirn["lowered"] == dirn["rows"] and dirn["share_lowered"] == 1.0


def test_invariance_check_catches_inputs_that_depend_on_transaction_id():
    from mlplatform.project import ModelInputs

    real = inputs("fraud")

    def leaky(batch):  # a transformation that (wrongly) reads the transaction id
        out = real.function(batch)
        out["amount"] = out["amount"] + np.array([len(str(t)) for t in batch["transaction_id"]])
        return out

    proj = project("fraud").model_copy()
    proj._inputs = ModelInputs(real.columns, real.fields, real.features, leaky)
    rows = _training_rows(n=500, proj=proj)
    inv = behaviour.summarize(behaviour.check_batch(
        rows, _logistic({"amount": 0.01}), FEATURE_COLUMNS, proj, "binary"),
        proj)["invariance_transaction_id"]
    assert not inv["passed"] and inv["changed_inputs"] == len(rows)
    assert inv["changed_scores"] == len(rows)


def test_shap_importance_exact_for_xgboost_and_agnostic_agrees():
    import xgboost

    from mlplatform.training.explain import shap_importance

    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(3_000, 4)), columns=["a", "b", "c", "noise"])
    y = (x["a"] * 2 + x["b"] + rng.normal(0, 0.5, len(x)) > 1.5).astype(int)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3, "seed": 0},
                            xgboost.DMatrix(x, label=y), num_boost_round=40)
    exact = shap_importance(x, list(x.columns), model=booster)
    assert exact["method"].startswith("xgboost TreeSHAP") and exact["rows"] == len(x)
    assert list(exact["importance"])[:2] == ["a", "b"]
    assert exact["importance"]["noise"] < 0.1 * exact["importance"]["a"]
    # TreeSHAP is exact: contributions + base value add up to the margin.
    contribs = booster.predict(xgboost.DMatrix(x), pred_contribs=True)
    np.testing.assert_allclose(contribs.sum(axis=1),
                               booster.predict(xgboost.DMatrix(x), output_margin=True), rtol=1e-4,
                               atol=1e-4)

    def predict(frame):
        return booster.predict(xgboost.DMatrix(frame[list(x.columns)], nthread=1))

    agnostic = shap_importance(x, list(x.columns), predict_fn=predict, max_rows=60)
    assert agnostic["rows"] == 60 and agnostic["output"] == "log-odds"
    assert list(agnostic["importance"])[:2] == ["a", "b"]
    assert agnostic["importance"]["noise"] < 0.2 * agnostic["importance"]["a"]
    with pytest.raises(ValueError, match="predict_fn"):
        shap_importance(x, list(x.columns))


def test_log_evaluation_artifacts_writes_every_file(tmp_path):
    import mlflow
    import xgboost

    from mlplatform.training.evaluation import log_evaluation_artifacts

    rows = _training_rows(n=2_000, seed=6)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3, "seed": 0},
                            xgboost.DMatrix(rows[FEATURE_COLUMNS], label=rows["is_fraud"]),
                            num_boost_round=20)

    def predict(frame):
        return booster.predict(xgboost.DMatrix(frame[FEATURE_COLUMNS]))

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("eval", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            report = log_evaluation_artifacts(rows, rows["is_fraud"], None, predict,
                                              FEATURE_COLUMNS, "xgboost", model=booster,
                                              reference_frame=rows)
        logged = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(previous)
    art = tmp_path / "art" / run.info.run_id / "artifacts"
    for name in ("pr_curve", "confusion_matrix", "calibration"):
        assert (art / "evaluation" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        json.loads((art / "evaluation" / f"{name}.json").read_text())
    assert (art / "explain" / "shap_importance.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((art / "evaluation" / "metrics.json").read_text())
    assert saved["threshold"] == report["threshold"] and saved["rows"] == len(rows)
    cm = json.loads((art / "evaluation" / "confusion_matrix.json").read_text())
    assert cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"] == len(rows)
    imp = json.loads((art / "explain" / "shap_importance.json").read_text())
    assert set(imp["importance"]) == set(FEATURE_COLUMNS) and imp["model_kind"] == "xgboost"
    profile = json.loads((art / "profile" / "reference_profile.json").read_text())
    assert profile["columns"] == FEATURE_COLUMNS and profile["rows"] == len(rows)
    assert logged["eval_threshold"] == pytest.approx(report["threshold"])
    assert logged["eval_auc_pr"] == pytest.approx(report["auc_pr"])
