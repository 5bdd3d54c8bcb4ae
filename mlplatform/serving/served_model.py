"""``ServedModel``: one registered model held for scoring, wherever it runs.

The same object backs a ``ModelServer`` deployment (one per served model) and, with
``args.embed_models: true``, lives inside each Ingress replica so a request is scored without
any Serve hop. It loads ``name@alias`` or ``name/version`` through the registry (no pickle),
refuses a model whose inputs are not the project's model inputs, scores with adaptive
``@serve.batch``, and re-resolves its alias on demand or on a poll, swapping a new version in
without dropping a request.

A model's answer per row is its score (binary: the positive class's probability), its class
probabilities (multiclass) or its value (regression); the Ingress turns it into the project's
answer.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve

from mlplatform.serving.batching import AdaptiveBatch, split_rows

logger = logging.getLogger("ray.serve")


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
    """The decision threshold of a binary version: its ``decision_threshold`` tag (set at
    registration from the training run's evaluation), else the run's evaluation artifact, else
    0.5."""
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


def _load(registry, model_ref: str, columns_expected: list[str],
          task: str | None = None) -> dict[str, Any]:
    """Load ``model_ref`` and its threshold; refuse a model whose inputs are not the project's
    model inputs, or whose task is not the project's."""
    from mlplatform.registry import load_model

    loaded = load_model(registry, model_ref)
    if loaded.kind == "xgboost":
        # One thread per call: a replica is sized in (fractions of) CPUs by the Serve YAML and
        # scales out with replicas; OpenMP teams on a shared box only add spin-wait latency.
        loaded.model.set_param({"nthread": 1})
    if loaded.feature_names != columns_expected:
        raise ValueError(f"model {model_ref} ({loaded.version.uri}) takes inputs "
                         f"{loaded.feature_names}, but the project's model_inputs produce "
                         f"{columns_expected}; retrain it on the project's training set "
                         "(mlplatform.features.build_training_set)")
    if task is not None and loaded.task != task:
        raise ValueError(f"model {model_ref} ({loaded.version.uri}) is a {loaded.task} model, "
                         f"but the project's task is {task}; serve a model of this project")
    mv = loaded.version
    return {"model": loaded, "model_name": mv.name, "model_version": mv.version,
            "threshold": _threshold(registry, mv) if loaded.task == "binary" else None,
            "task": loaded.task, "classes": loaded.classes, "uri": mv.uri, "run_id": mv.run_id}


class ServedModel:
    """One registered model (``name@alias`` or ``name/version``), loaded and scoring.

    Args:
        registry: The :class:`~mlplatform.registry.ModelRegistry` to load from.
        model_ref: What to serve.
        max_batch_size: Most requests scored in one model call.
        batch_wait_timeout_s: How long a request waits for others to batch with.
        on_change: Called with the new :meth:`info` after a reload swapped a version in.

    Raises:
        ModelNotFound: The reference does not resolve.
        ValueError: The model's inputs are not ``columns``, or its task is not ``task``.
    """

    def __init__(self, registry, model_ref: str, columns: list[str], task: str | None = None,
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005,
                 on_change: Callable[[dict[str, Any]], None] | None = None):
        self._registry, self.ref, self._columns, self._task = registry, model_ref, columns, task
        self._state = _load(registry, model_ref, columns, task)
        self._on_change = on_change
        _audit_deploy(registry, self._state["model"].version, model_ref)
        # Adaptive @serve.batch, one queue per instance (two embedded models never share one).
        self._batch = AdaptiveBatch(self._score_one, self._score_many, max_batch_size,
                                    batch_wait_timeout_s)
        self._reload_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        logger.info("loaded %s as %s", model_ref, self._state["uri"])

    def start_polling(self, interval_s: float) -> None:
        """Re-resolve an alias every ``interval_s`` (0, or a pinned version: never)."""
        if interval_s > 0 and "@" in self.ref and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval_s))

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)   # the poll period, not a readiness wait
            try:
                await self.reload()
            except Exception as exc:   # the registry is down: keep serving what is loaded
                logger.warning("reload check of %s failed, still serving %s: %s",
                               self.ref, self._state["uri"], exc)

    async def reload(self) -> dict[str, Any]:
        """Re-resolve the reference; load and swap in a new version if it moved.

        Returns:
            ``{"model_ref", "from_version", "to_version", "reloaded"}``.
        """
        async with self._reload_lock:
            before = self._state
            current = await asyncio.to_thread(self._registry.resolve, self.ref)
            if current.version == before["model_version"]:
                return {"model_ref": self.ref, "from_version": before["model_version"],
                        "to_version": current.version, "reloaded": False}
            # Load the exact version resolved (the alias may move again meanwhile).
            state = await asyncio.to_thread(_load, self._registry, current.uri.removeprefix(
                "models:/"), self._columns, self._task)
            self._state = state          # one assignment: a batch sees the old or the new model
            _audit_deploy(self._registry, state["model"].version, self.ref)
            logger.info("%s reloaded: version %s -> %s", self.ref, before["model_version"],
                        state["model_version"])
            if self._on_change is not None:
                self._on_change(self.info())
            return {"model_ref": self.ref, "from_version": before["model_version"],
                    "to_version": state["model_version"], "reloaded": True}

    def info(self) -> dict[str, Any]:
        """What is loaded: reference, name, version, task, threshold (binary), classes
        (multiclass) and the input columns."""
        s = self._state
        return {"model_ref": self.ref, "model_name": s["model_name"],
                "model_version": s["model_version"], "run_id": s["run_id"],
                "task": s["task"], "threshold": s["threshold"], "classes": s["classes"],
                "kind": s["model"].kind, "inputs": s["model"].inputs}

    async def predict(self, matrix: np.ndarray) -> dict[str, Any]:
        """Predictions of the rows of ``matrix`` (the model inputs, in column order): a score,
        a list of class probabilities or a value per row, with the version that made them, its
        task, decision threshold (binary) and classes (multiclass).

        Adaptive batching (:class:`~mlplatform.serving.batching.AdaptiveBatch`): a request that
        finds no other one in flight here is scored at once; only under concurrency do requests
        wait (at most ``batch_wait_timeout_s``) to be scored together by ``@serve.batch``. So a
        lone request never pays the batch window, and a busy replica makes one model call per
        batch.
        """
        scores, state = await self._batch(matrix)
        return {"scores": scores, "model_name": state["model_name"],
                "model_version": state["model_version"], "threshold": state["threshold"],
                "task": state["task"], "classes": state["classes"]}

    def _score_one(self, matrix: np.ndarray) -> tuple[list[float], dict[str, Any]]:
        state = self._state
        return np.asarray(state["model"].predict_matrix(matrix), dtype=float).tolist(), state

    def _score_many(self, matrices: list[np.ndarray]) -> list[tuple[list[float], dict]]:
        # One model call (XGBoost, torch or ONNX) for every request that arrived within the window;
        # the batch is scored by one version, even if a reload swaps another in meanwhile.
        state = self._state
        scores = np.asarray(state["model"].predict_matrix(np.vstack(matrices)),
                            dtype=float).tolist()
        return [(part, state) for part in split_rows(scores, [len(m) for m in matrices])]
