"""Load models for scoring, without pickle.

Three kinds are accepted, each read from files that cannot run code:

- ``xgboost``: the XGBoost flavour stored as UBJ or JSON, handed to ``xgboost.Booster.load_model``;
- ``torch``: the pyfunc flavour whose ``loader_module`` is :data:`TORCH_LOADER_MODULE` (what
  ``train_torch`` logs): a ``state_dict`` read with ``torch.load(weights_only=True)`` plus
  ``arch.json``;
- ``onnx``: MLflow's onnx flavour (a model trained elsewhere and exported to ONNX: scikit-learn
  through skl2onnx, LightGBM, ...), run by onnxruntime.

The MLmodel file is read as YAML. Anything else (a pickled scikit-learn model, a pickled booster,
a cloudpickled ``python_model``, another loader module) is refused instead of being unpickled
or imported, and the message says how to convert it.

Every loaded model knows its task (binary, multiclass, regression) and, for classifiers, its
classes: from the ``mlplatform`` metadata the platform writes into the MLmodel file
(:func:`model_metadata`), else from the model itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlplatform.errors import ModelNotFound, ModelRefused
from mlplatform.models.version import ModelVersion, UriVersion

_SAFE_FORMATS = {"ubj", "json"}
#: The pyfunc loader module of torch models logged by ``mlplatform.training.train_torch``.
TORCH_LOADER_MODULE = "mlplatform.models.torch_net"
#: Key of the platform's metadata in an MLmodel file.
METADATA_KEY = "mlplatform"
#: Flavours that store a pickle: refused, with how to convert the model.
PICKLED_FLAVORS = ("sklearn", "lightgbm", "catboost", "statsmodels", "h2o", "spark",
                   "pytorch", "tensorflow", "keras")


def model_metadata(task: str, classes: Sequence[Any] | None = None, **extra: Any
                   ) -> dict[str, Any]:
    """The ``metadata`` to log with a model (``log_model(..., metadata=...)``): its task and,
    for a multiclass model, its classes in output order."""
    out: dict[str, Any] = {"task": task, **extra}
    if classes is not None:
        out["classes"] = list(classes)
    return {METADATA_KEY: out}


@dataclass
class LoadedModel:
    """A loaded model plus what scoring needs to know about it.

    ``predict`` and ``predict_matrix`` return, per row: the positive class's probability
    (binary, shape ``[rows]``), the class probabilities (multiclass, ``[rows, classes]``) or the
    value (regression, ``[rows]``).
    """

    version: ModelVersion
    model: Any  # xgboost.Booster, torch_net.TorchTabularModel or onnx_model.OnnxModel
    inputs: list[dict[str, Any]]  # the signature's input columns: [{"name", "type"}]
    kind: str = "xgboost"
    task: str = "binary"
    classes: list[Any] | None = None
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
        """Predictions for each row of ``frame`` (a DataFrame with the input columns)."""
        if self.kind in ("torch", "onnx"):
            return self.model.predict(frame[self.feature_names])
        import xgboost

        return self.model.predict(xgboost.DMatrix(frame[self.feature_names]))

    def predict_matrix(self, matrix: Any) -> Any:
        """Predictions for each row of ``matrix`` (float array, columns in
        :attr:`feature_names` order): the serving path, without a DataFrame.

        For XGBoost an in-place prediction straight from the array (~0.05 ms for a row, against
        ~0.25 ms through a DMatrix and ~1.4 ms from a DataFrame) when the booster's own feature
        names are the signature's (checked once); otherwise a DMatrix named with the
        signature's columns, so that XGBoost checks them against the booster's on every call
        (and refuses a mismatch).

        Raises:
            ValueError: ``matrix`` does not have one column per input.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.inputs):
            raise ValueError(f"{self.version.uri} takes {len(self.inputs)} inputs "
                             f"{self.feature_names}; got an array of shape {matrix.shape}")
        if self.kind == "torch":
            import pandas as pd

            return self.model.predict(pd.DataFrame(matrix, columns=self.feature_names))
        if self.kind == "onnx":
            return self.model.predict_matrix(matrix)
        if self._names_match is None:
            self._names_match = list(self.model.feature_names or []) == self.feature_names
        if self._names_match:
            return self.model.inplace_predict(matrix, validate_features=False)
        import xgboost

        return self.model.predict(xgboost.DMatrix(matrix, feature_names=self.feature_names))


def load_model_folder(mv: ModelVersion, folder: Path) -> LoadedModel:
    """The model and signature of a downloaded model folder (XGBoost UBJ/JSON, our torch
    pyfunc, or ONNX; anything else, pickled models included, is refused).

    Raises:
        ModelNotFound: No MLmodel file, no signature, or a format that is not loaded (the
            message says how to convert it).
    """
    mlmodel_path = folder / "MLmodel"
    if not mlmodel_path.is_file():
        raise ModelNotFound(f"{mv.uri} has no MLmodel file; was it logged with mlflow?")
    mlmodel = yaml.safe_load(mlmodel_path.read_text())
    check_flavors(mlmodel, mv.uri)
    flavors = mlmodel.get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    meta = (mlmodel.get("metadata") or {}).get(METADATA_KEY) or {}
    inputs = _signature_inputs(mlmodel, mv)
    if "xgboost" in flavors:
        kind, model = "xgboost", _load_xgboost(folder, flavors["xgboost"], mv)
        task = meta.get("task") or _xgboost_task(model)
    elif pyfunc.get("loader_module") == TORCH_LOADER_MODULE:
        from mlplatform.models.torch_net import load_torch_model

        kind, model = "torch", load_torch_model(_inside(folder, pyfunc.get("data"), mv))
        task = meta.get("task") or model.task
    else:
        from mlplatform.models.onnx_model import load_onnx

        kind = "onnx"
        model = load_onnx(_inside(folder, flavors["onnx"].get("data"), mv), mv,
                          [c["name"] for c in inputs], meta)
        task = model.task
    classes = meta.get("classes") or (model.classes if kind == "onnx" else None)
    if task == "multiclass" and not classes:
        classes = list(range(_num_classes(kind, model)))
    return LoadedModel(version=mv, model=model, inputs=inputs, kind=kind, task=task,
                       classes=classes if task == "multiclass" else None)


def check_flavors(mlmodel: Mapping[str, Any], uri: str) -> None:
    """Refuse a model the platform does not load (before anything is read or registered).

    Raises:
        ModelRefused: Naming the model's flavours and how to convert it.
    """
    flavors = mlmodel.get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    if "xgboost" in flavors or "onnx" in flavors or \
            pyfunc.get("loader_module") == TORCH_LOADER_MODULE:
        return
    pickled = [f if f != "sklearn" else "sklearn: a pickle or skops file"
               for f in flavors if f in PICKLED_FLAVORS]
    if pyfunc.get("python_model") or pyfunc.get("cloudpickle_version"):
        pickled.append("python_function (a cloudpickled python_model)")
    how = ("convert it to ONNX: for scikit-learn, "
           "`onx = skl2onnx.to_onnx(model, X[:1].astype('float32'), options={'zipmap': False})`"
           " (LightGBM through onnxmltools, PyTorch through torch.onnx.export), write "
           "`onx.SerializeToString()` to model.onnx, then `mlp registry import model.onnx "
           "--project <dir>` (or log it with `mlplatform.models.log_onnx_model`)")
    what = (f"is stored in a format that runs code when loaded ({', '.join(pickled)})"
            if pickled else
            f"is of a kind the platform does not load (flavors: {list(flavors)}, pyfunc "
            f"loader_module: {pyfunc.get('loader_module')})")
    raise ModelRefused(
        f"{uri} {what}; the platform never unpickles a model (loading a pickle runs its code). "
        f"It loads XGBoost (UBJ/JSON), PyTorch models logged by train_torch, and ONNX: {how}.")


def _xgboost_task(booster) -> str:
    import json

    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective.startswith("multi:"):
        return "multiclass"
    if objective.startswith(("binary:", "reg:logistic")):
        return "binary"
    return "regression"


def _num_classes(kind: str, model) -> int:
    if kind == "xgboost":
        import json

        return int(json.loads(model.save_config())["learner"]["learner_model_param"]["num_class"])
    if kind == "torch":
        return model.arch.num_outputs
    return len(model.classes or [])


def _load_xgboost(folder: Path, flavor: dict, mv: ModelVersion):
    import xgboost

    fmt = flavor.get("model_format", "xgb")
    if fmt not in _SAFE_FORMATS:
        raise ModelRefused(f"{mv.uri} stores its booster as '{fmt}'; only {sorted(_SAFE_FORMATS)} "
                            "are loaded (no pickle). Re-log it with model_format='ubj'.")
    booster = xgboost.Booster()
    booster.load_model(str(_inside(folder, flavor.get("data"), mv)))
    return booster


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
    inputs = json.loads(sig["inputs"])
    if any("name" not in c for c in inputs):
        raise ModelNotFound(f"{mv.uri}'s signature has unnamed inputs (a tensor signature); log "
                            "it with a column signature: infer_signature(<DataFrame of the "
                            "inputs>, <predictions>)")
    return [{"name": c["name"], "type": c["type"]} for c in inputs]


@contextmanager
def downloads():
    """A temporary folder to download a model into (without per-file progress bars: a model is
    a handful of small files, and the bars are noise in replica logs)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


def load_model_uri(uri: str, config) -> LoadedModel:
    """Load a model from an MLflow URI (no pickle).

    Args:
        uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a registered version),
            ``models:/m-<id>`` (a logged model: what ``TrainResult.model_uri`` holds) or
            ``runs:/<run_id>/<artifact path>`` (e.g. ``runs:/<id>/model``).
        config: The :class:`~mlplatform.config.PlatformConfig` whose MLflow holds the model.

    Raises:
        ModelNotFound: The URI is of none of those forms, does not resolve, or holds no model
            the platform loads.
    """
    with downloads() as tmp:
        return load_model_folder(*download_uri(config, uri, tmp))


def download_uri(config, uri: str, dst) -> tuple[ModelVersion, Path]:
    """Download the model at ``uri`` into ``dst``; return its version and folder."""
    import re

    import mlflow
    from mlflow.exceptions import MlflowException

    from mlplatform import _mlflow

    tracking = config.mlflow_tracking_uri
    client = _mlflow.client(config)   # also points the fluent API (downloads) at the registry
    registered = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([A-Za-z_][\w-]*))", uri)
    if not uri.startswith(("models:/", "runs:/")) or (
            uri.startswith("models:/") and not registered
            and not re.fullmatch(r"models:/m-[0-9a-f]+", uri)):
        raise ModelNotFound(f"invalid model URI {uri!r}: use models:/<name>/<version>, "
                            "models:/<name>@<alias>, models:/m-<id> or runs:/<run_id>/<path>")
    try:
        if registered:
            name, version, alias = registered.groups()
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
            out: ModelVersion = ModelVersion(
                name=mv.name, version=str(mv.version), source=mv.source, run_id=mv.run_id,
                aliases=tuple(mv.aliases or ()), tags=dict(mv.tags or {}))
            uri = out.uri
        elif uri.startswith("runs:/"):
            run_id = uri[len("runs:/"):].split("/", 1)[0]
            out = UriVersion(name=uri, version="", source=uri, run_id=run_id, aliases=(), tags={})
        else:
            run_id = client.get_logged_model(uri[len("models:/"):]).source_run_id
            out = UriVersion(name=uri, version="", source=uri, run_id=run_id, aliases=(), tags={})
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                   tracking_uri=tracking)
    except MlflowException as exc:
        if registered:
            name, version, alias = registered.groups()
            what = f"no alias '{alias}'" if alias else f"no version {version}"
            raise ModelNotFound(f"model '{name}' has {what} in {config.mlflow_registry_uri} "
                                f"({exc.message})") from None
        raise ModelNotFound(f"{uri} does not resolve in {tracking}: {exc.message}") from None
    return out, Path(path)
