"""MLflow model registry: register, aliases, resolve, and safe loading for serving."""

from mlplatform.registry.loading import LoadedModel, load_model
from mlplatform.registry.registry import ModelRegistry, ModelVersion, parse_model_ref

__all__ = ["LoadedModel", "ModelRegistry", "ModelVersion", "load_model", "parse_model_ref"]
