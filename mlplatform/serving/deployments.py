"""Ray Serve deployments of the fraud app::

    Ingress (HTTP: auth, limits, validation, request ids;
             FeatureLookup in-process: online store by user_id / merchant_id, model inputs)
      -> Router (arms, weights, sticky key, shadow; from its Serve ``user_config``)
      -> ModelServer-<model> (one per served model: registry load, @serve.batch, alias reload)
    and /explain: Router -> Explainer (SHAP for the version that the chosen arm serves).

The feature lookup runs inside the Ingress replica rather than as a deployment of its own: it
is one read of the shared online store (SQLite file or Redis, ~0.1 ms), and a deployment hop
costs more than that (~1 ms of Serve RPC on a small machine). It scales with the Ingress.

Resource figures (CPUs, replicas, autoscaling, backpressure) come from the Serve YAML, not from
decorators. The Router reads its routing config only from ``user_config``, so ``serve deploy``
with new weights or arms reconfigures the running replicas: nothing restarts, no request fails.
"""


import asyncio
import hmac
import logging
import os
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from mlplatform.registry.registry import parse_model_ref
from mlplatform.serving.schemas import (
    RequestRejected,
    parse_body,
    transaction_model,
    validate_instances,
)

logger = logging.getLogger("ray.serve")
api = FastAPI(title="mlplatform", description="Fraud scoring on Ray Serve, models from MLflow.")

#: Header that pins a request to an arm (needs the admin token).
PIN_HEADER = "x-mlp-arm"
#: Latency buckets (ms) and score buckets of the per-arm histograms.
LATENCY_BUCKETS_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500]
SCORE_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


# Module-level helpers are defined above the deployments: Serve pickles a deployment class
# when it is decorated, so the helpers its methods call must already exist then.
def _request_id(request: Request) -> str:
    """Serve's id for this request: the caller's X-Request-ID if sent, else one Serve generated.

    Serve also returns it as the ``x-request-id`` response header, so body and header agree.
    """
    from ray.serve.context import _get_serve_request_context

    return (_get_serve_request_context().request_id or request.headers.get("x-request-id")
            or uuid.uuid4().hex)


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
            "mlp_serve_latency_ms", description="Router-to-model latency per request, per arm (ms).",
            boundaries=LATENCY_BUCKETS_MS, tag_keys=("arm",))
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


class FeatureLookup:
    """Online features for raw transactions: store lookup + the shared model-inputs transform.

    Used in-process by the Ingress (see the module docstring). Unknown users (nothing in the
    online store, or older than the view's TTL) are scored with default features and flagged.
    """

    def __init__(self, platform: dict[str, Any]):
        from mlplatform.config import PlatformConfig
        from mlplatform.features import FeatureStore

        self._store = FeatureStore(PlatformConfig(**platform))

    def features(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"matrix": model inputs (rows x FEATURE_COLUMNS), "unknown_user": [bool]}``."""
        from datetime import datetime, timezone

        from mlplatform.features import VIEW_FEATURES, model_inputs_matrix

        now = datetime.now(timezone.utc)
        records = [{**r, "event_timestamp": r["event_timestamp"] or now} for r in records]
        looked_up = self._store.get_online_features(
            records, VIEW_FEATURES, as_of=[r["event_timestamp"] for r in records])
        return {"matrix": model_inputs_matrix(records, looked_up),
                "unknown_user": [v is None for v in looked_up["user_last_event_at"]]}


class ArmUnavailable(Exception):
    """No arm can take the request (none ready, or the pinned one is not)."""


@serve.deployment
class Router:
    """Splits traffic over arms (weights, sticky key, shadow) from its ``user_config``.

    ``servers`` maps each served model reference to its ModelServer handle. An arm is routed to
    only once its ModelServer has answered a probe (a model that fails to load never gets
    traffic). A new ``user_config`` is validated first: a bad one is logged and the running
    config stays (in a starting replica it fails the start, so the deploy reports it).
    """

    async def __init__(self, servers: dict[str, Any], explainer: Any,
                       default_config: dict[str, Any], probe_interval_s: float = 2.0,
                       probe_timeout_s: float = 5.0):
        from mlplatform.serving.routing import RouterConfig

        self._servers, self._explainer = servers, explainer
        self._probe_interval_s, self._probe_timeout_s = probe_interval_s, probe_timeout_s
        self._ready: dict[str, dict[str, Any]] = {}      # model ref -> ModelServer.info()
        self._errors: dict[str, str] = {}                # model ref -> why it is not ready
        self._config_error: str | None = None
        self._configured = False          # True once a user_config was applied
        self._apply(RouterConfig.from_user_config(default_config))
        self._metrics = _ArmMetrics()
        self._background: set[asyncio.Task] = set()
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    # ---------------------------------------------------------------- configuration -------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        from mlplatform.errors import ConfigError
        from mlplatform.serving.routing import RouterConfig

        try:
            config = RouterConfig.from_user_config(user_config)
        except ConfigError as exc:
            if not self._configured:      # a starting replica: fail the start, Serve reports it
                raise
            self._config_error = str(exc)
            logger.error("Router: new user_config rejected, the previous one stays: %s", exc)
            return
        self._config_error = None
        self._apply(config)
        self._configured = True
        await self._probe_all()

    def _apply(self, config) -> None:
        self._config = config
        for ref in self._models(config):
            if ref not in self._servers:
                self._errors[ref] = (f"no ModelServer serves {ref}: add it to the application's "
                                     f"args.models (served: {sorted(self._servers)})")
                logger.error("Router: arm model %s is not served; it gets no traffic", ref)
        self._rebuild()

    @staticmethod
    def _models(config) -> list[str]:
        refs = [a.model for a in config.arms]
        return refs + ([config.shadow.model] if config.shadow else [])

    def _rebuild(self) -> None:
        """The live splitter: configured arms whose model is ready, with their weights."""
        from mlplatform.serving.routing import RouterConfig, Splitter

        cfg = self._config
        live = [a for a in cfg.arms if a.model in self._ready and a.weight > 0]
        if not live:
            self._live = None
            return
        self._live = Splitter(RouterConfig(arms=live, sticky_key=cfg.sticky_key,
                                           shadow=cfg.shadow))

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self._probe_all()
            except Exception:   # a probe bug must not stop probing
                logger.exception("Router: probing the arms failed")
            await asyncio.sleep(self._probe_interval_s)   # the probe period

    async def _probe_all(self) -> None:
        refs = [r for r in self._models(self._config) if r in self._servers]
        results = await asyncio.gather(*(self._probe(r) for r in refs))
        changed = False
        for ref, (info, error) in zip(refs, results, strict=True):
            if info is not None:
                changed |= self._ready.get(ref, {}).get("model_version") != info["model_version"]
                if ref not in self._ready:
                    logger.info("Router: %s is ready (version %s)", ref, info["model_version"])
                self._ready[ref] = info
                self._errors.pop(ref, None)
            else:
                if ref in self._ready:
                    logger.error("Router: %s stopped answering, no traffic until it does: %s",
                                 ref, error)
                    changed = True
                elif self._errors.get(ref) != error:
                    logger.error("Router: %s is not ready, it gets no traffic: %s", ref, error)
                self._ready.pop(ref, None)
                self._errors[ref] = error
        if changed or self._live is None:
            self._rebuild()

    async def _probe(self, ref: str) -> tuple[dict[str, Any] | None, str | None]:
        response = self._servers[ref].info.remote()
        try:
            return await asyncio.wait_for(response, self._probe_timeout_s), None
        except asyncio.TimeoutError:
            response.cancel()
            return None, (f"ModelServer for {ref} did not answer within {self._probe_timeout_s}s "
                          "(starting, or failed to load: see `serve status`)")
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    # ---------------------------------------------------------------- requests ------------
    def _arms_for(self, records: list[dict[str, Any]], pin: str | None) -> list[Any]:
        """The arm spec for each record (one choice per request unless a sticky key is set)."""
        if self._live is None:
            raise ArmUnavailable("no arm is ready to serve: " + ("; ".join(
                f"{k}: {v}" for k, v in self._errors.items()) or "models are loading"))
        arms = {a.name: a for a in self._config.arms}
        if pin is not None:
            if pin not in arms:
                raise KeyError(pin)
            if arms[pin].model not in self._ready:
                raise ArmUnavailable(f"arm '{pin}' is not ready: {self._errors.get(arms[pin].model)}")
            return [arms[pin]] * len(records)
        key = self._config.sticky_key
        if key is None:
            return [arms[self._live.choose()]] * len(records)
        return [arms[self._live.choose(None if r.get(key) is None else str(r.get(key)))]
                for r in records]

    async def _route(self, records: list[dict[str, Any]], pin: str | None
                     ) -> tuple[list[Any], dict[str, Any] | None]:
        """(arm per record, None), or ([], the answer for an unknown pinned arm / no arm)."""
        if self._live is None:    # e.g. just started: probe now rather than answer 503
            await self._probe_all()
        try:
            return self._arms_for(records, pin), None
        except KeyError:
            return [], {"rejected": RequestRejected(
                400, f"unknown arm '{pin}' in {PIN_HEADER}",
                _arm_errors(pin, self._config)).to_dict()}
        except ArmUnavailable as exc:
            return [], {"unavailable": str(exc)}

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
                logger.warning("Router: arm %s failed (%s), retrying once", arm.name, exc)
        self._metrics.latency.observe((time.perf_counter() - start) * 1000, tags={"arm": arm.name})
        self._metrics.requests.inc(len(out["scores"]), tags={
            "arm": arm.name, "model_name": out["model_name"],
            "model_version": out["model_version"]})
        for s in out["scores"]:
            self._metrics.scores.observe(s, tags={"arm": arm.name,
                                                  "model_version": out["model_version"]})
        return out

    async def predict(self, features: dict[str, Any], records: list[dict[str, Any]],
                      request_id: str, pin: str | None = None) -> dict[str, Any]:
        """Route, score and decide each record; copy a sample to the shadow model.

        Returns ``{"predictions": [...]}``, or ``{"rejected": {...}}`` for an unknown pinned
        arm, or ``{"unavailable": "..."}`` when no arm can serve (the Ingress answers 503).
        """
        arms, answer = await self._route(records, pin)
        if answer is not None:
            return answer
        matrix, groups = features["matrix"], _by_arm(arms)
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
        if self._live.shadowed(request_id) and self._config.shadow.model in self._ready:
            task = asyncio.get_running_loop().create_task(self._shadow(matrix, predictions))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return {"predictions": predictions}

    async def _shadow(self, matrix: np.ndarray, served: list[dict[str, Any]]) -> None:
        """Score a copy on the shadow model; count disagreements; never reach the caller."""
        model = self._config.shadow.model
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
                      request_id: str, pin: str | None = None) -> dict[str, Any]:
        """SHAP values from the version that the chosen arm serves (same choice as predict)."""
        arms, answer = await self._route(records, pin)
        if answer is not None:
            return answer
        matrix, groups = features["matrix"], _by_arm(arms)
        infos = {name: self._ready[arm.model] for name, (arm, _) in groups.items()}
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
        return {"explanations": out}

    def models(self) -> dict[str, Any]:
        """Arms with their weights, models, loaded versions and readiness (``GET /models``)."""
        cfg = self._config

        def state(ref: str) -> dict[str, Any]:
            info = self._ready.get(ref)
            if info is None:
                return {"ready": False, "error": self._errors.get(ref, "probing")}
            return {"ready": True, "model_name": info["model_name"],
                    "model_version": info["model_version"], "threshold": info["threshold"],
                    "kind": info["kind"]}

        return {"arms": [{"name": a.name, "model": a.model, "weight": a.weight, **state(a.model)}
                         for a in cfg.arms],
                "sticky_key": cfg.sticky_key,
                "shadow": None if cfg.shadow is None else {
                    "model": cfg.shadow.model, "sample": cfg.shadow.sample,
                    **state(cfg.shadow.model)},
                "served_models": sorted(self._servers),
                "config_error": self._config_error,
                "inputs": next(iter(self._ready.values()), {}).get("inputs")}


def _by_arm(arms: list[Any]) -> dict[str, tuple[Any, list[int]]]:
    """Record indices per arm name: ``{name: (arm spec, [i, ...])}`` in first-seen order."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, arm in enumerate(arms):
        groups.setdefault(arm.name, (arm, []))[1].append(i)
    return groups


def _arm_errors(pin: str, config) -> list:
    from mlplatform.serving.schemas import FieldError

    return [FieldError(PIN_HEADER, f"'{pin}' is not an arm; arms: "
                       f"{[a.name for a in config.arms]}", "unknown_arm")]


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


def _token(env_name: str | None) -> str | None:
    value = os.environ.get(env_name) if env_name else None
    return value or None


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return False
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def _error(status: int, error: str, message: str, request_id: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, "errors": [],
                         "request_id": request_id}, status_code=status, headers=headers)


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP: ``POST /predict``, ``POST /explain``, ``GET /models``, ``GET /healthz``.

    Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (the token from the
    ``token_env`` variable) unless auth is off. Pinning an arm with ``X-MLP-Arm`` needs the
    admin token (``admin_token_env``).
    """

    def __init__(self, platform: dict[str, Any], router, max_items: int = 256,
                 max_body_bytes: int = 1_048_576, auth: bool = True,
                 token_env: str = "MLP_SERVE_TOKEN", admin_token_env: str = "MLP_SERVE_ADMIN_TOKEN"):
        self._lookup, self._router = FeatureLookup(platform), router
        self._max_items, self._max_body_bytes = max_items, max_body_bytes
        self._auth = auth
        self._token, self._admin = _token(token_env), _token(admin_token_env)
        if auth and self._token is None:
            raise ValueError(f"auth is on but ${token_env} is not set on this node: set it (e.g. "
                             f"export {token_env}=$(openssl rand -hex 24)) where Ray runs, or "
                             "set args.auth: false for a local demo")
        if not auth:
            logger.warning("Ingress: bearer-token auth is OFF (args.auth: false); anyone who "
                           "reaches this port can score. Use it only for local demos.")
        self._schema = transaction_model()
        from ray.serve import metrics

        self._rejected = metrics.Counter("mlp_serve_rejected", tag_keys=("status",),
                                         description="Requests answered 4xx/5xx by the Ingress.")

    def _check(self, request: Request, request_id: str) -> JSONResponse | None:
        if self._auth and not (_authorized(request, self._token)
                               or _authorized(request, self._admin)):
            self._rejected.inc(tags={"status": "401"})
            return _error(401, "unauthorized", "missing or wrong bearer token: send "
                          "'Authorization: Bearer <token>'", request_id,
                          {"WWW-Authenticate": "Bearer"})
        if request.headers.get(PIN_HEADER) is not None and not _authorized(request, self._admin):
            self._rejected.inc(tags={"status": "403"})
            return _error(403, "forbidden", f"pinning an arm with {PIN_HEADER} needs the admin "
                          "token (admin_token_env)", request_id)
        return None

    async def _routed(self, request: Request, method: str) -> tuple[Any, str, bool]:
        request_id = _request_id(request)
        denied = self._check(request, request_id)
        if denied is not None:
            return denied, request_id, False
        single = False
        try:
            instances, single = parse_body(await request.body(), self._max_items,
                                           self._max_body_bytes)
            records = validate_instances(self._schema, instances, single)
            # The lookup is a blocking read of the online store, kept on the event loop: it
            # takes ~0.1 ms, less than handing it to a thread would.
            features = self._lookup.features(records)
            result = await getattr(self._router, method).remote(
                features, records, request_id, request.headers.get(PIN_HEADER))
            if "rejected" in result:
                raise RequestRejected.from_dict(result["rejected"])
        except RequestRejected as exc:
            self._rejected.inc(tags={"status": str(exc.status)})
            return JSONResponse(exc.body(request_id), status_code=exc.status), request_id, single
        if "unavailable" in result:
            self._rejected.inc(tags={"status": "503"})
            return _error(503, "unavailable", result["unavailable"], request_id,
                          {"Retry-After": "1"}), request_id, single
        return result, request_id, single

    async def _respond(self, request: Request, method: str, key: str) -> JSONResponse:
        """Route through ``Router.<method>``; a single instance is answered flat."""
        result, request_id, single = await self._routed(request, method)
        if isinstance(result, JSONResponse):
            return result
        if single:
            return JSONResponse({**result[key][0], "request_id": request_id})
        return JSONResponse({key: result[key], "request_id": request_id})

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        """Score one raw transaction (a JSON object) or ``{"instances": [...]}``."""
        return await self._respond(request, "predict", "predictions")

    @api.post("/explain")
    async def explain(self, request: Request) -> JSONResponse:
        """SHAP contributions (log-odds) for each transaction, from the arm that serves it."""
        return await self._respond(request, "explain", "explanations")

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Liveness + readiness without auth: 200 when at least one arm can serve."""
        models = await self._router.models.remote()
        ready = [a["name"] for a in models["arms"] if a["ready"] and a["weight"] > 0]
        return JSONResponse({"status": "ok" if ready else "unavailable", "ready_arms": ready},
                            status_code=200 if ready else 503)

    @api.get("/models")
    async def models(self, request: Request) -> JSONResponse:
        """Arms, weights, loaded versions, readiness and the request schema."""
        request_id = _request_id(request)
        denied = self._check(request, request_id)
        if denied is not None:
            return denied
        models = await self._router.models.remote()
        return JSONResponse({**models, "request_fields": list(self._schema.model_fields)})
