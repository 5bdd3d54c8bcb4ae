"""Per-request SHAP explanations on real models (an XGBoost booster, the torch net): additive in
log-odds, consistent with the model's own scores, and strict about bad input."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer

from mlplatform.models import LoadedModel, ModelVersion
from mlplatform.models.torch_net import TorchTabularModel
from mlplatform.serving.explain import BACKGROUND_ROWS, explain_rows
from tests.unit.test_torch_model import make_arch, make_frame, trained_net

TOL = 1e-3


def wrap(model, columns: list[str], kind: str) -> LoadedModel:
    version = ModelVersion(name="fraud", version="1", source="test", run_id=None, aliases=(), tags={})
    return LoadedModel(version=version, model=model, kind=kind,
                       inputs=[{"name": c, "type": "double"} for c in columns])


@pytest.fixture(scope="module")
def cancer():
    data = load_breast_cancer(as_frame=True)
    x = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.3},
                            xgboost.DMatrix(x, data.target), num_boost_round=30)
    return wrap(booster, list(x.columns), "xgboost"), x


@pytest.fixture(scope="module")
def torch_model():
    arch = make_arch()
    return wrap(TorchTabularModel(trained_net(arch)), arch.feature_columns, "torch")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def assert_consistent(out: dict, loaded: LoadedModel, frame: pd.DataFrame) -> None:
    """Additive, one explanation per row with every feature, scores = the model's scores."""
    assert out["output"] == "log-odds" and out["additivity_ok"] is True
    rows = out["explanations"]
    assert len(rows) == len(frame)
    for row in rows:
        contribs = row["contributions"]
        assert sorted(contribs) == sorted(loaded.feature_names)
        assert abs(out["base_value"] + sum(contribs.values()) - row["margin"]) <= TOL
        assert row["additivity_error"] <= TOL
        magnitudes = [abs(v) for v in contribs.values()]
        assert magnitudes == sorted(magnitudes, reverse=True)
    scores = np.array([r["prediction"] for r in rows])
    np.testing.assert_allclose(scores, loaded.predict(frame), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigmoid([r["margin"] for r in rows]), scores, rtol=0, atol=1e-6)


def test_xgboost_rows_are_exact_treeshap_and_add_up_to_the_margin(cancer):
    loaded, x = cancer
    frame = x.iloc[:32]

    out = explain_rows(loaded, frame)

    assert out["method"] == "shap TreeExplainer"
    assert_consistent(out, loaded, frame)
    np.testing.assert_allclose([r["margin"] for r in out["explanations"]],
                               loaded.booster.predict(xgboost.DMatrix(frame), output_margin=True),
                               atol=1e-6)
    # The pred_contribs fallback runs the same algorithm: it must give the same numbers.
    contribs = loaded.booster.predict(xgboost.DMatrix(frame), pred_contribs=True)
    got = np.array([[r["contributions"][c] for c in loaded.feature_names]
                    for r in out["explanations"]])
    np.testing.assert_allclose(got, contribs[:, :-1], atol=1e-4)
    assert out["base_value"] == pytest.approx(float(contribs[0, -1]), abs=1e-5)


def test_xgboost_credits_the_only_feature_that_decides_the_label():
    rng = np.random.default_rng(0)
    columns = ["noise_a", "noise_b", "signal", "noise_c"]
    x = pd.DataFrame(rng.normal(size=(400, 4)), columns=columns)
    y = (x["signal"] > 0).astype(int)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3},
                            xgboost.DMatrix(x, y), num_boost_round=20)
    loaded = wrap(booster, columns, "xgboost")

    out = explain_rows(loaded, x.iloc[:16])

    assert_consistent(out, loaded, x.iloc[:16])
    assert all(next(iter(r["contributions"])) == "signal" for r in out["explanations"])


def test_torch_rows_are_additive_in_log_odds_against_a_summarised_background(torch_model):
    frame = make_frame(8, seed=3)  # every 7th row has a NaN statistic, as model_inputs produces

    out = explain_rows(torch_model, frame, background=make_frame(200, seed=1), nsamples=128)

    assert out["method"].startswith(f"shap KernelExplainer ({BACKGROUND_ROWS} background rows")
    assert_consistent(out, torch_model, frame)
    # Explanations are not all zeros: the net's inputs move its output.
    assert max(abs(v) for v in out["explanations"][0]["contributions"].values()) > 1e-3


def test_torch_explanations_are_reproducible_with_a_seed(torch_model):
    frame, background = make_frame(2, seed=4), make_frame(100, seed=5)
    state = np.random.get_state()

    first = explain_rows(torch_model, frame, background=background, nsamples=64, seed=7)
    again = explain_rows(torch_model, frame, background=background, nsamples=64, seed=7)

    assert first == again
    # NumPy's global generator (which shap draws from) is left as it was.
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])


def test_torch_without_background_or_with_too_few_samples_is_refused(torch_model):
    with pytest.raises(ValueError, match="background"):
        explain_rows(torch_model, make_frame(2))
    # 21 features: Kernel SHAP's regression is singular below 42 coalitions.
    with pytest.raises(ValueError, match="nsamples must be at least 2 x 21 features = 42"):
        explain_rows(torch_model, make_frame(2), background=make_frame(10), nsamples=41)


def test_nan_is_explained_as_missing_for_xgboost(cancer):
    loaded, x = cancer
    frame = x.iloc[:4].copy()
    frame.loc[frame.index[0], "mean_radius"] = np.nan

    assert_consistent(explain_rows(loaded, frame), loaded, frame)


@pytest.mark.parametrize(("change", "named"), [
    (lambda f: f.drop(columns=["mean_texture"]), "mean_texture"),
    (lambda f: f.iloc[:0], "no rows"),
    (lambda f: f.assign(worst_area=np.inf), "worst_area"),
    (lambda f: f.assign(mean_area=-np.inf), "mean_area"),
    (lambda f: f.assign(mean_smoothness="0.1"), "mean_smoothness"),
])
def test_bad_frames_are_refused_naming_the_problem(cancer, change, named):
    loaded, x = cancer
    with pytest.raises(ValueError, match=named):
        explain_rows(loaded, change(x.iloc[:3]))


def test_bad_background_is_refused_naming_the_column(torch_model):
    background = make_frame(10).drop(columns=["amount"])
    with pytest.raises(ValueError, match=r"background lacks input column\(s\) \['amount'\]"):
        explain_rows(torch_model, make_frame(2), background=background)


def test_import_is_light():
    code = ("import sys, mlplatform.serving.explain; "
            "print(sorted(m for m in ('shap', 'xgboost', 'torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_serving_path_scores_like_predict(cancer, torch_model):
    """predict_matrix (in-place XGBoost, no DataFrame) gives predict's scores, for both kinds."""
    loaded, x = cancer
    frame = x.iloc[:50]
    np.testing.assert_allclose(loaded.predict_matrix(frame.to_numpy(dtype=np.float64)),
                               loaded.predict(frame), rtol=1e-6)
    tframe = make_frame(20)[torch_model.feature_names]
    np.testing.assert_allclose(torch_model.predict_matrix(tframe.to_numpy(dtype=np.float64)),
                               torch_model.predict(tframe), rtol=1e-6)


def test_the_serving_path_refuses_wrong_widths_and_mismatched_booster_names(cancer):
    loaded, x = cancer
    with pytest.raises(ValueError, match="takes 30 inputs"):
        loaded.predict_matrix(x.iloc[:2, :5].to_numpy())
    # A booster whose own feature names are not the signature's: every call goes through a
    # named DMatrix, which XGBoost refuses (no silent positional scoring).
    renamed = wrap(loaded.booster, [f"x_{c}" for c in x.columns], "xgboost")
    with pytest.raises(ValueError, match="feature_names mismatch"):
        renamed.predict_matrix(x.iloc[:2].to_numpy(dtype=np.float64))
    assert renamed._names_match is False and loaded._names_match is True
