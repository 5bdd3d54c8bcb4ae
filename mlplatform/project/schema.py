"""What a project file (``mlplatform.yaml``) declares: the use case, in one validated object.

A project is a folder the user owns. Its file names the task and label, where the labelled
data comes from, the feature-store definitions (for feature-store projects), the model inputs
(a vectorised transformation in the project's own code), the request schema, the model configs,
the evaluation and the gates. The platform reads everything use-case specific from here.

The sections that other rooms validate (``models.<name>.train`` by
:class:`mlplatform.training.TrainConfig`, ``gates`` by :class:`mlplatform.registry.GateConfig`)
are kept as mappings here and checked by :func:`mlplatform.pipelines.check_project` before any
work starts.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    confloat,
    field_validator,
    model_validator,
)

from mlplatform.project.definitions import Entity, FeatureRepo, FeatureView, Source

#: Field and column names: identifiers, so they are valid JSON keys, pandas columns and pydantic
#: field names alike.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Project names: what the registry, MLflow and Serve accept as a model or application name.
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TaskType = Literal["binary", "multiclass", "regression"]
FieldType = Literal["string", "int", "float", "bool", "timestamp"]
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _identifier(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not an identifier: use letters, digits and '_' "
                         "(not starting with a digit)")
    return value


class DecisionSpec(_Strict):
    """How a prediction becomes a decision."""

    threshold: confloat(ge=0.0, le=1.0) | None = Field(
        default=None, description="Binary: a fixed score threshold. None: the threshold that "
        "maximises F1 on the validation rows, chosen by each training run.")
    labels: list[str] | None = Field(
        default=None, min_length=2, max_length=2, description="Binary: the decision's words for "
        "[negative, positive], e.g. [kept, churned]. Default [negative, positive].")


class TaskSpec(_Strict):
    """The learning task: its type, the label column, and the classes."""

    type: TaskType = Field(description="binary, multiclass or regression.")
    label: str = Field(description="The label column of the labelled data.")
    positive_class: Scalar = Field(
        default=1, description="Binary: the label value of the positive class (scored as "
        "its probability).")
    classes: list[Scalar] | None = Field(
        default=None, description="Multiclass: the label values, in the order the model "
        "numbers them (required). Answers name these.")
    decision: DecisionSpec = Field(default_factory=DecisionSpec)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        return _identifier(v, "task.label")

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.type == "multiclass":
            if not self.classes or len(self.classes) < 3:
                raise ValueError("a multiclass task needs `classes`: the label values (at least "
                                 "3; use type: binary for two)")
            if len(set(map(str, self.classes))) != len(self.classes):
                raise ValueError(f"classes {self.classes} has duplicates")
        elif self.classes is not None:
            raise ValueError(f"`classes` is for multiclass tasks; a {self.type} task takes none")
        if self.type != "binary" and (self.decision.threshold is not None
                                      or self.decision.labels is not None):
            raise ValueError("decision.threshold and decision.labels are for binary tasks")
        return self

    @property
    def decision_labels(self) -> list[str]:
        """Binary: the words for [negative, positive]."""
        return list(self.decision.labels or ["negative", "positive"])

    @property
    def num_classes(self) -> int:
        return len(self.classes or []) if self.type == "multiclass" else (
            2 if self.type == "binary" else 0)


class GenerateSpec(_Strict):
    """Example data: a function that writes the labelled data when it is missing."""

    function: str = Field(description="'module:function' (in the project folder, or an "
                          "installed module) taking (path, rows, seed) and writing Parquet at "
                          "path (a folder or file).")
    rows: PositiveInt = Field(default=100_000, description="Rows to generate.")
    seed: int = Field(default=0, description="Seed of the generator.")

    @field_validator("function")
    @classmethod
    def _function(cls, v: str) -> str:
        if not _FUNCTION.match(v):
            raise ValueError(f"{v!r} is not 'module:function'")
        return v


class DataSpec(_Strict):
    """Where the labelled data comes from."""

    events: str | None = Field(
        default=None, description="Feature-store projects: the source (in `sources`) whose rows "
        "are the labelled events the model learns from.")
    table: str | None = Field(
        default=None, description="Tabular projects: one Parquet or CSV table (a file or folder; "
        "relative paths are under storage_root) holding the request fields and the label.")
    timestamp: str | None = Field(
        default=None, description="Time column: training, validation and holdout are split by "
        "time (train on the past). None: a seeded random split.")
    validation_fraction: confloat(gt=0.0, lt=1.0) = Field(
        default=0.2, description="Share of the rows (the latest, with a timestamp) held out "
        "for validation and the promotion gates.")
    generate: GenerateSpec | None = Field(
        default=None, description="Write example data with this function when none is there.")
    contract: str | None = Field(
        default=None, description="Tabular projects: the data contract of the table (a YAML "
        "file relative to the project folder), checked before every training set is made. "
        "Feature-store projects declare theirs on the source.")

    @model_validator(mode="after")
    def _one(self) -> DataSpec:
        if (self.events is None) == (self.table is None):
            raise ValueError("give exactly one of `events` (a source of the feature store) and "
                             "`table` (a Parquet/CSV table)")
        return self


class RequestField(_Strict):
    """One field of a scoring request."""

    type: FieldType = Field(description="string, int, float, bool or timestamp (ISO 8601).")
    required: bool = Field(default=True, description="False: the field may be left out (null).")
    enum: list[Scalar] | None = Field(
        default=None, min_length=1, description="The only values allowed (a value outside is a "
        "422 naming the field).")
    min: float | None = Field(default=None, description="Numbers: the smallest value allowed.")
    max: float | None = Field(default=None, description="Numbers: the largest value allowed.")
    max_length: PositiveInt = Field(default=256, description="Strings: the longest value.")
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> RequestField:
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max are for int and float fields, not {self.type}")
        if self.enum is not None and self.type in ("timestamp", "bool"):
            raise ValueError(f"enum is for string and number fields, not {self.type}")
        return self


class RequestSpec(_Strict):
    """What a scoring request carries (serving's 422 validation is generated from it)."""

    fields: dict[str, RequestField] = Field(min_length=1, description="Field name -> spec, in "
                                            "the order the model-inputs function sees them.")
    id: str | None = Field(default=None, description="A field echoed back in every answer "
                           "(e.g. request_id).")
    timestamp: str | None = Field(
        default=None, description="A timestamp field: the time features are looked up as of "
        "(when the request omits it: now). None: always now.")

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, RequestField]) -> dict[str, RequestField]:
        for name in v:
            _identifier(name, "request field")
        return v

    @model_validator(mode="after")
    def _check(self) -> RequestSpec:
        for key in ("id", "timestamp"):
            name = getattr(self, key)
            if name is not None and name not in self.fields:
                raise ValueError(f"request.{key} names {name!r}, which is not a request field "
                                 f"(fields: {list(self.fields)})")
        if self.timestamp is not None and self.fields[self.timestamp].type != "timestamp":
            raise ValueError(f"request.timestamp {self.timestamp!r} must be a timestamp field")
        return self


DType = Literal["float64", "int64", "bool"]


class InputColumn(_Strict):
    """One model input column."""

    dtype: DType = Field(default="float64", description="float64, int64 or bool (all reach "
                         "the model as float64; NaN marks a missing value).")
    categories: PositiveInt | None = Field(
        default=None, description="An integer code column 0..n-1 (-1: unknown): the number of "
        "codes n. The torch model embeds such columns.")
    description: str = ""


class ModelInputsSpec(_Strict):
    """The on-demand transformation: request fields + looked-up features -> model inputs."""

    function: str | None = Field(
        default=None, description="'module:function' in the project folder. It gets one batch of "
        "rows (see batch_format) and returns the `columns`. The same function runs offline on "
        "training sets (Ray Data) and online on request rows. None: the columns are request "
        "fields, passed as they are.")
    batch_format: Literal["numpy", "pandas"] = Field(
        default="numpy", description="numpy: a dict of column -> 1-D array (numbers float64 with "
        "NaN for missing, strings object, timestamps datetime64[us] UTC); pandas: a DataFrame "
        "of the same columns.")
    columns: dict[str, InputColumn] = Field(
        min_length=1, description="The model's input columns, in order, with their dtypes.")

    @field_validator("columns", mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if isinstance(v, dict):   # `amount: float64` is short for `amount: {dtype: float64}`
            return {k: ({"dtype": c} if isinstance(c, str) else c) for k, c in v.items()}
        if isinstance(v, list):   # a list of names: all float64
            return {k: {} for k in v}
        return v

    @field_validator("columns")
    @classmethod
    def _names(cls, v: dict[str, InputColumn]) -> dict[str, InputColumn]:
        for name in v:
            _identifier(name, "model input column")
        return v

    @field_validator("function")
    @classmethod
    def _function(cls, v: str | None) -> str | None:
        if v is not None and not _FUNCTION.match(v):
            raise ValueError(f"{v!r} is not 'module:function' (a module in the project folder)")
        return v


class WhenSpec(_Strict):
    """Judge only rows where a model input, after the change, is in a range."""

    input: str = Field(description="A model input column.")
    min: float | None = None
    max: float | None = None


class DirectionalCheck(_Strict):
    """A behavioural check: changing a request field must move the prediction one way."""

    field: str = Field(description="The request field changed (a number).")
    multiply: PositiveFloat | None = Field(default=None, description="Multiply it by this.")
    add: float | None = Field(default=None, description="Or add this to it.")
    expect: Literal["up", "down"] = Field(description="Where the prediction must not go the "
                                          "other way (binary: the score; regression: the "
                                          "value; multiclass: the probability of `output`).")
    output: Scalar | None = Field(default=None, description="Multiclass: the class judged.")
    tolerance: confloat(ge=0.0, le=1.0) = Field(
        default=0.02, description="Largest share of judged rows allowed to go the other way.")
    when: WhenSpec | None = Field(default=None, description="Judge only rows where a model "
                                  "input, after the change, is in [min, max].")

    @model_validator(mode="after")
    def _check(self) -> DirectionalCheck:
        if (self.multiply is None) == (self.add is None):
            raise ValueError("give exactly one of `multiply` and `add`")
        return self


class BehaviouralSpec(_Strict):
    """Behavioural checks run through the request path on the holdout rows."""

    invariance: list[str] = Field(
        default_factory=list, description="Request fields whose value must not change the model "
        "inputs nor the prediction (e.g. an id).")
    directional: list[DirectionalCheck] = Field(default_factory=list)


class EvaluationSpec(_Strict):
    """How models of this project are evaluated."""

    slices: list[str] = Field(default_factory=list, description="Request fields the holdout "
                              "metrics are also reported by (and fairness gates read).")
    contract: str | None = Field(default=None, description="Data contract of a holdout (the "
                                 "training-set layout), relative to the project folder.")
    behavioural: BehaviouralSpec = Field(default_factory=BehaviouralSpec)


class RegisterSpec(_Strict):
    """Where a trained model goes in the registry."""

    name: str | None = Field(default=None, description="Registered model name (default: the "
                             "project name).")
    alias: str | None = Field(default="challenger", description="Alias set on the new version "
                              "(None: register only).")


class ModelSpec(_Strict):
    """One model config of the project (``jobs/train.py --model <name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    train: dict[str, Any] = Field(default_factory=dict, description="mlplatform.training."
                                  "TrainConfig keys; label, inputs and task come from the "
                                  "project.")
    # `register` in the YAML (the name shadows pydantic's BaseModel.register in Python)
    registration: RegisterSpec = Field(default_factory=RegisterSpec, alias="register")
    tune: dict[str, Any] | None = Field(default=None, description="Sweep settings (the "
                                        "arguments of mlplatform.training.sweep).")


class Project(_Strict):
    """A project: one use case, declared in ``mlplatform.yaml``.

    Loaded with :func:`mlplatform.project.load_project`, which also imports the model-inputs
    function and checks it against the declared columns and request fields.
    """

    name: str = Field(description="The project's name: the default registered model name, "
                      "MLflow experiment and Serve application.")
    description: str = ""
    task: TaskSpec
    data: DataSpec
    sources: list[Source] = Field(default_factory=list)
    entities: list[Entity] = Field(default_factory=list)
    feature_views: list[FeatureView] = Field(default_factory=list)
    features: list[str] = Field(
        default_factory=list, description="Feature references ('view:feature', a view or a "
        "feature name) the model inputs read, looked up point-in-time offline and online.")
    model_inputs: ModelInputsSpec
    request: RequestSpec
    models: dict[str, ModelSpec] = Field(min_length=1, description="Model configs by name; the "
                                         "first is the default.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    gates: dict[str, Any] | str | None = Field(
        default=None, description="Promotion gates (mlplatform.registry.GateConfig keys), or a "
        "YAML file relative to the project folder.")
    root: Path | None = Field(default=None, exclude=True, description="The project folder "
                              "(set by load_project).")
    file: Path | None = Field(default=None, exclude=True, description="The project file.")
    #: The loaded model-inputs transformation (``mlplatform.project.model_inputs``).
    _inputs: Any = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PROJECT_NAME.match(v):
            raise ValueError(f"project name {v!r}: use letters, digits, '_', '.' and '-' (at "
                             "most 63, starting with a letter or digit)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Project:
        store = bool(self.sources or self.entities or self.feature_views)
        if store and not (self.sources and self.entities and self.feature_views):
            raise ValueError("a feature-store project needs `sources`, `entities` and "
                             "`feature_views` (a tabular project has none of them)")
        if self.data.events is not None:
            if not store:
                raise ValueError("data.events names a source of the feature store, but the "
                                 "project has no `sources`; a tabular project uses data.table")
            if self.data.events not in {s.name for s in self.sources}:
                raise ValueError(f"data.events {self.data.events!r} is not a source (sources: "
                                 f"{[s.name for s in self.sources]})")
        if store and self.data.timestamp is None:
            raise ValueError("a feature-store project needs data.timestamp: the time column "
                             "its events are joined point-in-time on")
        if self.features and not store:
            raise ValueError("`features` are looked up in the feature store, but the project "
                             "declares no feature views")
        if self.task.label in self.request.fields:
            raise ValueError(f"the label {self.task.label!r} is a request field: a request "
                             "must not carry its own answer")
        clash = sorted(set(self.model_inputs.columns) & {self.task.label})
        if clash:
            raise ValueError(f"model input {clash[0]!r} is the label column")
        for name in self.evaluation.slices:
            if name not in self.request.fields:
                raise ValueError(f"evaluation.slices names {name!r}, which is not a request field")
        for name in self.evaluation.behavioural.invariance:
            if name not in self.request.fields:
                raise ValueError(f"evaluation.behavioural.invariance names {name!r}, which is "
                                 "not a request field")
        for check in self.evaluation.behavioural.directional:
            spec = self.request.fields.get(check.field)
            if spec is None or spec.type not in ("int", "float"):
                raise ValueError(f"evaluation.behavioural.directional changes {check.field!r}, "
                                 "which is not a number field of the request")
            if check.when is not None and check.when.input not in self.model_inputs.columns:
                raise ValueError(f"evaluation.behavioural.directional `when` reads "
                                 f"{check.when.input!r}, which is not a model input column")
            if self.task.type == "multiclass" and check.output is None:
                raise ValueError("a multiclass directional check names the class it judges in "
                                 "`output`")
        if self.model_inputs.function is None:
            missing = [c for c in self.model_inputs.columns if c not in self.request.fields]
            if missing:
                raise ValueError(f"model_inputs has no function, so its columns must be request "
                                 f"fields; {missing} are not (add a function, or the fields)")
            wrong = [c for c in self.model_inputs.columns
                     if self.request.fields[c].type not in ("int", "float", "bool")]
            if wrong:
                raise ValueError(f"model_inputs has no function, so its columns pass through "
                                 f"as numbers; {wrong} are not number fields of the request")
        return self

    # ------------------------------------------------------------------ derived views -------
    @property
    def uses_feature_store(self) -> bool:
        return bool(self.feature_views)

    @cached_property
    def feature_repo(self) -> FeatureRepo | None:
        """The project's feature definitions (None for a tabular project)."""
        if not self.uses_feature_store:
            return None
        return FeatureRepo(project=self.name, sources=self.sources, entities=self.entities,
                           feature_views=self.feature_views, base_dir=self.root)

    @property
    def input_columns(self) -> list[str]:
        """The model's input columns, in order."""
        return list(self.model_inputs.columns)

    @property
    def categorical(self) -> dict[str, int]:
        """Code columns -> number of codes (the columns that declare ``categories``)."""
        return {k: c.categories for k, c in self.model_inputs.columns.items()
                if c.categories is not None}

    @property
    def request_fields(self) -> list[str]:
        return list(self.request.fields)

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    def model(self, name: str | None = None) -> ModelSpec:
        """The model config ``name`` (default: the first)."""
        name = name or self.default_model
        if name not in self.models:
            from mlplatform.errors import ProjectError

            raise ProjectError(f"project {self.name} ({self.file}) has no model {name!r} under "
                               f"`models`; it has {list(self.models)}")
        return self.models[name]

    def path(self, relative: str | Path) -> Path:
        """A path of the project folder (absolute paths stay as they are)."""
        p = Path(relative)
        return p if p.is_absolute() or self.root is None else self.root / p


__all__ = ["BehaviouralSpec", "DataSpec", "DecisionSpec", "DirectionalCheck", "EvaluationSpec",
           "GenerateSpec", "InputColumn", "ModelInputsSpec", "ModelSpec", "Project", "RegisterSpec",
           "RequestField", "RequestSpec", "TaskSpec", "WhenSpec"]
