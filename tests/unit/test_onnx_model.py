"""ONNX models trained elsewhere: logged with log_onnx_model, loaded back with load_model_uri
(no pickle), scored like the platform's own models; and the graphs and pickles it refuses.
No Ray; MLflow runs on a SQLite file in the module's temporary folder.

dtype: the scikit-learn graphs take float32, as users' do. skl2onnx (1.20) writes a float64
gradient-boosting graph as a double TreeEnsemble under ai.onnx.ml opset 1, which onnxruntime
(1.32) refuses to load. float32 loses nothing on the tree paths: scikit-learn's trees cast X to
float32 themselves before comparing it with their thresholds, so the rows here take the same
branches. What differs is the sum of the trees' leaf values, done in float32 by onnxruntime
(~1e-7 relative): probabilities stay under 2e-7, but on diabetes' raw target (25..346) 100
trees end up to 1.3e-4 off, so the regressor learns the standardised target (|y| < 2.6; 7e-7).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlplatform.config import PlatformConfig
from mlplatform.errors import ModelRefused
from mlplatform.models import OnnxModel, load_model_uri, log_onnx_model, signature_for
from mlplatform.models.onnx_model import load_onnx
from mlplatform.models.version import UriVersion

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlatformConfig, str]]:
    """A PlatformConfig whose MLflow is the SQLite file the fluent API logs to, and the id of
    an experiment whose artifacts live in the same folder."""
    root = tmp_path_factory.mktemp("onnx")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        config = PlatformConfig(storage_root=root)
        assert config.mlflow_tracking_uri == mlflow.get_tracking_uri()
        exp = mlflow.create_experiment("onnx", artifact_location=(root / "mlartifacts").as_uri())
        yield config, exp
    finally:
        mlflow.set_tracking_uri(previous)


def _dataset(loader) -> tuple[pd.DataFrame, np.ndarray]:
    data = loader(as_frame=True)
    return data.data, data.target.to_numpy()


@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, np.ndarray, GradientBoostingClassifier]:
    frame, y = _dataset(load_wine)
    return frame, y, GradientBoostingClassifier(random_state=0).fit(frame.to_numpy(), y)


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, np.ndarray, GradientBoostingClassifier]:
    frame, y = _dataset(load_breast_cancer)
    return frame, y, GradientBoostingClassifier(random_state=0).fit(frame.to_numpy(), y)


def _log_and_load(store, onx, sample: pd.DataFrame, task: str, classes=None):
    config, exp = store
    with mlflow.start_run(experiment_id=exp):
        info = log_onnx_model(onx, sample, task, classes)
    return load_model_uri(info.model_uri, config)


def _assert_close(loaded, frame: pd.DataFrame, expected: np.ndarray) -> None:
    """Both scoring paths give ``expected`` (shape included) within TOLERANCE on every row."""
    for got in (loaded.predict(frame), loaded.predict_matrix(frame.to_numpy(dtype=np.float64))):
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < TOLERANCE


@pytest.mark.parametrize("zipmap", [False, True], ids=["zipmap_off", "zipmap_on"])
def test_multiclass_gradient_boosting_round_trip(store, wine, zipmap):
    frame, _, clf = wine
    onx = to_onnx(clf, frame.to_numpy()[:1].astype(np.float32), options={"zipmap": zipmap})
    loaded = _log_and_load(store, onx, frame, "multiclass")
    assert (loaded.kind, loaded.task, loaded.classes) == ("onnx", "multiclass", [0, 1, 2])
    # The graph really has the output kind under test: a tensor, or ZipMap's list of dicts.
    types = [o.type for o in loaded.model.session.get_outputs()]
    assert any(t.startswith("seq(map(") for t in types) == zipmap
    _assert_close(loaded, frame, clf.predict_proba(frame.to_numpy()))


@pytest.mark.parametrize("zipmap", [False, True], ids=["zipmap_off", "zipmap_on"])
def test_binary_gradient_boosting_round_trip(store, cancer, zipmap):
    frame, _, clf = cancer
    onx = to_onnx(clf, frame.to_numpy()[:1].astype(np.float32), options={"zipmap": zipmap})
    loaded = _log_and_load(store, onx, frame, "binary")
    assert (loaded.task, loaded.classes, loaded.model.classes) == ("binary", None, [0, 1])
    types = [o.type for o in loaded.model.session.get_outputs()]
    assert any(t.startswith("seq(map(") for t in types) == zipmap
    _assert_close(loaded, frame, clf.predict_proba(frame.to_numpy())[:, 1])


def test_regression_gradient_boosting_round_trip(store):
    frame, y = _dataset(load_diabetes)
    y = (y - y.mean()) / y.std()  # see the module docstring: float32 sums of leaf values
    reg = GradientBoostingRegressor(random_state=0).fit(frame.to_numpy(), y)
    onx = to_onnx(reg, frame.to_numpy()[:1].astype(np.float32))
    loaded = _log_and_load(store, onx, frame, "regression")
    assert (loaded.task, loaded.classes) == ("regression", None)
    _assert_close(loaded, frame, reg.predict(frame.to_numpy()))


def test_string_class_labels_come_from_the_graph(store, wine):
    frame, y, _ = wine
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    clf = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(frame.to_numpy(), names)
    onx = to_onnx(clf, frame.to_numpy()[:1].astype(np.float32), options={"zipmap": False})
    loaded = _log_and_load(store, onx, frame, "multiclass")  # no classes given
    assert loaded.classes == list(clf.classes_) == ["barbera", "barolo", "grignolino"]
    _assert_close(loaded, frame, clf.predict_proba(frame.to_numpy()))


def test_double_input_is_fed_float64(store, wine):
    frame, y, _ = wine
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame.to_numpy(), y)
    onx = to_onnx(clf, frame.to_numpy()[:1], options={"zipmap": False})  # float64 end to end
    loaded = _log_and_load(store, onx, frame, "multiclass")
    assert [i.type for i in loaded.model.session.get_inputs()] == ["tensor(double)"]
    expected = clf.predict_proba(frame.to_numpy())
    assert np.abs(loaded.predict_matrix(frame.to_numpy()) - expected).max() < 1e-12


def _model(nodes, inputs, outputs, domains=(("", 21),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains])


def _linear_per_column() -> onnx.ModelProto:
    """value = 2 * a + 3 * b, with one input per column, declared b (double) before a (float)."""
    two = helper.make_tensor("two", TensorProto.DOUBLE, [], [2.0])
    three = helper.make_tensor("three", TensorProto.DOUBLE, [], [3.0])
    nodes = [helper.make_node("Constant", [], ["c2"], value=two),
             helper.make_node("Constant", [], ["c3"], value=three),
             helper.make_node("Cast", ["a"], ["a64"], to=TensorProto.DOUBLE),
             helper.make_node("Mul", ["a64", "c2"], ["a2"]),
             helper.make_node("Mul", ["b", "c3"], ["b3"]),
             helper.make_node("Add", ["a2", "b3"], ["variable"])]
    return _model(nodes, [helper.make_tensor_value_info("b", TensorProto.DOUBLE, [None, 1]),
                          helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1])],
                  [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])])


def test_one_input_per_column_is_fed_by_name(store):
    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan, 0.5], "b": [10.0, 0.0, 1.0, -4.0]})
    loaded = _log_and_load(store, _linear_per_column(), frame.fillna(0.0), "regression")
    assert loaded.feature_names == ["a", "b"]
    got = loaded.predict(frame)
    # Fed by position (b's values into a) the first row would be 2 * 10 + 3 * 1 = 23.
    assert np.allclose(got[[0, 1, 3]], [32.0, 4.0, -11.0])
    assert np.isnan(got[2])  # NaN passes through a float input
    assert np.array_equal(loaded.predict_matrix(frame.to_numpy()), got, equal_nan=True)


def test_session_is_cpu_and_single_threaded():
    model = OnnxModel(_linear_per_column(), ["a", "b"], "regression")
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert model.session.get_session_options().intra_op_num_threads == 1
    assert (model.task, model.classes, model.feature_names) == ("regression", None, ["a", "b"])


def _save(proto: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, folder / "model.onnx")
    return folder / "model.onnx"


def _version(tag: str) -> UriVersion:
    return UriVersion(name=tag, version="", source=f"runs:/test/{tag}", run_id=None, aliases=(),
                      tags={})


def test_task_and_classes_are_inferred_without_metadata(tmp_path, wine, cancer):
    frame, _, clf = cancer
    binary = to_onnx(clf, frame.to_numpy()[:1].astype(np.float32))  # ZipMap on: the default
    model = load_onnx(_save(binary, tmp_path / "b"), _version("b"), list(frame.columns), {})
    assert (model.task, model.classes) == ("binary", [0, 1])
    assert np.abs(model.predict(frame) - clf.predict_proba(frame.to_numpy())[:, 1]).max() < TOLERANCE

    frame, y, _ = wine
    names = np.array(["x", "y", "z"])[y]
    multi = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(frame.to_numpy(), names)
    onx = to_onnx(multi, frame.to_numpy()[:1].astype(np.float32), options={"zipmap": False})
    model = load_onnx(_save(onx, tmp_path / "m"), _version("m"), list(frame.columns), {})
    assert (model.task, model.classes) == ("multiclass", ["x", "y", "z"])

    model = load_onnx(_save(_linear_per_column(), tmp_path / "r"), _version("r"), ["a", "b"], {})
    assert (model.task, model.classes) == ("regression", None)


def test_pickled_sklearn_model_is_refused(store, cancer):
    frame, y, _ = cancer
    clf = DecisionTreeClassifier(max_depth=2).fit(frame, y)
    config, exp = store
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.sklearn.log_model(  # cloudpickle: MLflow's default (skops) is no pickle
            clf, name="model", signature=signature_for(frame, clf.predict_proba(frame)[:, 1]),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
    with pytest.raises(ModelRefused, match="pickle") as refused:
        load_model_uri(info.model_uri, config)
    assert "ONNX" in str(refused.value) and "skl2onnx" in str(refused.value)


def _two_unrelated_inputs() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["left", "right"], ["variable"])],
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1])
                   for n in ("left", "right")],
                  [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])])


def test_two_unrelated_inputs_are_refused(store):
    frame = pd.DataFrame({"x1": [1.0, 2.0], "x2": [3.0, 4.0]})
    with pytest.raises(ModelRefused, match="one input per signature column"):
        log_onnx_model(_two_unrelated_inputs(), frame, "regression")
    config, exp = store
    with mlflow.start_run(experiment_id=exp):  # as a user logging it without the platform
        info = mlflow.onnx.log_model(_two_unrelated_inputs(), name="model",
                                     signature=signature_for(frame, [0.0, 0.0], "regression"))
    with pytest.raises(ModelRefused) as refused:
        load_model_uri(info.model_uri, config)
    message = str(refused.value)
    for part in ("left", "right", "['x1', 'x2']", "one tensor input [rows, 2]",
                 "one input per signature column"):
        assert part in message


def test_custom_operators_are_refused(tmp_path):
    custom = _model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.ops")],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                    domains=(("", 21), ("com.example.ops", 1)))
    with pytest.raises(ModelRefused, match=r"custom operators \['com.example.ops:Frobnicate'\]"):
        load_onnx(_save(custom, tmp_path), _version("custom"), ["p", "q"], {})
    with pytest.raises(ModelRefused, match="com.example.ops:Frobnicate"):
        log_onnx_model(custom, pd.DataFrame({"p": [1.0], "q": [2.0]}), "regression")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 8)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "8")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [weights])
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
                     .SerializeToString())
    with pytest.raises(ModelRefused, match="not a valid ONNX model.*outside"):
        load_onnx(path, _version("external"), ["p", "q"], {})


def test_outputs_the_platform_cannot_tell_apart_are_refused(tmp_path):
    two = _model([helper.make_node("Identity", ["x"], ["first"]),
                  helper.make_node("Identity", ["x"], ["second"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                 [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3])
                  for n in ("first", "second")])
    with pytest.raises(ModelRefused, match=r"first tensor\(float\).*second tensor\(float\)"):
        load_onnx(_save(two, tmp_path), _version("two"), ["p", "q", "r"], {"task": "multiclass"})


def test_classes_that_do_not_match_the_probabilities_are_refused(wine):
    frame, _, clf = wine
    onx = to_onnx(clf, frame.to_numpy()[:1].astype(np.float32), options={"zipmap": False})
    with pytest.raises(ModelRefused, match="3 probability columns"):
        OnnxModel(onx, list(frame.columns), "multiclass", classes=["a", "b"])
    with pytest.raises(ModelRefused, match="a binary model has at most 2"):
        OnnxModel(onx, list(frame.columns), "binary")
