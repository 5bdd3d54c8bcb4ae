"""``Router``: splits traffic over the arms of its ``user_config`` (weights, sticky key, shadow),
routes only to arms whose ModelServer answers, records the per-arm metrics, and picks the
version ``/explain`` explains."""

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from mlplatform.registry.registry import parse_model_ref
from mlplatform.serving.schemas import (
    RequestRejected,
)

logger = logging.getLogger("ray.serve")

#: Header that pins a request to an arm (needs the admin token).
PIN_HEADER = "x-mlp-arm"
#: Latency buckets (ms) and score buckets of the per-arm histograms.
LATENCY_BUCKETS_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500]
SCORE_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


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



class ArmUnavailable(Exception):
    """No arm can take the request (none ready, or the pinned one is not)."""



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
