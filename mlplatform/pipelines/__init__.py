"""Pipelines that chain the platform's steps. Issue #5 adds ModelCIPipeline."""

from mlplatform.pipelines.spine import (
    SpineResult,
    build_spine_features,
    ensure_raw_data,
    generate_data,
    register_model,
    run_spine,
)

__all__ = ["SpineResult", "build_spine_features", "ensure_raw_data", "generate_data", "register_model",
           "run_spine"]
