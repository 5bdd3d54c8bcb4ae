"""Projects (``mlplatform.yaml``): a bad file fails while loading, naming the file and the key;
the model-inputs function runs the same on request records and on frames, in numpy or pandas
form, and travels by value to processes that cannot import the project folder; ``mlp init``
writes projects that load and check as they are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.errors import ConfigError, ProjectError
from mlplatform.project import find_project_file, load_project, model_inputs, request_model
from mlplatform.project.scaffold import TEMPLATES, scaffold
from tests.projects import REPO, WINE


@pytest.fixture
def scaffolded(tmp_path) -> Path:
    """A fresh feature-store project (``mlp init``'s default template)."""
    folder = tmp_path / "shop"
    scaffold(folder)
    return folder


def _edit(folder: Path, change) -> Path:
    file = folder / "mlplatform.yaml"
    data = yaml.safe_load(file.read_text())
    change(data)
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return file


def _fails(folder: Path, *expected: str) -> str:
    with pytest.raises(ProjectError) as exc:
        load_project(folder)
    message = " ".join(str(exc.value).split())
    assert str(folder / "mlplatform.yaml") in message, message
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"
    return message


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_template_loads_and_checks_as_written(tmp_path, template):
    folder = tmp_path / f"my-{template}"
    written = scaffold(folder, template)
    assert {p.name for p in written} >= {"mlplatform.yaml", "README.md", "serve.yaml", "data.py"}
    p = load_project(folder)
    assert p.name == f"my-{template}" and p.root == folder.resolve()
    assert "{{name}}" not in "".join(f.read_text() for f in written)
    inputs = model_inputs(p)
    # The sample rows that the load-time check ran through the function give every column.
    from mlplatform.project.inputs import sample_batch

    out = inputs.transform(sample_batch(p.request.fields, inputs.features))
    assert list(out) == p.input_columns and all(v.dtype == np.float64 for v in out.values())
    # Its Serve YAML is valid as written and names this folder and this project's model.
    from mlplatform.serving.app import absolute_project, check_serve_config, project_name

    raw = yaml.safe_load((folder / "serve.yaml").read_text())
    (app,) = raw["applications"]
    absolute_project(app, folder)
    check_serve_config(raw)
    assert Path(app["args"]["project"]) == folder.resolve()
    assert project_name(app["args"]["project"]) == p.name == app["name"]
    assert app["args"]["models"] == [f"{p.name}@champion"]
    # ... and it registers a new version under an alias that is not champion (gates move it).
    assert all(m.registration.alias != "champion" for m in p.models.values())


def test_scaffold_refuses_a_folder_in_use_and_bad_names(tmp_path, scaffolded):
    with pytest.raises(ConfigError, match="not empty"):
        scaffold(scaffolded)
    with pytest.raises(ConfigError, match="unknown template 'nope'.*feature-store"):
        scaffold(tmp_path / "x", "nope")
    with pytest.raises(ConfigError, match="pass --name"):
        scaffold(tmp_path / "a b")
    assert not (tmp_path / "x").exists() and not (tmp_path / "a b").exists()


def test_no_project_file_says_how_to_name_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MLP_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectError, match=r"--project .*MLP_PROJECT.*mlp init"):
        find_project_file()
    monkeypatch.setenv("MLP_PROJECT", str(tmp_path / "elsewhere"))
    with pytest.raises(ProjectError, match=r"from \$MLP_PROJECT"):
        find_project_file()
    monkeypatch.setenv("MLP_PROJECT", str(WINE))
    assert find_project_file() == WINE / "mlplatform.yaml"


def test_unknown_and_invalid_keys_are_all_named(scaffolded):
    def change(d):
        d["task"]["lable"] = d["task"].pop("label")
        d["model_inputs"]["batch_format"] = "arrow"
        d["request"]["fields"]["value"]["type"] = "decimal"

    _edit(scaffolded, change)
    _fails(scaffolded, "task.lable", "model_inputs.batch_format", "request.fields.value.type")


def test_not_yaml_and_not_a_mapping(scaffolded):
    (scaffolded / "mlplatform.yaml").write_text("name: [unclosed\n")
    _fails(scaffolded, "not valid YAML")
    (scaffolded / "mlplatform.yaml").write_text("- a list\n")
    _fails(scaffolded, "must be a mapping", "task")


def test_function_returning_other_columns_than_declared(scaffolded):
    _edit(scaffolded, lambda d: d["model_inputs"]["columns"].update(value_squared="float64"))
    _fails(scaffolded, "model_inputs.function inputs:model_inputs",
           "other columns than model_inputs.columns", "missing ['value_squared']")


def test_function_reading_a_column_the_schema_lacks(scaffolded):
    _edit(scaffolded, lambda d: d["request"]["fields"].pop("value"))
    _fails(scaffolded, "reads column 'value'", "neither a request field", "request.fields")


def test_entity_key_that_is_not_a_required_request_field(scaffolded):
    def drop(d):
        d["request"]["fields"].pop("entity_id")

    _edit(scaffolded, drop)
    _fails(scaffolded, "entity 'entity'", "'entity_id'", "not a request field")
    _edit(scaffolded, lambda d: d["request"]["fields"].update(entity_id={"type": "float"}))
    _fails(scaffolded, "entity key", "string or int")
    _edit(scaffolded, lambda d: d["request"]["fields"].update(
        entity_id={"type": "string", "required": False}))
    _fails(scaffolded, "entity key", "must be required")


def test_unknown_feature_view_and_missing_function(scaffolded):
    _edit(scaffolded, lambda d: d.update(features=["nope"]))
    _fails(scaffolded, "features:", "nope")
    _edit(scaffolded, lambda d: d.update(features=["entity_activity"]))
    _edit(scaffolded, lambda d: d["model_inputs"].update(function="inputs:missing"))
    _fails(scaffolded, "model_inputs.function", "missing")


def test_declared_categories_are_checked_against_the_codes(scaffolded):
    _edit(scaffolded, lambda d: d["model_inputs"]["columns"].update(
        category_code={"dtype": "int64", "categories": 2}))
    _fails(scaffolded, "'category_code'", "2 categories")


def test_pandas_and_numpy_functions_give_the_same_inputs(scaffolded):
    """A ``batch_format: pandas`` function gets a DataFrame and may return one; the inputs
    equal the numpy function's, on request records and on frames alike."""
    (scaffolded / "pd_inputs.py").write_text(textwrap.dedent('''
        import numpy as np
        import pandas as pd
        from .inputs import model_inputs as numpy_inputs

        def model_inputs(df: pd.DataFrame) -> pd.DataFrame:
            assert isinstance(df, pd.DataFrame)
            out = numpy_inputs({c: df[c].to_numpy() for c in df.columns})
            return pd.DataFrame(out, index=df.index)
    '''))
    numpy_inputs = model_inputs(load_project(scaffolded))
    _edit(scaffolded, lambda d: d["model_inputs"].update(function="pd_inputs:model_inputs",
                                                         batch_format="pandas"))
    pandas_inputs = model_inputs(load_project(scaffolded))
    rng = np.random.default_rng(0)
    n = 50
    frame = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)], "entity_id": "x",
        "event_timestamp": pd.to_datetime(1.7e9 + rng.uniform(0, 9e5, n), unit="s", utc=True),
        "value": rng.gamma(2.0, 10.0, n), "category": rng.choice(["a", "b", "d", "zz"], n),
        **{f: np.where(rng.random(n) < 0.3, np.nan, rng.uniform(1, 9, n))
           for f in numpy_inputs.features}})
    expected = numpy_inputs.frame(frame)
    pd.testing.assert_frame_equal(pandas_inputs.frame(frame), expected)
    records = frame.to_dict("records")
    for r in records:
        r["event_timestamp"] = r["event_timestamp"].floor("us").to_pydatetime()
    looked_up = {f: [None if np.isnan(r[f]) else r[f] for r in records]
                 for f in numpy_inputs.features}
    for inputs in (numpy_inputs, pandas_inputs):
        np.testing.assert_array_equal(
            inputs.matrix(inputs.batch_from_records(records, looked_up)), expected.to_numpy())


def test_rows_lacking_a_column_name_it(scaffolded):
    from mlplatform.errors import DataValidationError

    inputs = model_inputs(load_project(scaffolded))
    with pytest.raises(DataValidationError, match=r"lack column\(s\) \['value'\]"):
        inputs.frame(pd.DataFrame({"entity_id": ["x"]}).assign(
            **{c: [1.0] for c in inputs.raw_columns if c not in ("value",)}))


def test_the_function_travels_by_value(scaffolded, tmp_path):
    """A Ray worker or Serve replica may not have the project folder on its path: the
    transformation is pickled by value (cloudpickle), and a fresh interpreter elsewhere runs
    it without importing the folder's modules."""
    import cloudpickle

    _use_a_helper(scaffolded)                  # the helper module must travel too
    inputs = model_inputs(load_project(scaffolded))
    from mlplatform.project.inputs import sample_batch

    batch = sample_batch(load_project(scaffolded).request.fields, inputs.features)
    payload = tmp_path / "inputs.pkl"
    payload.write_bytes(cloudpickle.dumps((inputs, batch)))
    expected = inputs.matrix(batch)
    moved = tmp_path / "moved"
    shutil.move(scaffolded, moved)            # the folder is gone from where it was loaded
    script = ("import pickle, sys, numpy as np; inputs, batch = pickle.load(open(sys.argv[1], "
              "'rb')); assert not any(m.startswith('_mlp_project_') or m == 'inputs' for m in "
              "sys.modules), 'imported the project module'; "
              "np.save(sys.argv[2], inputs.matrix(batch))")
    out = tmp_path / "out.npy"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(payload), str(out)], check=True, env=env,
                   cwd=tmp_path)
    np.testing.assert_array_equal(np.load(out), expected)
    assert (expected[:, 0] == batch["value"] / 2).all()    # halve() ran


def _use_a_helper(folder: Path, how: str = "from .helpers") -> None:
    """Make inputs.py call a function of a sibling module, helpers.py."""
    (folder / "helpers.py").write_text("def halve(x):\n    return x / 2\n")
    text = (folder / "inputs.py").read_text()
    (folder / "inputs.py").write_text(text.replace(
        "import numpy as np\n", f"import numpy as np\n\n{how} import halve\n", 1)
        .replace('"value": value,', '"value": halve(value),'))


def test_sibling_modules_import_relatively(scaffolded):
    _use_a_helper(scaffolded, "from helpers")
    _fails(scaffolded, "imports 'helpers' as a top-level module", "from .helpers import")


def test_request_model_follows_the_schema(scaffolded):
    from pydantic import ValidationError

    Request = request_model(load_project(scaffolded).request)
    good = {"entity_id": "e1", "value": 2.5, "category": "a"}
    r = Request(**good)
    assert r.value == 2.5 and r.event_id is None
    assert Request(**{**good, "event_timestamp": "2026-01-02T03:04:05Z"}).event_timestamp.year \
        == 2026
    for bad, field in [({"value": "2.5"}, "value"), ({"value": True}, "value"),
                       ({"value": -1.0}, "value"), ({"category": "z"}, "category"),
                       ({"entity_id": 7}, "entity_id"), ({"entity_id": ""}, "entity_id"),
                       ({"surprise": 1}, "surprise"), ({"value": float("nan")}, "value")]:
        with pytest.raises(ValidationError) as exc:
            Request(**{**good, **bad})
        assert field in json.dumps(exc.value.errors(include_url=False), default=str)
    with pytest.raises(ValidationError, match="entity_id"):
        Request(value=1.0, category="a")
