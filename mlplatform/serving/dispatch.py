"""The data plane of the traffic split, run inside each Ingress replica.

:class:`Dispatcher` keeps a copy of the Router's route table (a long poll on
:meth:`Router.routes <mlplatform.serving.router.Router.routes>` in the background), chooses the
arm of each request locally, calls that arm's ModelServer (one Serve hop), copies a sample to the
shadow model, and records the per-arm Prometheus metrics. A request thus crosses
``Ingress -> ModelServer`` and nothing else; the Router only publishes config and readiness.
"""

import asyncio
import logging
import time
from typing import Any

import numpy as np

from mlplatform.registry.registry import parse_model_ref
from mlplatform.serving.schemas import FieldError, RequestRejected

logger = logging.getLogger("ray.serve")

#: Header that pins a request to an arm (needs the admin token).
PIN_HEADER = "x-mlp-arm"
#: Latency buckets (ms) and score buckets of the per-arm histograms.
LATENCY_BUCKETS_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500]
SCORE_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
#: Seconds between two tries to reach the Router after a failed long poll.
_RESYNC_S = 1.0


class _ArmMetrics:
    """Per-arm Prometheus metrics (Ray Serve's metrics API; exported as ``ray_<name>``)."""

    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "mlp_serve_requests", description="Predictions served, per arm and model version.",
            tag_keys=("arm", "model_name", "model_version"))
        self.errors = metrics.Counter(
            "mlp_serve_errors", description="Predictions that failed, per arm.",
            tag_keys=("arm", "model_name"))
        self.latency = metrics.Histogram(
            "mlp_serve_latency_ms", description="Ingress-to-model latency per request, per arm "
            "(ms).", boundaries=LATENCY_BUCKETS_MS, tag_keys=("arm",))
        self.scores = metrics.Histogram(
            "mlp_serve_score", description="Distribution of served scores, per arm.",
            boundaries=SCORE_BUCKETS, tag_keys=("arm", "model_version"))
        self.shadow_requests = metrics.Counter(
            "mlp_serve_shadow_requests", description="Predictions copied to the shadow model.",
            tag_keys=("model", "outcome"))
        self.shadow_disagreements = metrics.Counter(
            "mlp_serve_shadow_disagreements",
            description="Shadow decisions that differ from the served decision.",
            tag_keys=("arm", "model"))


def _by_arm(arms: list[Any]) -> dict[str, tuple[Any, list[int]]]:
    """Record indices per arm name: ``{name: (arm spec, [i, ...])}`` in first-seen order."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, arm in enumerate(arms):
        groups.setdefault(arm.name, (arm, []))[1].append(i)
    return groups


class Unavailable(Exception):
    """No arm can serve this request now (answered 503 with Retry-After)."""


class Dispatcher:
    """Routes requests to the arms' ModelServers with the Router's route table.

    Args:
        router: Handle of the Router deployment (the control plane).
        servers: Model reference -> ModelServer handle.
        explainer: Handle of the Explainer deployment.
    """

    def __init__(self, router: Any, servers: dict[str, Any], explainer: Any):
        self._router, self._explainer = router, explainer
        self._servers = servers
        self._table = None            # RouteTable, once the Router answered
        self._metrics = _ArmMetrics()
        self._background: set[asyncio.Task] = set()
        self._sync_task: asyncio.Task | None = None
        self._refresh_lock = asyncio.Lock()

    # ---------------------------------------------------------------- the route table -----
    def start(self) -> None:
        """Start following the Router's table (call from the replica's event loop)."""
        if self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._follow())

    def _take(self, data: dict[str, Any]) -> None:
        from mlplatform.serving.routing import RouteTable

        if self._table is None or data["version"] != self._table.version:
            self._table = RouteTable.from_dict(data)

    async def _follow(self) -> None:
        """Long-poll the Router for new table versions for as long as the replica lives; on
        an error (e.g. the Router replica being replaced) keep the last table and retry."""
        while True:
            since = -1 if self._table is None else self._table.version
            try:
                self._take(await self._router.routes.remote(since))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Ingress: the Router did not answer (%s); routing on table "
                               "version %s", exc, since)
                await asyncio.sleep(_RESYNC_S)   # back-off before the next try, not a wait

    async def _current(self, probe: bool = False):
        """The table to route with; asks the Router at once when there is none yet or no arm is
        ready (e.g. just started), instead of answering 503 until the next push."""
        table = self._table
        if table is None or table.splitter is None or probe:
            async with self._refresh_lock:
                if self._table is table:   # nobody refreshed it meanwhile
                    self._take(await self._router.routes.remote(-1, 0.0, True))
            table = self._table
        return table

    async def view(self) -> dict[str, Any]:
        """``GET /models``: the table this replica routes with."""
        return (await self._current()).view()

    # ---------------------------------------------------------------- requests ------------
    async def _arms(self, records: list[dict[str, Any]], pin: str | None):
        from mlplatform.serving.routing import ArmUnavailable, UnknownArm

        table = await self._current()
        try:
            return table, table.arms_for(records, pin)
        except UnknownArm:
            raise RequestRejected(400, f"unknown arm '{pin}' in {PIN_HEADER}", [FieldError(
                PIN_HEADER, f"'{pin}' is not an arm; arms: {[a.name for a in table.config.arms]}",
                "unknown_arm")]) from None
        except ArmUnavailable as exc:
            raise Unavailable(str(exc)) from None

    async def _call(self, arm, matrix: np.ndarray) -> dict[str, Any]:
        """Score on ``arm``'s ModelServer; one retry (a replica that died mid-request)."""
        handle = self._servers[arm.model]
        start = time.perf_counter()
        for attempt in (1, 2):
            try:
                out = await handle.predict.remote(matrix)
                break
            except Exception as exc:
                self._metrics.errors.inc(tags={"arm": arm.name,
                                               "model_name": parse_model_ref(arm.model)[0]})
                if attempt == 2:
                    raise
                logger.warning("Ingress: arm %s failed (%s), retrying once", arm.name, exc)
        self._metrics.latency.observe((time.perf_counter() - start) * 1000, tags={"arm": arm.name})
        self._metrics.requests.inc(len(out["scores"]), tags={
            "arm": arm.name, "model_name": out["model_name"],
            "model_version": out["model_version"]})
        for s in out["scores"]:
            self._metrics.scores.observe(s, tags={"arm": arm.name,
                                                  "model_version": out["model_version"]})
        return out

    async def predict(self, features: dict[str, Any], records: list[dict[str, Any]],
                      request_id: str, pin: str | None = None) -> list[dict[str, Any]]:
        """Route, score and decide each record; copy a sample to the shadow model.

        Raises:
            RequestRejected: ``pin`` names no arm (400).
            Unavailable: No arm can serve (503).
        """
        table, arms = await self._arms(records, pin)
        matrix, groups = features["matrix"], _by_arm(arms)
        if len(groups) == 1:
            outs = [await self._call(arms[0], matrix)]
        else:
            outs = await asyncio.gather(*(self._call(arm, matrix[idx])
                                          for arm, idx in groups.values()))
        predictions: list[dict[str, Any]] = [{}] * len(records)
        for (arm, idx), out in zip(groups.values(), outs, strict=True):
            for i, score in zip(idx, out["scores"], strict=True):
                predictions[i] = {
                    "transaction_id": records[i].get("transaction_id"), "score": score,
                    "decision": "fraud" if score >= out["threshold"] else "legit",
                    "arm": arm.name, "model_name": out["model_name"],
                    "model_version": out["model_version"],
                    "unknown_user": features["unknown_user"][i]}
        shadow = table.shadow_model(request_id)
        if shadow is not None:
            task = asyncio.get_running_loop().create_task(
                self._shadow(shadow, matrix, predictions))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return predictions

    async def _shadow(self, model: str, matrix: np.ndarray, served: list[dict[str, Any]]) -> None:
        """Score a copy on the shadow model; count disagreements; never reach the caller."""
        try:
            out = await self._servers[model].predict.remote(matrix)
        except Exception as exc:
            self._metrics.shadow_requests.inc(len(served), tags={"model": model,
                                                                 "outcome": "error"})
            logger.warning("shadow %s failed (the caller was answered already): %s", model, exc)
            return
        self._metrics.shadow_requests.inc(len(served), tags={"model": model, "outcome": "ok"})
        for pred, score in zip(served, out["scores"], strict=True):
            if (score >= out["threshold"]) != (pred["decision"] == "fraud"):
                self._metrics.shadow_disagreements.inc(tags={"arm": pred["arm"], "model": model})

    async def explain(self, features: dict[str, Any], records: list[dict[str, Any]],
                      request_id: str, pin: str | None = None) -> list[dict[str, Any]]:
        """SHAP values from the version that the chosen arm serves (same choice as predict)."""
        table, arms = await self._arms(records, pin)
        matrix, groups = features["matrix"], _by_arm(arms)
        infos = {name: table.ready[arm.model] for name, (arm, _) in groups.items()}
        # One Explainer call per arm, for the exact version the arm serves.
        results = await asyncio.gather(*(
            self._explainer.explain.remote(
                f"{infos[name]['model_name']}/{infos[name]['model_version']}", matrix[idx])
            for name, (_, idx) in groups.items()))
        out: list[dict[str, Any]] = [{}] * len(records)
        for (name, (_, idx)), result in zip(groups.items(), results, strict=True):
            info = infos[name]
            for i, row in zip(idx, result["explanations"], strict=True):
                out[i] = {"transaction_id": records[i].get("transaction_id"), "arm": name,
                          "model_name": info["model_name"],
                          "model_version": info["model_version"], "score": row["score"],
                          "decision": "fraud" if row["score"] >= info["threshold"] else "legit",
                          "method": result["method"], "output": result["output"],
                          "base_value": result["base_value"], "margin": row["margin"],
                          "contributions": row["contributions"],
                          "additivity_error": row["additivity_error"],
                          "additivity_ok": row["additivity_error"] <= result["tolerance"],
                          "unknown_user": features["unknown_user"][i]}
        return out
