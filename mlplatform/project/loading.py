"""Finding and loading a project: ``mlplatform.yaml``, its feature definitions and its code.

Every door takes a project folder (``--project <dir>``, ``args.project``); without one, the
``MLP_PROJECT`` environment variable, else ``./mlplatform.yaml``. A bad project is a
:class:`~mlplatform.errors.ProjectError` that names the file and the key, raised while loading,
before any Ray or MLflow work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from mlplatform.errors import DataValidationError, ProjectError, config_error
from mlplatform.project.inputs import ModelInputs, load_function, sample_batch
from mlplatform.project.schema import Project

#: The project file's name inside a project folder.
PROJECT_FILE = "mlplatform.yaml"
#: Environment variable naming the project (folder or file) when a door is given none.
PROJECT_ENV = "MLP_PROJECT"


def find_project_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The project file for ``path`` (a folder holding ``mlplatform.yaml``, or the file).

    Default: ``$MLP_PROJECT``, else ``./mlplatform.yaml``.

    Raises:
        ProjectError: There is no project file there.
    """
    given = path if path is not None else os.environ.get(PROJECT_ENV) or "."
    p = Path(given).expanduser()
    file = p / PROJECT_FILE if p.is_dir() or not p.suffix else p
    if not file.is_file():
        how = ("--project" if path is not None else
               f"${PROJECT_ENV}" if os.environ.get(PROJECT_ENV) else "the current folder")
        raise ProjectError(f"no project file at {file} (from {how}): pass --project <folder> "
                           f"(a folder holding {PROJECT_FILE}), set {PROJECT_ENV}, or scaffold "
                           "one with `mlp init <folder>`")
    return file


def load_project(path: str | os.PathLike[str] | Project | None = None,
                 check: bool = True) -> Project:
    """Load and check a project.

    Args:
        path: A project folder or file (default: see :func:`find_project_file`), or a
            :class:`Project` (returned as it is).
        check: Run the model-inputs function on sample rows built from the request schema and
            compare what it returns with the declared columns.

    Returns:
        The project, its model-inputs transformation loaded (:func:`model_inputs`).

    Raises:
        ProjectError: The file is not valid YAML, a key is unknown or invalid, the feature
            definitions do not hold together, an entity key is not a request field, or the
            model-inputs function cannot be imported, reads a column that is neither a request
            field nor a looked-up feature, or returns other columns than declared. The message
            names the file and the key.
    """
    if isinstance(path, Project):
        return path
    file = find_project_file(path).resolve()
    where = f"project file {file}"
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ProjectError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProjectError(f"{where} must be a mapping of keys to values; got "
                           f"{type(data).__name__}. Keys: {', '.join(_keys())}")
    try:
        project = Project(**data, root=file.parent, file=file)
    except ValidationError as exc:
        raise config_error(where, exc, Project, cls=ProjectError) from None
    _check_features(project, where)
    _attach_inputs(project, where)
    if check:
        check_model_inputs(project)
    return project


def model_inputs(project: Project) -> ModelInputs:
    """The project's model-inputs transformation (loaded by :func:`load_project`; a project
    built another way has it loaded here)."""
    inputs = project._inputs
    if inputs is None:
        inputs = _attach_inputs(project, f"project {project.name}")
    return inputs


def feature_names(project: Project) -> list[str]:
    """The looked-up feature names the model inputs read (``features``, resolved)."""
    repo = project.feature_repo
    if repo is None or not project.features:
        return []
    return [f for names in repo.resolve(project.features).values() for f in names]


def entity_keys(project: Project) -> dict[str, list[str]]:
    """Entity name -> its join keys, for the entities of the views the model reads."""
    repo = project.feature_repo
    if repo is None or not project.features:
        return {}
    by_name = {e.name: e for e in repo.entities}
    out: dict[str, list[str]] = {}
    for view in repo.resolve(project.features):
        for entity in repo.view(view).entities:
            out.setdefault(entity, list(by_name[entity].join_keys))
    return out


def _keys() -> list[str]:
    return [k for k, f in Project.model_fields.items() if not f.exclude]


def _check_features(project: Project, where: str) -> None:
    try:
        repo = project.feature_repo
    except ValidationError as exc:
        raise config_error(where, exc, cls=ProjectError) from None
    if repo is None:
        return
    try:
        repo.resolve(project.features or [])
    except KeyError as exc:
        raise ProjectError(f"{where}: features: {exc.args[0]}") from None
    for entity, keys in entity_keys(project).items():
        for key in keys:
            spec = project.request.fields.get(key)
            if spec is None:
                raise ProjectError(
                    f"{where}: the features read entity {entity!r}, looked up online by "
                    f"{key!r}, which is not a request field: add it to request.fields")
            if spec.type not in ("string", "int"):
                raise ProjectError(f"{where}: request field {key!r} is an entity key of "
                                   f"{entity!r}: make it a string or int, not {spec.type}")
            if not spec.required:
                raise ProjectError(f"{where}: request field {key!r} is an entity key of "
                                   f"{entity!r}: it must be required")


def _attach_inputs(project: Project, where: str) -> ModelInputs:
    spec = project.model_inputs
    function = None
    if spec.function is not None:
        if project.root is None:
            raise ProjectError(f"{where}: model_inputs.function {spec.function} needs the "
                               "project folder; load the project with load_project(<folder>)")
        function = load_function(project.root, spec.function, f"{where}: model_inputs.function")
    inputs = ModelInputs(project.input_columns,
                         {k: f.type for k, f in project.request.fields.items()},
                         feature_names(project), function, spec.batch_format,
                         name=f"model_inputs of project {project.name}")
    project._inputs = inputs
    return inputs


def check_model_inputs(project: Project) -> None:
    """Run the model-inputs function on sample rows made from the request schema and check
    what it reads and returns.

    Raises:
        ProjectError: See :func:`load_project`.
    """
    inputs = model_inputs(project)
    fn = project.model_inputs.function
    where = f"project file {project.file}: model_inputs.function {fn}"
    batch = sample_batch(project.request.fields, inputs.features)
    if inputs.function is None:
        return
    try:
        out: Any = (inputs.function(pd.DataFrame(batch))
                    if inputs.batch_format == "pandas" else inputs.function(dict(batch)))
    except KeyError as exc:
        column = exc.args[0] if exc.args else "?"
        raise ProjectError(
            f"{where} reads column {column!r}, which is neither a request field "
            f"(request.fields: {list(project.request.fields)}) nor a looked-up feature "
            f"(features: {inputs.features}): declare it in the project file") from None
    except Exception as exc:
        raise ProjectError(f"{where} raised {type(exc).__name__}: {exc} on sample rows built "
                           "from the request schema; it must handle every value the schema "
                           "allows (and missing optional fields and features)") from None
    returned = list(out.keys()) if hasattr(out, "keys") else None
    if returned is None:
        raise ProjectError(f"{where} returned a {type(out).__name__}; return a dict of "
                           "column -> array (or a DataFrame) with the declared columns")
    missing = [c for c in inputs.columns if c not in returned]
    extra = [c for c in returned if c not in inputs.columns]
    if missing or extra:
        raise ProjectError(f"{where} returns other columns than model_inputs.columns declares: "
                           f"missing {missing}, not declared {extra}; make them agree")
    try:
        values = inputs.transform(batch)
    except DataValidationError as exc:
        raise ProjectError(f"{where}: {exc}") from None
    for name, col in project.model_inputs.columns.items():
        v = values[name][~np.isnan(values[name])]
        if col.dtype == "int64" and (v != v.round()).any():
            raise ProjectError(f"{where}: column {name!r} is declared int64 but holds "
                               f"non-integers (e.g. {v[v != v.round()][0]})")
        if col.dtype == "bool" and not set(v.tolist()) <= {0.0, 1.0}:
            raise ProjectError(f"{where}: column {name!r} is declared bool but holds values "
                               "other than 0 and 1")
        if col.categories is not None and ((v < -1) | (v >= col.categories)).any():
            raise ProjectError(f"{where}: column {name!r} declares {col.categories} categories "
                               "(codes 0..n-1, -1 unknown) but holds codes outside them")
