"""The model CI pipeline's input and output: :class:`CIConfig` (a project and one of its models,
with the run's choices: from ``jobs/ci_pipeline.py`` flags or a YAML file) and
:class:`PipelineReport` (a :class:`StageReport` per stage).

Both are re-exported by :mod:`mlplatform.pipelines.ci`, which runs the stages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mlplatform.errors import ConfigError, config_error

#: The stages, in order, with the label shown while each runs.
STAGES = {"validate": "validate the data against its contract",
          "features": "build feature views and the training set",
          "train": "train on Ray Train",
          "evaluate": "evaluate on the time-split holdout",
          "behavioural": "behavioural tests",
          "register": "register the model version",
          "challenger": "set the challenger alias",
          "promote": "promote through the gates"}
Status = Literal["ok", "failed", "skipped"]


# ------------------------------------------------------------------------------- config -------
class CIDataSection(BaseModel):
    """The labelled data the pipeline validates and builds features from."""

    model_config = ConfigDict(extra="forbid")
    raw_path: Path | None = Field(
        None, description="Parquet file or folder of labelled data instead of the project's "
        "(its events source, or its table).")
    generate_rows: NonNegativeInt = Field(
        0, description="Rows of example data written by the project's data.generate when its "
        "data is missing (0: the project's number). Ignored with raw_path.")
    seed: int | None = Field(None, description="Seed of the example data (default: the "
                             "project's).")


class CIRegisterSection(BaseModel):
    """Where the model goes in the registry."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Registered model (default: the model config's "
                             "register.name, else the project's name).")
    description: str | None = Field(None, description="Version description (default: names "
                                    "the run and the input digest).")
    alias: str = Field("challenger", description="Alias set on the new version.")


class CIConfig(BaseModel):
    """One model CI run: a project, one of its models, and the run's choices."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    project: Path | None = Field(None, description="The project folder (default: the platform "
                                 "config's, $MLP_PROJECT, else ./mlplatform.yaml).")
    model: str | None = Field(None, description="The project's model config (default: its "
                              "first).")
    data: CIDataSection = Field(default_factory=CIDataSection)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig keys that "
                                  "override the model config's `train` (e.g. num_boost_round).")
    # `register` in the YAML (the name shadows pydantic's BaseModel.register in Python)
    registration: CIRegisterSection = Field(default_factory=CIRegisterSection, alias="register")
    promote: bool = Field(False, description="Promote the version to champion through the gates.")
    gates: dict[str, Any] | Path | None = Field(
        None, description="Promotion gates: an inline mapping (GateConfig keys) or a gates YAML "
        "path. Default: the project's gates.")
    actor: str | None = Field(None, description="Who the audit trail names (default: "
                              "$MLP_ACTOR or user@host).")
    reason: str | None = Field(None, description="Why, for the audit trail.")

    @field_validator("train")
    @classmethod
    def _train_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        from mlplatform.training import TrainConfig

        unknown = sorted(set(v) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; keys: "
                             f"{', '.join(TrainConfig.model_fields)}")
        return v

    @model_validator(mode="after")
    def _builds_its_own_data(self) -> CIConfig:
        if "features_path" in self.train:
            raise ValueError("train.features_path: the CI pipeline trains on the training set "
                             "it builds from the validated data; remove features_path (or use "
                             "train.feature_views)")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> CIConfig:
        """Load a CI config file; errors name the file and every bad key (a relative
        ``project`` is relative to the file's folder).

        Raises:
            ConfigError: The file is missing, not YAML, or a key is unknown or invalid.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"CI pipeline config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
            if isinstance(data, dict) and data.get("project") and \
                    not Path(data["project"]).is_absolute():
                data["project"] = str(path.resolve().parent / data["project"])
            return cls(**data)
        except yaml.YAMLError as exc:
            raise ConfigError(f"CI pipeline config {path} is not valid YAML: {exc}") from None
        except ValidationError as exc:
            raise config_error(f"CI pipeline config {path}", exc, cls) from None
        except TypeError as exc:
            raise ConfigError(f"invalid CI pipeline config {path}: must be a mapping of keys "
                              f"to values ({exc})") from None


# ------------------------------------------------------------------------------- report -------
@dataclass
class StageReport:
    """One stage: status, wall seconds, a one-paragraph message and JSON-friendly details."""

    name: str
    status: Status = "skipped"
    seconds: float = 0.0
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineReport:
    """What a :meth:`ModelCIPipeline.run` did, stage by stage."""

    model_name: str
    stages: list[StageReport]
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    seconds: float = 0.0
    input_digest: str | None = None
    run_id: str | None = None
    model_uri: str | None = None
    version: str | None = None
    reused_run: bool = False

    @property
    def ok(self) -> bool:
        """True when no stage failed."""
        return self.failed_stage is None

    @property
    def failed_stage(self) -> StageReport | None:
        """The stage that stopped the pipeline, if any."""
        return next((s for s in self.stages if s.status == "failed"), None)

    def stage(self, name: str) -> StageReport:
        """The report of stage ``name`` (one of :data:`STAGES`)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (logged as ``ci/report.json``)."""
        return _jsonable({**asdict(self), "ok": self.ok})

    def table(self) -> str:
        """A plain-text table: stage, status, seconds, first line of the message."""
        width = max(len(s.name) for s in self.stages)
        lines = [f"{'stage':<{width}}  {'status':<7} {'seconds':>8}  message"]
        lines += [f"{s.name:<{width}}  {s.status:<7} {s.seconds:>8.1f}  "
                  f"{s.message.splitlines()[0] if s.message else ''}" for s in self.stages]
        verdict = "PASSED" if self.ok else f"FAILED at {self.failed_stage.name}"
        where = f" -> {self.model_name} v{self.version}" if self.version else ""
        lines.append(f"pipeline {verdict} in {self.seconds:.1f}s{where}")
        return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (numpy scalars, paths and timestamps become numbers or strings)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item")
                                 else str(o)))
