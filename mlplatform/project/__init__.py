"""The project: what one use case declares in ``mlplatform.yaml``, and its model-inputs code.

Entry points: :func:`load_project` (find, validate and load a project folder),
:class:`Project` (the validated file), :func:`model_inputs` (its transformation, run the same
way offline and online), :func:`request_model` (the request's pydantic model).

Example:
    >>> from mlplatform.project import load_project, model_inputs    # doctest: +SKIP
    >>> project = load_project("examples/my_project")                 # doctest: +SKIP
    >>> project.task.type, project.input_columns[:2]                  # doctest: +SKIP
    ('binary', ['amount', 'amount_per_item'])
"""

from mlplatform.project.definitions import (
    Entity,
    Feature,
    FeatureRepo,
    FeatureView,
    Source,
    load_repo,
    parse_duration,
)
from mlplatform.project.inputs import ModelInputs
from mlplatform.project.loading import (
    PROJECT_ENV,
    PROJECT_FILE,
    check_model_inputs,
    entity_keys,
    feature_names,
    find_project_file,
    load_project,
    model_inputs,
)
from mlplatform.project.request import request_model
from mlplatform.project.schema import (
    DataSpec,
    EvaluationSpec,
    ModelSpec,
    Project,
    RequestField,
    RequestSpec,
    TaskSpec,
)

__all__ = ["PROJECT_ENV", "PROJECT_FILE", "DataSpec", "Entity", "EvaluationSpec", "Feature",
           "FeatureRepo", "FeatureView", "ModelInputs", "ModelSpec", "Project", "RequestField",
           "RequestSpec", "Source", "TaskSpec", "check_model_inputs", "entity_keys",
           "feature_names", "find_project_file", "load_project", "load_repo", "model_inputs",
           "parse_duration", "request_model"]
