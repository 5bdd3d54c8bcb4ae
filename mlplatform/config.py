"""Platform configuration: one validated object, loaded from defaults < YAML file < ``MLP_*`` env.

Example:
    >>> from mlplatform.config import PlatformConfig
    >>> cfg = PlatformConfig.load()            # embedded defaults under ./.mlplatform
    >>> cfg.mlflow_tracking_uri.startswith("sqlite:///")
    True

Loading does no I/O beyond reading the YAML file: directories are created by the steps that
write into them (:meth:`PlatformConfig.ensure_dirs`), never at import or load time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlplatform.errors import ConfigError, validation_lines

ENV_PREFIX = "MLP_"
#: Environment variable naming a YAML config file (used when ``load`` gets no path).
CONFIG_PATH_ENV = "MLP_CONFIG"
#: MLP_* variables that are not config keys: who acts in the audit trail, whether the
#: cluster autoscales (set by the cluster YAMLs), the Serve app's bearer tokens, and the
#: `--verbose` switch of the jobs and `mlp`.
PROCESS_ENV = frozenset({CONFIG_PATH_ENV, "MLP_ACTOR", "MLP_CLUSTER_AUTOSCALES",
                         "MLP_SERVE_TOKEN", "MLP_SERVE_ADMIN_TOKEN", "MLP_VERBOSE"})
#: Any MLP_SERVE_* variable is the Serve app's (e.g. a token named by ``token_env``).
SERVE_ENV_PREFIX = "MLP_SERVE_"
#: URI schemes Ray Train can write checkpoints to (pyarrow file systems).
CHECKPOINT_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")


class PlatformConfig(BaseModel):
    """Where things live: Ray, MLflow tracking and registry, and the local storage root.

    Every field can be set in a YAML file or with an ``MLP_<FIELD>`` environment variable
    (for example ``MLP_STORAGE_ROOT=/data/mlp``). Unset MLflow URIs derive from ``storage_root``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False, frozen=True)

    storage_root: Path = Field(
        default=Path("./.mlplatform"),
        description="Root folder of local state: raw data, features, MLflow DB and artifacts. "
        "Relative paths resolve against the working directory of the process that loads it.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to connect to (e.g. 'ray://head:10001' or 'auto'). None starts "
        "or joins a local Ray; Ray's own RAY_ADDRESS variable is honoured in that case.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Default: sqlite:///<storage_root>/mlflow.db. "
        "On a cluster use the head node's MLflow server, e.g. http://head:5000.",
    )
    mlflow_registry_uri: str | None = Field(
        default=None, description="MLflow model registry URI. Default: the tracking URI."
    )
    mlflow_artifact_location: str | None = Field(
        default=None,
        description="Artifact root for experiments this platform creates. "
        "Default: <storage_root>/mlartifacts (a file URI).",
    )
    project: Path | None = Field(
        default=None,
        description="The project (a folder holding mlplatform.yaml, or the file) that every door "
        "uses when given none (--project, args.project). None: ./mlplatform.yaml.",
    )
    experiment_name: str | None = Field(
        default=None, min_length=1,
        description="MLflow experiment that runs are logged to. Default: the project's name.",
    )
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="Online feature store: 'sqlite' (embedded file <storage_root>/online.db) or "
        "'redis' (a shared server; use it on clusters).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis server of the online store when online_store is 'redis'.",
    )
    data_placement_resource: str | None = Field(
        default=None,
        description="Custom Ray resource that Ray Data tasks ask a token share of (0.001), so "
        "they run only on nodes that advertise it: 'cpu_node' on the clusters of cluster/*.yaml "
        "(CPU workers; `mlp cluster up-local` sets it). None: wherever a CPU is free.",
    )
    checkpoint_storage: str | None = Field(
        default=None,
        description="Where Ray Train and Tune write run folders and checkpoints (their "
        "storage_path): an object-store URI (s3://bucket/prefix, gs://bucket/prefix; an "
        "S3-compatible server: s3://bucket/prefix?endpoint_override=host:port&scheme=http) or an "
        "absolute path every node shares. Default: <storage_root>/ray_results.",
    )
    price_table: Path | None = Field(
        default=None,
        description="Price table YAML for the per-job cost estimates (cpu_hour, gpu_hour by "
        "accelerator type; see mlplatform.cluster.cost). None: the built-in list prices.",
    )

    @field_validator("checkpoint_storage")
    @classmethod
    def _storage_uri(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme and scheme not in CHECKPOINT_SCHEMES:
            raise ValueError(f"'{value}' has the scheme '{scheme}://', which Ray Train cannot "
                             f"write to; use one of {', '.join(s + '://' for s in CHECKPOINT_SCHEMES)}"
                             " or an absolute path")
        if not scheme and not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(f"'{value}' is a relative path: every Ray process would resolve it "
                             "against its own working directory; use an absolute shared path or "
                             "an s3:// / gs:// URI")
        return os.path.expanduser(value) if not scheme else value

    @model_validator(mode="after")
    def _derive_defaults(self) -> PlatformConfig:
        root = Path(os.path.expanduser(str(self.storage_root))).absolute()
        object.__setattr__(self, "storage_root", root)
        if not self.mlflow_tracking_uri:
            object.__setattr__(self, "mlflow_tracking_uri", f"sqlite:///{root / 'mlflow.db'}")
        if not self.mlflow_registry_uri:
            object.__setattr__(self, "mlflow_registry_uri", self.mlflow_tracking_uri)
        if not self.mlflow_artifact_location:
            object.__setattr__(self, "mlflow_artifact_location", (root / "mlartifacts").as_uri())
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PlatformConfig:
        """Build the config from defaults < YAML file < ``MLP_*`` environment < ``overrides``.

        Args:
            path: YAML file to read. If None, ``$MLP_CONFIG`` is used when set.
            overrides: Explicit values (e.g. from CLI flags or Serve ``args``); highest priority.
            env: Environment to read ``MLP_*`` variables from (default ``os.environ``).

        Returns:
            A validated, frozen ``PlatformConfig`` with absolute ``storage_root``.

        Raises:
            ConfigError: The file is missing or not a mapping, a key is unknown, or a value has
                the wrong type. The message names the key, the source and the allowed keys.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        path = path or env.get(CONFIG_PATH_ENV) or None
        if path is not None:
            for key, value in _read_yaml(Path(path)).items():
                values[key], sources[key] = value, f"config file {path}"
        for key, value in _read_env(env).items():
            values[key], sources[key] = value, f"environment variable {ENV_PREFIX}{key.upper()}"
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key], sources[key] = value, "override"
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, sources)) from None

    def ensure_dirs(self) -> Path:
        """Create ``storage_root`` (and the artifact folder when it is local); return the root."""
        self.storage_root.mkdir(parents=True, exist_ok=True)
        if self.mlflow_artifact_location and self.mlflow_artifact_location.startswith("file:"):
            from urllib.parse import urlparse
            from urllib.request import url2pathname

            Path(url2pathname(urlparse(self.mlflow_artifact_location).path)).mkdir(
                parents=True, exist_ok=True
            )
        return self.storage_root

    def train_storage_path(self) -> str:
        """Ray Train / Tune ``storage_path``: ``checkpoint_storage``, else
        ``<storage_root>/ray_results``."""
        return self.checkpoint_storage or str(self.path("ray_results"))

    def path(self, *parts: str) -> Path:
        """A path under ``storage_root`` (not created)."""
        return self.storage_root.joinpath(*parts)

    def to_display_dict(self) -> dict[str, str]:
        """Field values as strings, for ``mlp config show``."""
        return {k: ("" if v is None else str(v)) for k, v in self.model_dump().items()}


def allowed_keys() -> list[str]:
    """Names of every config key, in declaration order."""
    return list(PlatformConfig.model_fields)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file or unset "
                          f"{CONFIG_PATH_ENV}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values, got "
                          f"{type(data).__name__}. Allowed keys: {', '.join(allowed_keys())}.")
    return data


def _read_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = set(allowed_keys())
    for name, value in env.items():
        if (not name.startswith(ENV_PREFIX) or name in PROCESS_ENV
                or name.startswith(SERVE_ENV_PREFIX)):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in fields:
            raise ConfigError(
                f"unknown environment variable {name}: mlplatform reads {', '.join(sorted(PROCESS_ENV))} and "
                f"{', '.join(ENV_PREFIX + k.upper() for k in allowed_keys())}. Unset or rename it."
            )
        out[key] = value if value != "" else None
    return out


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """Every problem with the key, where its value came from, and the key's description."""
    lines = []
    for err, line in zip(exc.errors(), validation_lines(exc, PlatformConfig), strict=True):
        top = str(err["loc"][0]) if err["loc"] else ""
        field = PlatformConfig.model_fields.get(top)
        lines.append(f"{line} (from {sources.get(top, 'default')})"
                     + (f". {field.description}" if field and err["type"] != "extra_forbidden"
                        else ""))
    return "invalid platform configuration:\n  - " + "\n  - ".join(lines)
