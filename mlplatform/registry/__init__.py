"""MLflow model registry: register, aliases, resolve, and safe loading for serving."""

from mlplatform.registry.loading import LoadedModel, load_model, load_model_uri
from mlplatform.registry.registry import ModelRegistry, ModelVersion, parse_model_ref

__all__ = ["LoadedModel", "ModelRegistry", "ModelVersion", "load_model", "load_model_uri",
           "parse_model_ref"]
