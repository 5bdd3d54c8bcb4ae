"""Load registered models for scoring, without pickle.

Two kinds are accepted, both read from files that cannot run code:

- ``xgboost``: the XGBoost flavour stored as UBJ or JSON, handed to ``xgboost.Booster.load_model``;
- ``torch``: the pyfunc flavour whose ``loader_module`` is :data:`TORCH_LOADER_MODULE` (what
  ``train_torch`` logs): a ``state_dict`` read with ``torch.load(weights_only=True)`` plus
  ``arch.json``.

The MLmodel file is read as YAML. Anything else (a pickled booster, a cloudpickled
``python_model``, another loader module) is refused instead of being unpickled or imported.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlplatform.errors import ModelNotFound
from mlplatform.registry.registry import ModelRegistry, ModelVersion

_SAFE_FORMATS = {"ubj", "json"}
#: The pyfunc loader module of torch models logged by ``mlplatform.training.train_torch``.
TORCH_LOADER_MODULE = "mlplatform.training.torch_model"


@dataclass
class LoadedModel:
    """A loaded model (XGBoost booster or torch network) plus what serving needs to know."""

    version: ModelVersion
    model: Any  # xgboost.Booster (kind "xgboost") or torch_model.TorchFraudModel (kind "torch")
    inputs: list[dict[str, Any]]  # the signature's input columns: [{"name", "type"}]
    kind: str = "xgboost"
    #: Whether an XGBoost booster's feature names are the signature's (set on first scoring).
    _names_match: bool | None = field(default=None, repr=False, compare=False)

    @property
    def feature_names(self) -> list[str]:
        return [c["name"] for c in self.inputs]

    @property
    def booster(self) -> Any:
        """The ``xgboost.Booster`` of an XGBoost model (e.g. for tree SHAP).

        Raises:
            TypeError: The model is not an XGBoost model; score it with :meth:`predict`.
        """
        if self.kind != "xgboost":
            raise TypeError(f"{self.version.uri} is a {self.kind} model, it has no booster; "
                            "use LoadedModel.predict(frame)")
        return self.model

    def predict(self, frame) -> Any:
        """Fraud probability for each row of ``frame`` (a DataFrame with the input columns)."""
        if self.kind == "torch":
            return self.model.predict(frame[self.feature_names])
        import xgboost

        return self.model.predict(xgboost.DMatrix(frame[self.feature_names]))

    def predict_matrix(self, matrix: Any) -> Any:
        """Fraud probability for each row of ``matrix`` (float array, columns in
        :attr:`feature_names` order): the serving path, without a DataFrame.

        For XGBoost an in-place prediction straight from the array (~0.05 ms for a row, against
        ~0.25 ms through a DMatrix and ~1.4 ms from a DataFrame) when the booster's own feature
        names are the signature's (checked once); otherwise a DMatrix named with the
        signature's columns, so that XGBoost checks them against the booster's on every call
        (and refuses a mismatch).

        Raises:
            ValueError: ``matrix`` does not have one column per input.
        """
        import numpy as np

        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.inputs):
            raise ValueError(f"{self.version.uri} takes {len(self.inputs)} inputs "
                             f"{self.feature_names}; got an array of shape {matrix.shape}")
        if self.kind == "torch":
            import pandas as pd

            return self.model.predict(pd.DataFrame(matrix, columns=self.feature_names))
        if self._names_match is None:
            self._names_match = list(self.model.feature_names or []) == self.feature_names
        if self._names_match:
            return self.model.inplace_predict(matrix, validate_features=False)
        import xgboost

        return self.model.predict(xgboost.DMatrix(matrix, feature_names=self.feature_names))


def load_model(registry: ModelRegistry, ref: str) -> LoadedModel:
    """Resolve ``ref`` (e.g. ``fraud@champion``) and load its model and signature.

    Raises:
        ModelNotFound: The reference does not resolve, or the version holds neither a safe
            XGBoost model nor a torch model logged by ``train_torch``.
    """
    with _downloads() as tmp:
        return _load_folder(*registry.download(ref, tmp))


@contextmanager
def _downloads():
    """A temporary folder to download a model into (without per-file progress bars: a model is
    a handful of small files, and the bars are noise in replica logs)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


def _load_folder(mv: ModelVersion, folder: Path) -> LoadedModel:
    """The model and signature of a downloaded model folder (XGBoost UBJ/JSON or our torch
    pyfunc; anything else, pickled models included, is refused)."""
    mlmodel_path = folder / "MLmodel"
    if not mlmodel_path.is_file():
        raise ModelNotFound(f"{mv.uri} has no MLmodel file; was it logged with mlflow?")
    mlmodel = yaml.safe_load(mlmodel_path.read_text())
    flavors = mlmodel.get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    if "xgboost" in flavors:
        kind, model = "xgboost", _load_xgboost(folder, flavors["xgboost"], mv)
    elif pyfunc.get("loader_module") == TORCH_LOADER_MODULE:
        kind, model = "torch", _load_torch(folder, pyfunc, mv)
    else:
        pickled = (f", a pickled python_model '{pyfunc['python_model']}'"
                   if pyfunc.get("python_model") else "")
        raise ModelNotFound(
            f"{mv.uri} is neither an XGBoost model nor a torch model logged by train_torch "
            f"(flavors: {list(flavors)}, pyfunc loader_module: {pyfunc.get('loader_module')}"
            f"{pickled}); serving loads only those two and never unpickles a model. "
            "Re-train it with mlplatform.training.train_xgboost or train_torch.")
    return LoadedModel(version=mv, model=model, inputs=_signature_inputs(mlmodel, mv), kind=kind)


def _load_xgboost(folder: Path, flavor: dict, mv: ModelVersion):
    import xgboost

    fmt = flavor.get("model_format", "xgb")
    if fmt not in _SAFE_FORMATS:
        raise ModelNotFound(f"{mv.uri} stores its booster as '{fmt}'; only {sorted(_SAFE_FORMATS)} "
                            "are loaded (no pickle). Re-log it with model_format='ubj'.")
    booster = xgboost.Booster()
    booster.load_model(str(_inside(folder, flavor.get("data"), mv)))
    return booster


def _load_torch(folder: Path, pyfunc: dict, mv: ModelVersion):
    """The torch model's state_dict (``weights_only=True``) and ``arch.json``, nothing else."""
    from mlplatform.training.torch_model import load_torch_model

    return load_torch_model(_inside(folder, pyfunc.get("data"), mv))


def _inside(folder: Path, relative: str | None, mv: ModelVersion) -> Path:
    """``folder / relative``, refusing a missing entry or a path that leaves the model folder."""
    if not relative:
        raise ModelNotFound(f"{mv.uri}: its MLmodel names no model data file")
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.exists():
        raise ModelNotFound(f"{mv.uri}: model data '{relative}' is not inside the model's "
                            "artifacts; re-log the model.")
    return path


def _signature_inputs(mlmodel: dict, mv: ModelVersion) -> list[dict[str, Any]]:
    import json

    sig = mlmodel.get("signature") or {}
    if not sig.get("inputs"):
        raise ModelNotFound(f"{mv.uri} was logged without a signature; serving needs one to "
                            "validate requests. Re-log it with signature=infer_signature(...).")
    return [{"name": c["name"], "type": c["type"]} for c in json.loads(sig["inputs"])]


def load_model_uri(uri: str, config=None) -> LoadedModel:
    """Load a model from an MLflow URI the same way as :func:`load_model` (no pickle).

    Args:
        uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a registered version),
            ``models:/m-<id>`` (a logged model: what ``TrainResult.model_uri`` holds) or
            ``runs:/<run_id>/<artifact path>`` (e.g. ``runs:/<id>/model``).
        config: The :class:`~mlplatform.config.PlatformConfig` whose MLflow holds the model
            (default: ``PlatformConfig.load()``).

    Raises:
        ModelNotFound: The URI is of none of those forms, does not resolve, or holds no model
            :func:`load_model` accepts.
    """
    import re

    registry = ModelRegistry(config)
    if uri.startswith("models:/") and not re.fullmatch(r"models:/m-[0-9a-f]+", uri):
        try:
            return load_model(registry, uri[len("models:/"):])
        except ValueError as exc:
            raise ModelNotFound(f"invalid model URI {uri!r}: {exc}") from None
    if not uri.startswith(("models:/", "runs:/")):
        raise ModelNotFound(f"invalid model URI {uri!r}: use models:/<name>/<version>, "
                            "models:/<name>@<alias>, models:/m-<id> or runs:/<run_id>/<path>")
    with _downloads() as tmp:
        return _load_folder(*_download_uri(registry.config, uri, tmp))


@dataclass(frozen=True)
class _UriVersion(ModelVersion):
    """A model addressed by its URI rather than as a registered version."""

    @property
    def uri(self) -> str:
        return self.source


def _download_uri(config, uri: str, dst) -> tuple[ModelVersion, Path]:
    """Download a logged model (``models:/m-<id>``) or run artifact (``runs:/...``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = config.mlflow_tracking_uri
    try:
        if uri.startswith("runs:/"):
            run_id = uri[len("runs:/"):].split("/", 1)[0]
        else:
            run_id = mlflow.MlflowClient(tracking).get_logged_model(
                uri[len("models:/"):]).source_run_id
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                   tracking_uri=tracking)
    except MlflowException as exc:
        raise ModelNotFound(f"{uri} does not resolve in {tracking}: {exc.message}") from None
    return (_UriVersion(name=uri, version="", source=uri, run_id=run_id, aliases=(), tags={}),
            Path(path))
