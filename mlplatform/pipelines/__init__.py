"""Pipelines that chain the platform's steps: the spine (data -> features -> train -> register)
and the model CI/CD pipeline (:class:`ModelCIPipeline`)."""

from mlplatform.pipelines.ci import CIConfig, ModelCIPipeline, PipelineReport, StageReport
from mlplatform.pipelines.spine import (
    SpineResult,
    build_spine_features,
    ensure_raw_data,
    generate_data,
    register_model,
    run_spine,
)

__all__ = ["CIConfig", "ModelCIPipeline", "PipelineReport", "SpineResult", "StageReport",
           "build_spine_features", "ensure_raw_data", "generate_data", "register_model",
           "run_spine"]
