"""Sweep pieces that need no Ray cluster: search-space translation and validation, the sweep's
argument checks, the XGBoost trial's per-round reports, and the tune job's config errors."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from mlplatform.errors import ConfigError
from mlplatform.training._xgb_trial import tune_trial
from mlplatform.training.search_space import apply_overrides, largest_value, to_tune_space
from mlplatform.training.tuning import check_sweep
from tests.projects import FRAUD, project

REPO = Path(__file__).resolve().parents[2]


def fraud_config(model: str = "xgboost", **overrides):
    """A training config of the fraud example, as a project makes it (task, label, inputs)."""
    from mlplatform.pipelines import train_config

    return train_config(project("fraud"), model, **overrides)


def test_plain_search_space_becomes_tune_domains():
    space = to_tune_space({
        "params.max_depth": {"randint": [3, 9]},
        "params.eta": {"loguniform": [0.01, 0.3]},
        "params.subsample": {"uniform": [0.6, 1.0]},
        "params.min_child_weight": {"qrandint": [1, 10, 3]},
        "num_boost_round": {"choice": [50, 100]},
        "early_stopping_rounds": {"grid_search": [0, 10]},
        "params.tree_method": "hist",
    }, fraud_config())
    depth, eta, sub = space["params.max_depth"], space["params.eta"], space["params.subsample"]
    assert isinstance(depth, Integer) and (depth.lower, depth.upper) == (3, 9)
    assert isinstance(eta, Float) and isinstance(eta.get_sampler(), LogUniform)
    assert (eta.lower, eta.upper) == (0.01, 0.3)
    assert isinstance(sub, Float) and (sub.lower, sub.upper) == (0.6, 1.0)
    assert isinstance(space["num_boost_round"], Categorical)
    assert space["num_boost_round"].categories == [50, 100]
    assert space["early_stopping_rounds"] == tune.grid_search([0, 10])
    assert space["params.tree_method"] == "hist"
    rng = np.random.default_rng(0)
    assert set(depth.sample(size=200, random_state=rng)) == set(range(3, 9))  # upper exclusive
    etas = eta.sample(size=200, random_state=rng)
    assert min(etas) >= 0.01 and max(etas) <= 0.3
    assert set(space["params.min_child_weight"].sample(size=200, random_state=rng)) <= {0, 3, 6, 9}


def test_torch_keys_translate_for_the_torch_model():
    space = to_tune_space({"torch.learning_rate": {"loguniform": [1e-4, 1e-2]},
                           "torch.hidden_sizes": {"choice": [[64], [128, 64]]}},
                          fraud_config("torch"))
    assert space["torch.hidden_sizes"].categories == [[64], [128, 64]]


def test_overrides_apply_dotted_keys_and_revalidate():
    base = fraud_config(params={"max_depth": 6, "subsample": 0.7})
    cfg = apply_overrides(base, {"params.max_depth": np.int64(4), "params.eta": np.float64(0.05),
                                 "num_boost_round": 30, "torch.dropout": 0.3})
    assert cfg.params["max_depth"] == 4 and type(cfg.params["max_depth"]) is int
    assert cfg.params["eta"] == 0.05 and cfg.num_boost_round == 30 and cfg.torch.dropout == 0.3
    assert cfg.params["subsample"] == 0.7  # other params untouched
    assert cfg.xgb_params()["objective"] == "binary:logistic"   # the task's, under them
    assert base.params["max_depth"] == 6  # the base config is not changed


def test_largest_value_of_the_round_count():
    assert largest_value({"num_boost_round": {"randint": [10, 50]}}, "num_boost_round", 7) == 49
    assert largest_value({"num_boost_round": {"choice": [80, 20]}}, "num_boost_round", 7) == 80
    assert largest_value({"params.eta": {"uniform": [0.1, 0.2]}}, "num_boost_round", 7) == 7


@pytest.mark.parametrize(("space", "names"), [
    ({"learning_rate": {"uniform": [0.1, 0.2]}}, ["'learning_rate'", "params.<XGBoost"]),
    ({"features_path": "/tmp/x"}, ["'features_path'", "Tunable keys"]),
    ({"torch.dropout": {"uniform": [0.0, 0.5]}}, ["'torch.dropout'", "model 'xgboost'"]),
    ({"params.eta": {"normal": [0.1, 0.2]}}, ["'params.eta'", "unknown sampler 'normal'"]),
    ({"params.eta": [0.1, 0.2]}, ["'params.eta'", "{choice: [0.1, 0.2]}"]),
    ({"params.eta": {"uniform": [0.1]}}, ["'params.eta'", "uniform takes [lower, upper]"]),
    ({"params.eta": {"uniform": [0.3, 0.1]}}, ["'params.eta'", "lower < upper"]),
    ({"params.eta": {"loguniform": [0, 0.3]}}, ["'params.eta'", "lower > 0"]),
    ({"params.max_depth": {"randint": [2.5, 9]}}, ["'params.max_depth'", "integers"]),
    ({"params.max_depth": {"qrandint": [2, 9, 0]}}, ["'params.max_depth'", "q > 0"]),
    ({"params.eta": {"choice": []}}, ["'params.eta'", "non-empty list"]),
    ({"params.eta": {"uniform": [0.1, 0.2], "choice": [1]}}, ["'params.eta'", "one sampler"]),
    ({"num_boost_round": {"uniform": [10, 100]}}, ["'num_boost_round'", "valid integer"]),
    ({"early_stopping_rounds": {"randint": [-2, 5]}}, ["'early_stopping_rounds'", "-2"]),
    ({"params.subsample": {"uniform": [0.5, 1.5]}}, ["'params.subsample'", "1.5", "XGBoost"]),
    ({"params.max_dept": {"randint": [3, 9]}}, ["'params.max_dept'", "does not know"]),
    ({"params.objective": {"choice": ["binary:logistic", "nope"]}}, ["'params.objective'", "nope"]),
    ({"params.eval_metric": {"choice": [["logloss"], ["logloss", "aucpr"]]}},
     ["'params.eval_metric'", "metric 'val_auc_pr' is not reported"]),
])
def test_bad_search_space_names_the_key(space, names):
    with pytest.raises(ConfigError) as err:
        check_sweep(fraud_config(), space, num_samples=2)
    for name in names:
        assert name in str(err.value)


def test_empty_search_space_is_refused():
    with pytest.raises(ConfigError, match="non-empty mapping"):
        to_tune_space({}, fraud_config())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_samples": 0}, "num_samples"),
    ({"max_concurrent": 0}, "max_concurrent"),
    ({"scheduler": "hyperband"}, "scheduler 'hyperband'"),
    ({"search_alg": "bayesopt"}, "search_alg 'bayesopt'"),
    ({"mode": "maximize"}, "mode"),
    ({"metric": "val_f1"}, "metric 'val_f1'"),
    ({"grace_period": 500}, "grace_period 500"),
    ({"reduction_factor": 1}, "reduction_factor"),
])
def test_bad_sweep_arguments_are_named(kwargs, message):
    args = {"num_samples": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        check_sweep(fraud_config(num_boost_round=50), {"params.eta": {"uniform": [0.1, 0.2]}},
                    **args)


def test_base_params_rejected_by_xgboost():
    with pytest.raises(ConfigError, match="config is rejected.*max_depth"):
        check_sweep(fraud_config(params={"objective": "binary:logistic", "max_depth": -1,
                                        "eval_metric": ["aucpr"]}),
                    {"params.eta": {"uniform": [0.1, 0.2]}}, num_samples=1)


def test_settings_resolve_search_alg_and_asha():
    settings = check_sweep(fraud_config(num_boost_round=50),
                           {"num_boost_round": {"choice": [50, 120]},
                            "params.eta": {"uniform": [0.1, 0.2]}}, num_samples=4)
    assert settings["max_rounds"] == 120 and settings["grace_period"] == 12
    expected = next((n for n in ("optuna", "hyperopt") if importlib.util.find_spec(n)), "random")
    assert settings["search_alg"] == expected
    grid = check_sweep(fraud_config(), {"params.max_depth": {"grid_search": [3, 5]}},
                       num_samples=1, scheduler="fifo")
    assert grid["search_alg"] == "random" and "grace_period" not in grid


@pytest.mark.parametrize("alg", ["optuna", "hyperopt"])
def test_missing_search_package_or_grid_is_explained(alg):
    space = {"params.max_depth": {"grid_search": [3, 5]}}
    if importlib.util.find_spec(alg) is None:
        with pytest.raises(ConfigError, match=f"pip install {alg}"):
            check_sweep(fraud_config(), space, num_samples=1, search_alg=alg)
    else:
        with pytest.raises(ConfigError, match="cannot expand grid_search"):
            check_sweep(fraud_config(), space, num_samples=1, search_alg=alg)


def test_torch_sweep_names_the_missing_entry_point():
    from mlplatform.training import tuning

    try:
        tuning._backend("torch")
    except ConfigError as exc:
        assert "mlplatform.training.torch_train" in str(exc) and "tune_trial" in str(exc)
    else:
        module = importlib.import_module("mlplatform.training.torch_train")
        assert callable(module.tune_trial) and callable(module.log_tuned_model)


def _frames(n=600, seed=0):
    rng = np.random.default_rng(seed)
    cfg = fraud_config()
    x = pd.DataFrame(rng.normal(size=(n, len(cfg.feature_columns))), columns=cfg.feature_columns)
    y = (x.iloc[:, 0] + 0.5 * rng.normal(size=n) > 1.0).astype(int)
    return cfg, x.assign(**{cfg.label: y})


@pytest.mark.parametrize("patience", [0, 3])
def test_xgboost_trial_reports_every_round_and_hands_over_the_kept_model(patience, tmp_path):
    import xgboost

    cfg, df = _frames()
    cfg = cfg.model_copy(update={"num_boost_round": 40, "early_stopping_rounds": patience,
                                 "params": {**cfg.params, "eta": 0.8, "max_depth": 6}})
    reports = []

    def report(rounds, metrics, *, best_round, final, model_dir=None):
        saved = None
        if model_dir is not None:  # the folder is temporary: keep what it held
            saved = tmp_path / f"model-{rounds}.ubj"
            saved.write_bytes((Path(model_dir) / "model.ubj").read_bytes())
        reports.append({"rounds": rounds, **metrics, "best_round": best_round,
                        "final": final, "model": saved})

    tune_trial(cfg, df.iloc[:400], df.iloc[400:], report, metric="val_logloss", mode="min")
    rounds = [r["rounds"] for r in reports]
    assert rounds == list(range(1, len(reports) + 1))
    assert all({"val_auc_pr", "val_auc_roc", "val_logloss"} <= r.keys() for r in reports)
    assert [r["model"] is not None for r in reports] == [False] * (len(reports) - 1) + [True]
    last = reports[-1]
    booster = xgboost.Booster()
    booster.load_model(str(last["model"]))
    if patience == 0:
        assert len(reports) == 40 and last["best_round"] == 40
    else:  # stopped `patience` rounds after the best (lowest logloss) round, kept that round
        best = min(reports, key=lambda r: r["val_logloss"])
        assert len(reports) < 40 and last["rounds"] == best["rounds"] + patience
        assert last["best_round"] == best["rounds"]
        assert last["final"]["val_logloss"] == best["val_logloss"]
    assert booster.num_boosted_rounds() == last["best_round"]


def _project_copy(tmp_path, edit) -> Path:
    """The fraud example copied, with its xgboost model's tune section edited."""
    import shutil

    import yaml

    folder = tmp_path / "fraud"
    shutil.copytree(FRAUD, folder)
    data = yaml.safe_load((folder / "mlplatform.yaml").read_text())
    edit(data["models"]["xgboost"]["tune"])
    (folder / "mlplatform.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _run_job(tmp_path, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs/tune.py"), "--project", str(folder)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_tune_job_rejects_bad_configs_with_exit_2(tmp_path):
    def bad_key(tune):
        tune["search_space"]["params.etaa"] = tune["search_space"].pop("params.eta")

    out = _run_job(tmp_path, _project_copy(tmp_path / "a", bad_key))
    assert out.returncode == 2, out.stderr
    assert "params.etaa" in out.stderr and "does not know" in out.stderr
    assert "models.xgboost.tune" in out.stderr

    def bad_section(tune):
        tune["num_sample"] = tune.pop("num_samples")

    out = _run_job(tmp_path, _project_copy(tmp_path / "b", bad_section))
    assert out.returncode == 2 and "models.xgboost.tune.num_sample" in out.stderr
    assert not (tmp_path / ".mlplatform").exists(), "a rejected project must change nothing"


def test_shipped_tune_config_is_valid():
    from mlplatform.pipelines.tune_job import tune_section

    tune = tune_section(project("fraud"), "xgboost")
    settings = check_sweep(fraud_config(), **tune.model_dump(exclude={"seed"}))
    assert settings["scheduler"] == "asha" and settings["max_rounds"] == 300


def test_mlp_tune_rejects_a_bad_search_space_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from mlplatform.cli import app

    def bad_key(tune):
        tune["search_space"]["params.etaa"] = tune["search_space"].pop("params.eta")

    out = CliRunner().invoke(app, ["tune", "--project", str(_project_copy(tmp_path, bad_key))])
    assert out.exit_code == 2 and "params.etaa" in out.output
