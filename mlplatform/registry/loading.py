"""Load registered models for scoring, without pickle.

Only the XGBoost flavour stored as UBJ or JSON is accepted: the MLmodel file is read as YAML and
the booster file is handed to ``xgboost.Booster.load_model``. Anything else (a pickled model)
is refused instead of being unpickled.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import yaml

from mlplatform.errors import ModelNotFound
from mlplatform.registry.registry import ModelRegistry, ModelVersion

_SAFE_FORMATS = {"ubj", "json"}


@dataclass
class LoadedModel:
    """A booster plus what serving needs to know about it."""

    version: ModelVersion
    booster: Any  # xgboost.Booster
    inputs: list[dict[str, Any]]  # the signature's input columns: [{"name", "type"}]

    @property
    def feature_names(self) -> list[str]:
        return [c["name"] for c in self.inputs]

    def predict(self, frame) -> Any:
        """Fraud probability for each row of ``frame`` (a DataFrame with the input columns)."""
        import xgboost

        return self.booster.predict(xgboost.DMatrix(frame[self.feature_names]))


def load_model(registry: ModelRegistry, ref: str) -> LoadedModel:
    """Resolve ``ref`` (e.g. ``fraud@champion``) and load its booster and signature.

    Raises:
        ModelNotFound: The reference does not resolve, or the version has no safe XGBoost model.
    """
    import os

    import xgboost

    # Per-file progress bars are noise in replica logs; a model is a handful of small files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        mv, folder = registry.download(ref, tmp)
        mlmodel_path = folder / "MLmodel"
        if not mlmodel_path.is_file():
            raise ModelNotFound(f"{mv.uri} has no MLmodel file; was it logged with mlflow?")
        mlmodel = yaml.safe_load(mlmodel_path.read_text())
        flavor = (mlmodel.get("flavors") or {}).get("xgboost")
        if not flavor:
            raise ModelNotFound(f"{mv.uri} is not an XGBoost model (flavors: "
                                f"{list(mlmodel.get('flavors') or {})}); serving loads XGBoost only.")
        fmt = flavor.get("model_format", "xgb")
        if fmt not in _SAFE_FORMATS:
            raise ModelNotFound(f"{mv.uri} stores its booster as '{fmt}'; only {sorted(_SAFE_FORMATS)} "
                                "are loaded (no pickle). Re-log it with model_format='ubj'.")
        booster = xgboost.Booster()
        booster.load_model(str(folder / flavor["data"]))
        inputs = _signature_inputs(mlmodel, mv)
    return LoadedModel(version=mv, booster=booster, inputs=inputs)


def _signature_inputs(mlmodel: dict, mv: ModelVersion) -> list[dict[str, Any]]:
    import json

    sig = mlmodel.get("signature") or {}
    if not sig.get("inputs"):
        raise ModelNotFound(f"{mv.uri} was logged without a signature; serving needs one to "
                            "validate requests. Re-log it with signature=infer_signature(...).")
    return [{"name": c["name"], "type": c["type"]} for c in json.loads(sig["inputs"])]
