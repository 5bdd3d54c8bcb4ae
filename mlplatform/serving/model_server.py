"""The deployments that hold registered models: ``ModelServer`` (one per served model
reference: registry load, adaptive ``@serve.batch``, alias reload) and ``Explainer`` (SHAP for
the exact version an arm serves)."""

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve

logger = logging.getLogger("ray.serve")


# Module-level helpers are defined above the deployment: Serve pickles a deployment class
# when it is decorated, so the helpers its methods call must already exist then.
def _replica_target(model_ref: str) -> str:
    try:
        ctx = serve.get_replica_context()
        target = f"serve:{ctx.app_name}/{ctx.deployment}#{ctx.replica_id.unique_id}"
    except Exception:   # outside a replica (tests calling the class directly)
        target = "serve:local"
    return f"{target} ({model_ref})"


def _audit_deploy(registry, version, model_ref: str) -> None:
    """Record in the audit trail that this replica serves ``version`` (a replica that cannot
    write the trail still serves, and says so in its log)."""
    try:
        registry.record_deploy(version.name, version.version, _replica_target(model_ref))
    except Exception as exc:
        logger.warning("could not record the deploy of %s in the audit trail: %s", version.uri, exc)


def _threshold(registry, version) -> float:
    """The decision threshold of a version: its ``decision_threshold`` tag (set at registration
    from the training run's evaluation), else the run's evaluation artifact, else 0.5."""
    tag = version.tags.get("decision_threshold")
    if tag is not None:
        return float(tag)
    from mlplatform import _mlflow

    found = _mlflow.run_threshold(registry.config, version.run_id)
    if found is None:
        logger.warning("%s has no decision_threshold tag nor evaluation/metrics.json; "
                       "deciding at 0.5", version.uri)
        return 0.5
    return found


def _serving_state(loaded, threshold: float) -> dict[str, Any]:
    mv = loaded.version
    return {"model": loaded, "model_name": mv.name, "model_version": mv.version,
            "threshold": threshold, "uri": mv.uri, "run_id": mv.run_id}


def _load(registry, model_ref: str, columns_expected: list[str]) -> dict[str, Any]:
    """Load ``model_ref`` and its threshold; refuse a model whose inputs are not the platform's."""
    from mlplatform.registry import load_model

    loaded = load_model(registry, model_ref)
    if loaded.kind == "xgboost":
        # One thread per call: a replica is sized in (fractions of) CPUs by the Serve YAML and
        # scales out with replicas; OpenMP teams on a shared box only add spin-wait latency.
        loaded.model.set_param({"nthread": 1})
    if loaded.feature_names != columns_expected:
        raise ValueError(f"model {model_ref} ({loaded.version.uri}) takes inputs "
                         f"{loaded.feature_names}, but the platform's model_inputs() produces "
                         f"{columns_expected}; retrain it on a training set from "
                         "mlplatform.features.build_training_set")
    return _serving_state(loaded, _threshold(registry, loaded.version))



@serve.deployment
class ModelServer:
    """Serves one registered model (``name@alias`` or ``name/version``) with ``@serve.batch``.

    An alias is re-resolved every ``reload_interval_s`` (and on every ``user_config`` change,
    which is what ``mlp serve reload`` sends): when it points at another version, the new model
    is loaded beside the old one and swapped in; requests in flight finish on the old one.
    """

    async def __init__(self, model_ref: str, platform: dict[str, Any], max_batch_size: int = 32,
                       batch_wait_timeout_s: float = 0.005, reload_interval_s: float = 30.0):
        from mlplatform.config import PlatformConfig
        from mlplatform.features import FEATURE_COLUMNS
        from mlplatform.registry import ModelRegistry

        self._registry = ModelRegistry(PlatformConfig(**platform))
        self._ref, self._columns = model_ref, FEATURE_COLUMNS
        self._state = _load(self._registry, model_ref, FEATURE_COLUMNS)
        _audit_deploy(self._registry, self._state["model"].version, model_ref)
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._reload_lock = asyncio.Lock()
        self._in_flight = 0
        self._poller = (asyncio.get_running_loop().create_task(self._poll(reload_interval_s))
                        if reload_interval_s > 0 and "@" in model_ref else None)
        logger.info("ModelServer loaded %s as %s", model_ref, self._state["uri"])

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Any ``user_config`` change (e.g. ``{reload: <token>}``) re-resolves the reference now."""
        await self.reload()

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)   # the poll period, not a readiness wait
            try:
                await self.reload()
            except Exception as exc:   # the registry is down: keep serving what is loaded
                logger.warning("reload check of %s failed, still serving %s: %s",
                               self._ref, self._state["uri"], exc)

    async def reload(self) -> dict[str, Any]:
        """Re-resolve the reference; load and swap in a new version if it moved.

        Returns:
            ``{"model_ref", "from_version", "to_version", "reloaded"}``.
        """
        async with self._reload_lock:
            before = self._state
            current = await asyncio.to_thread(self._registry.resolve, self._ref)
            if current.version == before["model_version"]:
                return {"model_ref": self._ref, "from_version": before["model_version"],
                        "to_version": current.version, "reloaded": False}
            # Load the exact version resolved (the alias may move again meanwhile).
            state = await asyncio.to_thread(_load, self._registry, current.uri.removeprefix(
                "models:/"), self._columns)
            self._state = state          # one assignment: a batch sees the old or the new model
            _audit_deploy(self._registry, state["model"].version, self._ref)
            logger.info("ModelServer %s reloaded: version %s -> %s", self._ref,
                        before["model_version"], state["model_version"])
            return {"model_ref": self._ref, "from_version": before["model_version"],
                    "to_version": state["model_version"], "reloaded": True}

    def info(self) -> dict[str, Any]:
        """What is loaded: reference, name, version, threshold and the input columns."""
        s = self._state
        return {"model_ref": self._ref, "model_name": s["model_name"],
                "model_version": s["model_version"], "run_id": s["run_id"],
                "threshold": s["threshold"], "kind": s["model"].kind,
                "inputs": s["model"].inputs}

    async def predict(self, matrix: np.ndarray) -> dict[str, Any]:
        """Scores of the rows of ``matrix`` (the model inputs, in ``FEATURE_COLUMNS`` order),
        with the version that scored them and its decision threshold.

        Adaptive batching: a request that finds no other one in flight on this replica is
        scored at once; only under concurrency do requests wait (at most
        ``batch_wait_timeout_s``) to be scored together by ``@serve.batch``. So a lone request
        never pays the batch window, and a busy replica makes one model call per batch.
        """
        self._in_flight += 1
        try:
            # One turn of the event loop first: requests that reached the replica together
            # start and count themselves, so they see each other and batch.
            await asyncio.sleep(0)
            if self._in_flight == 1:
                state = self._state
                scores = [float(s) for s in state["model"].predict_matrix(matrix)]
            else:
                scores, state = await self._score_batch(matrix)
        finally:
            self._in_flight -= 1
        return {"scores": scores, "model_name": state["model_name"],
                "model_version": state["model_version"], "threshold": state["threshold"]}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score_batch(self, matrices: list[np.ndarray]) -> list[tuple[list[float], dict]]:
        # One model call (XGBoost or torch) for every request that arrived within the window.
        state = self._state
        sizes = [len(m) for m in matrices]
        scores = state["model"].predict_matrix(np.vstack(matrices))
        out, start = [], 0
        for n in sizes:
            out.append(([float(s) for s in scores[start:start + n]], state))
            start += n
        return out


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
