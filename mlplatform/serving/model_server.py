"""The deployments that hold registered models: ``ModelServer`` (one per served model
reference: registry load, adaptive ``@serve.batch``, alias reload) and ``Explainer`` (SHAP for
the exact version an arm serves)."""

import logging
from typing import Any

import numpy as np
from ray import serve

logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    """Serves one registered model (``name@alias`` or ``name/version``) with ``@serve.batch``:
    a :class:`~mlplatform.serving.served_model.ServedModel` in a deployment of its own, so the
    model scales (and fails) apart from the Ingress.

    An alias is re-resolved every ``reload_interval_s`` (and on every ``user_config`` change,
    which is what ``mlp serve reload`` sends): when it points at another version, the new model
    is loaded beside the old one and swapped in; requests in flight finish on the old one.
    """

    async def __init__(self, model_ref: str, platform: dict[str, Any], columns: list[str],
                       task: str | None = None, max_batch_size: int = 32,
                       batch_wait_timeout_s: float = 0.005, reload_interval_s: float = 30.0):
        from mlplatform.config import PlatformConfig
        from mlplatform.registry import ModelRegistry
        from mlplatform.serving.served_model import ServedModel

        self._model = ServedModel(ModelRegistry(PlatformConfig(**platform)), model_ref, columns,
                                  task, max_batch_size, batch_wait_timeout_s)
        self._model.start_polling(reload_interval_s)

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Any ``user_config`` change (e.g. ``{reload: <token>}``) re-resolves the reference now."""
        await self._model.reload()

    async def reload(self) -> dict[str, Any]:
        """Re-resolve the reference now (see :meth:`ServedModel.reload`)."""
        return await self._model.reload()

    def info(self) -> dict[str, Any]:
        """What is loaded: reference, name, version, threshold and the input columns."""
        return self._model.info()

    async def predict(self, matrix: np.ndarray) -> dict[str, Any]:
        """Scores of the rows of ``matrix`` (see :meth:`ServedModel.predict`)."""
        return await self._model.predict(matrix)


@serve.deployment
class Explainer:
    """SHAP explanations of one registered version (loaded on demand, a few kept in memory)."""

    def __init__(self, platform: dict[str, Any], keep: int = 4, background_rows: int = 100):
        from mlplatform.config import PlatformConfig
        from mlplatform.registry import ModelRegistry

        self._registry = ModelRegistry(PlatformConfig(**platform))
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._keep, self._background_rows = keep, background_rows

    def _model(self, ref: str):
        import pandas as pd

        from mlplatform.registry import load_model

        if ref not in self._cache:
            loaded = load_model(self._registry, ref)
            background = None
            path = loaded.version.tags.get("features_path")
            if loaded.kind != "xgboost" and path:
                # Non-tree models are explained against a background sample of the training set.
                frame = pd.read_parquet(path, columns=loaded.feature_names)
                background = frame.sample(min(len(frame), self._background_rows), random_state=0)
            if len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[ref] = (loaded, background)
        return self._cache[ref]

    def explain(self, ref: str, matrix: np.ndarray, tolerance: float = 1e-3) -> dict[str, Any]:
        import pandas as pd

        from mlplatform.serving.explain import explain_rows

        loaded, background = self._model(ref)
        frame = pd.DataFrame(matrix, columns=loaded.feature_names)
        result = explain_rows(loaded, frame, background=background, tolerance=tolerance)
        return {**result, "tolerance": tolerance}
