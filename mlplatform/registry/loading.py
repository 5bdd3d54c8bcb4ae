"""Load registered models (``name@alias``, ``name/version``) for scoring, without pickle: the
registry resolves and downloads, :mod:`mlplatform.models` loads."""

from __future__ import annotations

from mlplatform.models import LoadedModel, load_model_folder, load_model_uri
from mlplatform.models.loading import downloads
from mlplatform.registry.registry import ModelRegistry


def load_model(registry: ModelRegistry, ref: str) -> LoadedModel:
    """Resolve ``ref`` (e.g. ``churn@champion``) and load its model and signature.

    Raises:
        ModelNotFound: The reference does not resolve, or the version holds no model the
            platform loads (pickled models are refused; the message says how to convert them).
    """
    with downloads() as tmp:
        return load_model_folder(*registry.download(ref, tmp))


__all__ = ["LoadedModel", "load_model", "load_model_uri"]
