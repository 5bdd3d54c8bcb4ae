"""Model formats and loading, without pickle: XGBoost (UBJ), PyTorch (state_dict + architecture)
and ONNX (models trained elsewhere). The room below both training and the registry: it knows
nothing above it.

Entry points: :class:`LoadedModel` (a model that scores, with its task and classes),
:func:`load_model_folder` / :func:`load_model_uri`, :func:`model_metadata` (what the platform
writes into an MLmodel file), :func:`signature_for`, :class:`ModelVersion`.
"""

from mlplatform.models.loading import (
    METADATA_KEY,
    TORCH_LOADER_MODULE,
    LoadedModel,
    check_flavors,
    download_uri,
    load_model_folder,
    load_model_uri,
    model_metadata,
)
from mlplatform.models.onnx_model import OnnxModel, log_onnx_model
from mlplatform.models.signature import output_frame, signature_for
from mlplatform.models.version import ModelVersion, UriVersion

__all__ = ["METADATA_KEY", "TORCH_LOADER_MODULE", "LoadedModel", "ModelVersion", "OnnxModel",
           "UriVersion", "check_flavors", "download_uri", "load_model_folder", "load_model_uri",
           "log_onnx_model", "model_metadata", "output_frame", "signature_for"]
