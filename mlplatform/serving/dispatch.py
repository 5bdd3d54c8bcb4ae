"""The data plane of the traffic split, run inside each Ingress replica.

:class:`Dispatcher` keeps a copy of the Router's route table (a long poll on
:meth:`Router.routes <mlplatform.serving.router.Router.routes>` in the background), chooses the
arm of each request locally, calls that arm's ModelServer (one Serve hop; under load the
concurrent requests of a replica share calls, see :func:`_coalesced`), copies a sample to the
shadow model, and records the per-arm Prometheus metrics. A request thus crosses
``Ingress -> ModelServer`` and nothing else; the Router only publishes config and readiness.
With ``args.embed_models`` the models live in the Ingress replica itself
(:class:`~mlplatform.serving.served_model.ServedModel`) and a request crosses no Serve hop.
"""

import asyncio
import logging
import time
from typing import Any

import numpy as np

from mlplatform.registry.registry import parse_model_ref
from mlplatform.serving.answers import Answers, disagrees, score_of
from mlplatform.serving.batching import AdaptiveBatch, split_rows
from mlplatform.serving.schemas import FieldError, RequestRejected

logger = logging.getLogger("ray.serve")

#: Header that pins a request to an arm (needs the admin token).
PIN_HEADER = "x-mlp-arm"
#: Latency buckets (ms) and score buckets of the per-arm histograms.
LATENCY_BUCKETS_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500]
SCORE_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
#: Seconds between two tries to reach the Router after a failed long poll.
_RESYNC_S = 1.0
#: Default of ``args.model_calls_in_flight``: calls in flight from one Ingress replica to one
#: ModelServer deployment, batches of coalesced requests included (concurrent requests beyond
#: wait and go together in the next call). Measured on 2 cores (HAProxy + throughput mode,
#: c=32): the composed app's rps goes from ~725 (one call per request) to ~1,450-1,530 with 4-16
#: calls in flight; 1 gives ~520 (the calls queue behind each other). It also caps what the
#: ModelServer's autoscaler sees: one Ingress replica keeps at most ``calls_in_flight /
#: target_ongoing_requests`` ModelServer replicas busy (8 / 4 = the shipped serve configs' max_replicas).
CALLS_IN_FLIGHT = 8
#: Seconds between two flushes of a :class:`SummedCounter` (per-request counts summed here).
COUNT_FLUSH_S = 1.0


def model_handle(handle: Any, by_reference: bool = False) -> Any:
    """``handle`` (a ModelServer's or the Explainer's) with the transport of its calls.

    ``by_reference=False`` (the default, ``args.model_calls_by_reference``): Serve's gRPC
    channel between replicas, arguments and results inline. ``True``: Ray actor tasks,
    arguments and results through the object store (for inputs of several MB).

    Set here, explicitly: a handle passed to a deployment's constructor keeps the transport
    default of the process that built the app, so ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (whose
    defaults include gRPC) never reaches the Ingress's ModelServer calls by itself. Measured on
    2 cores (HAProxy + throughput mode, c=32, 2 Ingress replicas): gRPC ~940-1,060 rps and ~980
    us of Ingress CPU per request, actor tasks ~680-820 rps and ~1,220-1,470 us.
    """
    return handle.options(_by_reference=by_reference)


class SummedCounter:
    """A Ray metrics counter whose increments are summed in-process and added to it once per
    ``flush_s`` per tag set, instead of one Ray record per request.

    A Ray metric record costs a Serve replica ~4 us in a tight loop and, by py-spy's share of
    the Ingress's samples under load (2 cores, HAProxy + throughput mode, c=32), ~15-20 us
    per record in the request path; summing turns one record per request into one per second.
    Ray exports every 10 s anyway, so summing for a second changes no Prometheus reading; a
    replica that dies loses at most ``flush_s`` of counts. Call :meth:`inc` from the replica's
    event loop.
    """

    def __init__(self, counter: Any, flush_s: float = COUNT_FLUSH_S):
        self._counter, self._flush_s = counter, flush_s
        self._pending: dict[tuple[tuple[str, str], ...], float] = {}
        self._flusher: asyncio.Task | None = None

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = tuple(tags.items()) if tags else ()
        self._pending[key] = self._pending.get(key, 0.0) + value
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())

    def flush(self) -> None:
        """Add what was summed since the last flush to the Ray counter (one record per tags)."""
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            self._counter.inc(value, tags=dict(key))

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)   # the flush period, not a readiness wait
            self.flush()


class _ArmMetrics:
    """Per-arm Prometheus metrics (Ray Serve's metrics API; exported as ``ray_<name>``).

    ``requests`` is summed in-process (:class:`SummedCounter`, flushed every second); the rest
    is recorded as it happens (the histograms need every value; errors and shadow copies are
    rare)."""

    def __init__(self):
        from ray.serve import metrics

        self.requests = SummedCounter(metrics.Counter(
            "mlp_serve_requests", description="Predictions served, per arm and model version.",
            tag_keys=("arm", "model_name", "model_version")))
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


def _coalesced(remote: Any, max_batch_size: int,
               calls_in_flight: int = CALLS_IN_FLIGHT) -> AdaptiveBatch:
    """``remote`` (a ModelServer's ``predict``) called once for the concurrent requests of this
    replica: a request alone is sent at once; under load, the requests waiting for a call slot
    (at most ``calls_in_flight`` calls in flight) go together in one call of up to
    ``max_batch_size`` requests, their rows stacked. Each caller gets its own rows' scores."""

    async def many(matrices: list[np.ndarray]) -> list[dict[str, Any]]:
        out = await remote(np.vstack(matrices))
        return [{**out, "scores": part}
                for part in split_rows(out["scores"], [len(m) for m in matrices])]

    return AdaptiveBatch(remote, many, max_batch_size, 0.0,
                         max_concurrent_batches=calls_in_flight)


class Unavailable(Exception):
    """No arm can serve this request now (answered 503 with Retry-After)."""


class Dispatcher:
    """Routes requests to the arms' models with the Router's route table.

    Args:
        router: Handle of the Router deployment (the control plane).
        servers: Model reference -> ModelServer handle (empty when the models are embedded).
        explainer: Handle of the Explainer deployment.
        max_batch_size: Most requests coalesced into one ModelServer call.
        calls_in_flight: Most calls in flight to one ModelServer deployment.
        by_reference: Call the ModelServers and the Explainer as Ray actor tasks instead of
            over Serve's gRPC channel (see :func:`model_handle`).
        answers: Builds the project's answers (default: binary, no id field).
    """

    def __init__(self, router: Any, servers: dict[str, Any], explainer: Any,
                 max_batch_size: int = 32, calls_in_flight: int = CALLS_IN_FLIGHT,
                 by_reference: bool = False, answers: Answers | None = None):
        self._router, self._explainer = router, model_handle(explainer, by_reference)
        self._answers = answers or Answers()
        # ref -> the coroutine function that scores a matrix there (a Serve call or in-process)
        self._predict: dict[str, Any] = {
            ref: _coalesced(model_handle(h, by_reference).predict.remote, max_batch_size,
                            calls_in_flight)
            for ref, h in servers.items()}
        self._embedded: dict[str, Any] | None = None     # ref -> ServedModel, when embedded
        self._load_errors: dict[str, str] = {}
        self._router_data: dict[str, Any] | None = None  # the last table the Router published
        self._table = None            # RouteTable, once the Router answered
        self._metrics = _ArmMetrics()
        self._background: set[asyncio.Task] = set()
        self._sync_task: asyncio.Task | None = None
        self._refresh_lock = asyncio.Lock()

    # ---------------------------------------------------------------- embedded models -----
    def embed(self, registry: Any, refs: list[str], max_batch_size: int,
              batch_wait_timeout_s: float, reload_interval_s: float,
              columns: list[str] | None = None, task: str | None = None) -> None:
        """Load ``refs`` here, in this process (``args.embed_models``): no Serve hop per request.

        Each model already loaded once while the app was built (``app.check_loads``: one that
        cannot load fails the deploy, in ``serve status``). One that still fails here (the
        registry or the artifact store unreachable from this replica) is logged with its reason,
        shown in ``GET /models`` and gets no traffic; it is tried again at every reload (poll or
        ``mlp serve reload``), so the replica heals when the store is back.
        """
        self._embedded = {}
        self._embed_args = (registry, max_batch_size, batch_wait_timeout_s, reload_interval_s,
                            columns, task)
        for ref in refs:
            self._register(ref, self._make(ref))
        if reload_interval_s > 0 and self._load_errors:
            task = asyncio.get_running_loop().create_task(self._retry_loads(reload_interval_s))
            self._background.add(task)

    def _make(self, ref: str) -> Any:
        """Load ``ref`` (blocking: run it in a thread once serving); None if it failed."""
        from mlplatform.serving.served_model import ServedModel

        registry, max_batch_size, batch_wait_timeout_s, _, columns, task = self._embed_args
        try:
            return ServedModel(registry, ref, columns, task, max_batch_size,
                               batch_wait_timeout_s, on_change=lambda info: self._retable())
        except Exception as exc:
            self._load_errors[ref] = f"{ref} failed to load: {type(exc).__name__}: {exc}"
            logger.error("Ingress: %s; it gets no traffic", self._load_errors[ref])
            return None

    def _register(self, ref: str, model: Any) -> None:
        if model is None:
            return
        self._load_errors.pop(ref, None)
        self._embedded[ref], self._predict[ref] = model, model.predict
        model.start_polling(self._embed_args[3])

    async def _retry_loads(self, interval_s: float) -> None:
        while self._load_errors:
            await asyncio.sleep(interval_s)   # the reload period, not a readiness wait
            await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Re-resolve every embedded model now, and retry those that failed to load."""
        if self._embedded is None:
            return {}
        for ref in list(self._load_errors):
            self._register(ref, await asyncio.to_thread(self._make, ref))
        out = {ref: await m.reload() for ref, m in self._embedded.items()}
        self._retable()
        return out

    # ---------------------------------------------------------------- the route table -----
    def start(self) -> None:
        """Start following the Router's table (call from the replica's event loop)."""
        if self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._follow())

    def _take(self, data: dict[str, Any]) -> None:
        if self._router_data is None or data["version"] != self._router_data["version"]:
            self._router_data = data
            self._retable()

    def _retable(self) -> None:
        """Rebuild the table from the Router's; embedded models overlay their own readiness."""
        from mlplatform.serving.routing import RouteTable

        data = self._router_data
        if data is None:
            return
        if self._embedded is not None:
            data = {**data, "ready": {r: m.info() for r, m in self._embedded.items()},
                    "errors": {**data["errors"], **self._load_errors}}
        self._table = RouteTable.from_dict(data)

    async def _follow(self) -> None:
        """Long-poll the Router for new table versions for as long as the replica lives; on
        an error (e.g. the Router replica being replaced) keep the last table and retry."""
        while True:
            since = -1 if self._router_data is None else self._router_data["version"]
            try:
                self._take(await self._router.routes.remote(since))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Ingress: the Router did not answer (%s); routing on table "
                               "version %s", exc, since)
                await asyncio.sleep(_RESYNC_S)   # back-off before the next try, not a wait

    async def _current(self):
        """The table to route with; asks the Router at once when there is none yet or no arm is
        ready (e.g. just started), instead of answering 503 until the next push."""
        table = self._table
        if table is None or table.splitter is None:
            async with self._refresh_lock:
                if self._table is table:   # nobody refreshed it meanwhile
                    self._take(await self._router.routes.remote(-1, 0.0, True))
            table = self._table
        return table

    async def view(self) -> dict[str, Any]:
        """``GET /models``: the table this replica routes with."""
        view = (await self._current()).view()
        view["embedded"] = self._embedded is not None
        view["load_errors"] = dict(self._load_errors)   # embedded models that did not load
        return view

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
        predict = self._predict[arm.model]
        start = time.perf_counter()
        for attempt in (1, 2):
            try:
                out = await predict(matrix)
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
        task = out.get("task")
        if task != "regression":
            for s in out["scores"]:
                self._metrics.scores.observe(score_of(s, task), tags={
                    "arm": arm.name, "model_version": out["model_version"]})
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
        unknown = features["unknown"]
        for (arm, idx), out in zip(groups.values(), outs, strict=True):
            for i, value in zip(idx, out["scores"], strict=True):
                predictions[i] = self._answers.row(records[i], value, out, arm.name, unknown[i])
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
            out = await self._predict[model](matrix)
        except Exception as exc:
            self._metrics.shadow_requests.inc(len(served), tags={"model": model,
                                                                 "outcome": "error"})
            logger.warning("shadow %s failed (the caller was answered already): %s", model, exc)
            return
        self._metrics.shadow_requests.inc(len(served), tags={"model": model, "outcome": "ok"})
        for pred, value in zip(served, out["scores"], strict=True):
            if disagrees(pred, value, out, self._answers):
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
                answer = self._answers.row(records[i], row["prediction"], info, name,
                                           features["unknown"][i])
                out[i] = {**answer, "method": result["method"], "output": result["output"],
                          **({"explained": row["explained"]} if "explained" in row else {}),
                          "base_value": row.get("base_value", result["base_value"]),
                          "margin": row["margin"], "contributions": row["contributions"],
                          "additivity_error": row["additivity_error"],
                          "additivity_ok": row["additivity_error"] <= result["tolerance"]}
        return out
