"""The torch tabular model: pickle-free save/load, unknown codes, and what the registry loader
accepts (no Ray here; MLflow runs on a SQLite file in the test's folder)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mlplatform.errors import ModelNotFound
from mlplatform.models.torch_net import (
    ARCH_FILE,
    STATE_FILE,
    TabularArch,
    TabularNet,
    load_torch_model,
    read_arch,
    save_torch_model,
)
from tests.projects import project

#: A network over the fraud example's model inputs (any column layout would do).
FEATURE_COLUMNS = project("fraud").input_columns
CATEGORICAL = {c: n + 1 for c, n in project("fraud").categorical.items()}  # code c: row c + 1
NUMERIC = [c for c in FEATURE_COLUMNS if c not in CATEGORICAL]


def make_arch(**overrides) -> TabularArch:
    fields = {
        "feature_columns": FEATURE_COLUMNS, "categorical": CATEGORICAL, "embedding_dim": 4,
        "hidden_sizes": [16, 8], "dropout": 0.2,
        "numeric_means": {c: float(i) for i, c in enumerate(NUMERIC)},
        "numeric_stds": {c: 1.0 + i / 10 for i, c in enumerate(NUMERIC)},
        **overrides}
    return TabularArch(**fields)


def make_frame(n: int = 64, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(3.0, 4.0, size=(n, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    for col, rows in CATEGORICAL.items():
        frame[col] = rng.integers(-1, rows - 1, size=n).astype(np.float64)  # -1 .. last code
    frame.loc[::7, "amount_z_user_7d"] = np.nan  # unknown statistics stay NaN in model_inputs
    return frame


def trained_net(arch: TabularArch, seed: int = 0) -> TabularNet:
    """A net whose weights are not the initial ones (a few optimiser steps on random labels)."""
    torch.manual_seed(seed)
    net = TabularNet(arch)
    x = torch.tensor(make_frame(256, seed).to_numpy(), dtype=torch.float32)
    y = torch.randint(0, 2, (256,)).float()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    return net.eval()


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    arch = make_arch()
    net = trained_net(arch)
    frame = make_frame()
    save_torch_model(tmp_path, net, arch)

    loaded = load_torch_model(tmp_path)

    with torch.inference_mode():
        expected = torch.sigmoid(net(torch.tensor(frame.to_numpy(), dtype=torch.float32))).numpy()
    scores = loaded.predict(frame)
    assert scores.shape == (len(frame),)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_array_equal(scores, expected.astype(np.float64))
    # Column order in the frame does not matter: the model selects its own columns.
    np.testing.assert_array_equal(loaded.predict(frame[FEATURE_COLUMNS[::-1]]), scores)
    assert loaded.feature_names == FEATURE_COLUMNS


def test_weights_file_loads_with_weights_only_and_holds_only_tensors(tmp_path):
    arch = make_arch()
    net = trained_net(arch)
    save_torch_model(tmp_path, net, arch)

    state = torch.load(tmp_path / STATE_FILE, map_location="cpu", weights_only=True)

    assert set(state) == set(net.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    for name, tensor in net.state_dict().items():
        assert torch.equal(state[name], tensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARCH_FILE, STATE_FILE])


def test_architecture_config_round_trips_through_json(tmp_path):
    arch = make_arch(clip=7.5)
    save_torch_model(tmp_path, trained_net(arch), arch)

    stored = json.loads((tmp_path / ARCH_FILE).read_text())
    assert stored["feature_columns"] == FEATURE_COLUMNS
    assert stored["categorical"] == CATEGORICAL
    assert stored["numeric_means"] == arch.numeric_means
    assert stored["numeric_stds"] == arch.numeric_stds
    assert (stored["embedding_dim"], stored["hidden_sizes"], stored["dropout"]) == (4, [16, 8], 0.2)
    assert read_arch(tmp_path) == arch
    assert read_arch(tmp_path).numeric_columns == NUMERIC


def test_bad_architecture_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not feature columns"):
        make_arch(categorical={"no_such_code": 3})
    with pytest.raises(ValueError, match="numeric_means must have exactly"):
        make_arch(numeric_means={"amount": 1.0})
    (tmp_path / ARCH_FILE).write_text(json.dumps({"feature_columns": ["a"], "unexpected": 1}))
    with pytest.raises(ModelNotFound, match="not a valid torch architecture"):
        load_torch_model(tmp_path)
    with pytest.raises(ModelNotFound, match="arch.json does not exist"):
        load_torch_model(tmp_path / "empty")


def test_weights_that_do_not_fit_the_arch_are_refused(tmp_path):
    save_torch_model(tmp_path, trained_net(make_arch()), make_arch(hidden_sizes=[32]))
    with pytest.raises(ModelNotFound, match="do not match arch.json"):
        load_torch_model(tmp_path)


def test_category_codes_map_to_embedding_rows_with_row_0_for_unknown(tmp_path):
    arch = make_arch()
    net = TabularNet(arch)
    col = "country_code"
    rows = CATEGORICAL[col]
    assert rows == len(project("fraud").request.fields["country"].enum) + 1
    codes = [-1.0, np.nan, 0.0, 3.0, rows - 2.0, rows - 1.0, 99.0, -5.0]
    frame = make_frame(len(codes))
    frame[col] = codes

    mapped = net.embedding_rows(torch.tensor(frame.to_numpy(), dtype=torch.float32))

    position = list(arch.categorical).index(col)
    # code c -> row c + 1; -1, NaN and codes outside the vocabulary -> row 0 (unknown)
    assert mapped[:, position].tolist() == [0, 0, 1, 4, rows - 1, 0, 0, 0]

    # Every unknown code scores the same as -1: they share the embedding row.
    model = load_torch_model(save_torch_model(tmp_path, net, arch))
    same_row = frame.iloc[[0] * 4].reset_index(drop=True)
    same_row[col] = [-1.0, np.nan, rows - 1.0, 99.0]
    scores = model.predict(same_row)
    assert np.all(scores == scores[0])
    known = same_row.iloc[[0]].assign(**{col: 3.0})
    assert model.predict(known)[0] != scores[0]


def test_nan_numerics_score_finite(tmp_path):
    arch = make_arch()
    model = load_torch_model(save_torch_model(tmp_path, trained_net(arch), arch))
    frame = make_frame(8)
    frame[NUMERIC] = np.nan
    assert np.isfinite(model.predict(frame)).all()


def test_small_batches_score_on_one_thread_and_leave_the_thread_count_alone(tmp_path):
    arch = make_arch()
    model = load_torch_model(save_torch_model(tmp_path, trained_net(arch), arch))
    frame = make_frame(10_000)
    threads = torch.get_num_threads()

    whole = model.predict(frame)  # above the single-thread size
    parts = np.concatenate([model.predict(frame.iloc[i:i + 100]) for i in range(0, 10_000, 100)])

    np.testing.assert_allclose(parts, whole, rtol=1e-6, atol=1e-7)
    assert torch.get_num_threads() == threads


# --- the registry loader -----------------------------------------------------------------------

class _PickledModel:
    """A python_model that records being unpickled (by creating a file) if anything loads it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        self.__dict__.update(state)
        open(self.marker, "w").close()

    def predict(self, context, model_input, params=None):
        return np.zeros(len(model_input))


@pytest.fixture
def registry(tmp_path):
    from mlplatform.config import PlatformConfig
    from mlplatform.registry import ModelRegistry

    return ModelRegistry(PlatformConfig(storage_root=tmp_path / "mlp"))


def _log_and_register(registry, name: str, log_model) -> str:
    import mlflow

    from mlplatform import _mlflow

    experiment = _mlflow.ensure_experiment(registry.config, "unit")
    with mlflow.start_run(experiment_id=experiment):
        info = log_model()
    return registry.register(info.model_uri, name).uri


def test_a_pickled_pyfunc_is_refused_at_registration_and_at_load_without_unpickling_it(
        registry, tmp_path):
    """The registry refuses to register it (nothing registered); one registered behind the
    platform's back (plain MLflow) is refused by the loader. Neither unpickles it."""
    import mlflow

    from mlplatform import _mlflow
    from mlplatform.errors import ModelRefused
    from mlplatform.registry import load_model

    marker = tmp_path / "unpickled"

    from mlflow.pyfunc import PythonModel

    class Pickled(_PickledModel, PythonModel):
        """A python_model MLflow stores with cloudpickle (what the loader must refuse)."""

    experiment = _mlflow.ensure_experiment(registry.config, "unit")
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Pickled(str(marker)), pip_requirements=["numpy"],
            input_example=make_frame(2))
    marker.unlink(missing_ok=True)  # input-example validation may have round-tripped it

    with pytest.raises(ModelRefused, match="cloudpickled python_model.*never unpickles.*ONNX"):
        registry.register(info.model_uri, "pickled")
    assert registry.list_versions("pickled") == []
    mlflow.register_model(info.model_uri, "pickled")      # around the platform's registry
    with pytest.raises(ModelRefused, match="never unpickles"):
        load_model(registry, "pickled/1")
    assert not marker.exists(), "a check unpickled the python_model"


def test_loader_loads_a_torch_pyfunc_and_scores_like_the_saved_model(registry, tmp_path):
    import mlflow
    import yaml

    from mlplatform.registry import load_model

    arch = make_arch()
    folder = save_torch_model(tmp_path / "torch_model", trained_net(arch), arch)
    frame = make_frame(32)

    def log_model():
        from mlplatform.models import signature_for

        return mlflow.pyfunc.log_model(
            name="model", loader_module="mlplatform.models.torch_net", data_path=str(folder),
            signature=signature_for(frame, np.zeros(len(frame))), input_example=frame.head(2),
            pip_requirements=["torch"])

    uri = _log_and_register(registry, "tabular", log_model)
    loaded = load_model(registry, "tabular/1")

    assert loaded.kind == "torch" and loaded.version.uri == uri
    assert loaded.feature_names == FEATURE_COLUMNS
    expected = load_torch_model(folder).predict(frame)
    np.testing.assert_array_equal(loaded.predict(frame), expected)
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(uri).predict(frame), expected)
    with pytest.raises(TypeError, match="no booster"):
        _ = loaded.booster
    local = registry.download("tabular/1", tmp_path / "dl")[1]
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlplatform.models.torch_net"
    assert "python_model" not in flavor
    assert not list(local.rglob("*.pkl"))


def test_loader_still_loads_xgboost_models_unchanged(registry):
    import mlflow
    import xgboost

    from mlplatform.models import signature_for
    from mlplatform.registry import load_model

    frame = make_frame(200).fillna(0.0)
    labels = (frame["amount"] > 3.0).astype(int)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3},
                            xgboost.DMatrix(frame, label=labels), num_boost_round=5)

    def log_model():
        return mlflow.xgboost.log_model(
            booster, name="model", model_format="ubj",
            signature=signature_for(frame, booster.predict(xgboost.DMatrix(frame))))

    _log_and_register(registry, "trees", log_model)
    loaded = load_model(registry, "trees/1")

    assert loaded.kind == "xgboost" and loaded.feature_names == FEATURE_COLUMNS
    expected = booster.predict(xgboost.DMatrix(frame.to_numpy(), feature_names=FEATURE_COLUMNS))
    np.testing.assert_array_equal(loaded.booster.predict(xgboost.DMatrix(frame)), expected)
    np.testing.assert_array_equal(loaded.predict(frame), expected)
