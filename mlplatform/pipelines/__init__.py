"""Pipelines that chain the platform's steps for any project: the shared steps (load and check
a project, its data, features, training config), the spine (data -> features -> train ->
register) and the model CI/CD pipeline (:class:`ModelCIPipeline`)."""

from mlplatform.pipelines.ci import CIConfig, ModelCIPipeline, PipelineReport, StageReport
from mlplatform.pipelines.spine import SpineResult, register_model, run_spine
from mlplatform.pipelines.steps import (
    build_features,
    check_project,
    ensure_data,
    load,
    register_spec,
    train_config,
)

__all__ = ["CIConfig", "ModelCIPipeline", "PipelineReport", "SpineResult", "StageReport",
           "build_features", "check_project", "ensure_data", "load", "register_model",
           "register_spec", "run_spine", "train_config"]
