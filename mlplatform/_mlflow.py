"""MLflow plumbing shared by training and the registry (imported lazily: MLflow is heavy)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mlplatform.config import PlatformConfig


def client(config: PlatformConfig) -> MlflowClient:
    """An ``MlflowClient`` bound to the config's tracking and registry URIs.

    Also points the ``mlflow`` fluent API at the same URIs, since ``log_model`` and friends
    use it.
    """
    import mlflow
    from mlflow import MlflowClient

    config.ensure_dirs()
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    mlflow.set_registry_uri(config.mlflow_registry_uri)
    return MlflowClient(config.mlflow_tracking_uri, config.mlflow_registry_uri)


def ensure_experiment(config: PlatformConfig, name: str | None = None,
                      project: str | None = None) -> str:
    """Return the id of experiment ``name`` (default ``config.experiment_name``, else the
    ``project``'s name, else ``Default``), creating it with its artifacts under
    ``config.mlflow_artifact_location`` if it does not exist."""
    c = client(config)
    name = name or config.experiment_name or project or "Default"
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=f"{config.mlflow_artifact_location}/{name}")


def git_commit() -> str | None:
    """The current git commit of the working directory, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_json(config: PlatformConfig, run_id: str | None, path: str):
    """A JSON artifact of a run, or None when the run or the artifact does not exist."""
    if not run_id:
        return None
    import json
    import tempfile
    from pathlib import Path

    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"runs:/{run_id}/{path}", dst_path=tmp,
                tracking_uri=config.mlflow_tracking_uri)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def run_threshold(config: PlatformConfig, run_id: str | None) -> float | None:
    """The decision threshold a training run chose (``evaluation/metrics.json``), if logged."""
    metrics = run_json(config, run_id, "evaluation/metrics.json")
    return None if metrics is None or "threshold" not in metrics else float(metrics["threshold"])


@contextmanager
def resumed_run(run_id: str) -> Iterator[Any]:
    """``mlflow.start_run(run_id=...)`` that works whatever experiment the caller made active.

    MLflow refuses to resume a run of another experiment than the one ``mlflow.set_experiment``
    made active (a notebook user may have set their own). The run's experiment is made active
    for the block, and the caller's choice is put back afterwards.
    """
    import mlflow
    from mlflow.tracking import fluent

    before = getattr(fluent, "_active_experiment_id", None)
    mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    try:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
    finally:
        if hasattr(fluent, "_active_experiment_id"):
            fluent._active_experiment_id = before
