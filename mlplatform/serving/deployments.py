"""Ray Serve deployments of a project's app::

    Ingress (HTTP: auth, limits, validation of the project's request schema, request ids;
             FeatureLookup in-process: the online store by the request's entity keys, then the
             project's model inputs;
             Dispatcher in-process: chooses the arm with the Router's route table)
      -> ModelServer-<model> (one per served model: registry load, @serve.batch, alias reload)
    and /explain: Ingress -> Explainer (SHAP for the version that the chosen arm serves).
    Router (off the request path): routing config from its Serve ``user_config``, probes of
    the arms, the route table every Ingress replica follows.

The feature lookup runs inside the Ingress replica rather than as a deployment of its own: it
is one read of the shared online store (SQLite file or Redis, ~0.1 ms), and a deployment hop
costs more than that (~1 ms of Serve RPC on a small machine). It scales with the Ingress.

The arm choice runs there too (:mod:`mlplatform.serving.dispatch`): the Router deployment is
the control plane only, so a request crosses one Serve hop (Ingress -> ModelServer), not two.

This module holds the Ingress (and the lookup it runs); the others live in
:mod:`mlplatform.serving.router`, :mod:`mlplatform.serving.dispatch` and
:mod:`mlplatform.serving.model_server` (``ModelServer``, ``Explainer``);
:func:`mlplatform.serving.app.build_app` wires them.

Resource figures (CPUs, replicas, autoscaling, backpressure) come from the Serve YAML, not from
decorators. The Router reads its routing config only from ``user_config``, so ``serve deploy``
with new weights or arms reconfigures the running replicas: nothing restarts, no request fails.
"""


import hmac
import logging
import os
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from mlplatform.serving.answers import Answers
from mlplatform.serving.batching import AdaptiveBatch, split_rows
from mlplatform.serving.dispatch import CALLS_IN_FLIGHT, PIN_HEADER, Dispatcher, Unavailable
from mlplatform.serving.schemas import RequestRejected, parse_body, validate_instances

logger = logging.getLogger("ray.serve")
api = FastAPI(title="mlplatform", description="A project's models on Ray Serve, from MLflow.")


# Module-level helpers are defined above the deployments: Serve pickles a deployment class
# when it is decorated, so the helpers its methods call must already exist then.
def _request_id(request: Request) -> str:
    """Serve's id for this request: the caller's X-Request-ID if sent, else one Serve generated.

    Serve also returns it as the ``x-request-id`` response header, so body and header agree.
    """
    from ray.serve.context import _get_serve_request_context

    return (_get_serve_request_context().request_id or request.headers.get("x-request-id")
            or uuid.uuid4().hex)



class FeatureLookup:
    """A project's model inputs for request records: online features + its transformation.

    Used in-process by the Ingress (see the module docstring). For a feature-store project the
    features its model inputs read are looked up by the request's entity keys, as of the
    request's time field (default: now); an entity the online store does not know (nothing
    stored, or older than the view's TTL) is scored with missing features and named in the
    answer's ``unknown_entities``. A tabular project's inputs come from the request alone.

    :meth:`lookup` batches adaptively: the requests that reach it together (up to
    ``max_batch_size``) share one online-store read and one transform; a lone request is looked
    up at once. It never waits for more requests to come (the batch window is 0).
    """

    def __init__(self, platform: dict[str, Any], project: Any, max_batch_size: int = 32):
        from mlplatform.config import PlatformConfig
        from mlplatform.project import feature_names, model_inputs

        self._inputs = model_inputs(project)
        self._refs = list(project.features)
        self._timestamp = project.request.timestamp
        self._store = None
        self._entity_views: dict[str, list[str]] = {}
        if self._refs:
            from mlplatform.features import FeatureStore

            self._store = FeatureStore(PlatformConfig(**platform), project)
            repo = project.feature_repo
            views = list(repo.resolve(self._refs))
            for view in views:
                for entity in repo.view(view).entities:
                    self._entity_views.setdefault(entity, []).append(view)
        self._names = feature_names(project)
        self._batch = AdaptiveBatch(self.features, self._features_many, max_batch_size, 0.0,
                                    coalesce=True)

    def features(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"matrix": model inputs (rows x columns), "unknown": [[entity, ...] per row]}``."""
        if self._timestamp is not None:
            from datetime import datetime, timezone

            now = datetime.now(timezone.utc)
            ts = self._timestamp
            records = [r if r.get(ts) is not None else {**r, ts: now} for r in records]
        if self._store is None:
            return {"matrix": self._inputs.matrix(self._inputs.batch_from_records(records)),
                    "unknown": [[] for _ in records]}
        as_of = ([r[self._timestamp] for r in records] if self._timestamp is not None
                 else _now())
        looked_up, found = self._store.lookup_online(records, self._refs, as_of=as_of)
        unknown = [[entity for entity, views in self._entity_views.items()
                    if not any(found[v][i] for v in views)] for i in range(len(records))]
        return {"matrix": self._inputs.matrix(self._inputs.batch_from_records(records,
                                                                              looked_up)),
                "unknown": unknown}

    async def lookup(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """:meth:`features`, batched with the concurrent requests of this replica."""
        return await self._batch(records)

    def _features_many(self, requests: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        sizes = [len(r) for r in requests]
        out = self.features([r for records in requests for r in records])
        return [{"matrix": m, "unknown": u} for m, u in zip(
            split_rows(out["matrix"], sizes), split_rows(out["unknown"], sizes), strict=True)]


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _route_path(scope: dict[str, Any]) -> str:
    """The request's path below the app's route prefix (``root_path``), as Starlette routes."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


class PredictFastPath:
    """ASGI middleware of the Ingress's FastAPI app: ``POST /predict`` goes straight to the
    replica's :meth:`Ingress.predict`; every other request goes through FastAPI as before.

    It sits inside FastAPI's ``ServerErrorMiddleware`` (an unexpected exception is still a
    logged 500) and skips the rest: route matching, dependency solving, the exception and
    exit-stack middlewares. Measured on 2 cores under load (HAProxy + throughput mode, c=32)
    that is ~8% of the Ingress's CPU per request; ``/predict`` keeps its OpenAPI route, and its
    handler returns its own 4xx JSON for every bad request, so nothing else changes.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and _route_path(scope) == "/predict"):
            from ray import serve

            ingress = serve.get_replica_context().servable_object
            response = await ingress.predict(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


api.add_middleware(PredictFastPath)


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

    async def __init__(self, platform: dict[str, Any], project: Any, router,
                       servers: dict[str, Any], explainer, max_items: int = 256,
                       max_body_bytes: int = 1_048_576, auth: bool = True,
                       token_env: str = "MLP_SERVE_TOKEN",
                       admin_token_env: str = "MLP_SERVE_ADMIN_TOKEN",
                       embed: dict[str, Any] | None = None, max_batch_size: int = 32,
                       calls_in_flight: int = CALLS_IN_FLIGHT, by_reference: bool = False):
        from mlplatform.project import request_model

        self._lookup = FeatureLookup(platform, project, max_batch_size)
        self._dispatch = Dispatcher(router, servers, explainer, max_batch_size, calls_in_flight,
                                    by_reference, Answers.for_project(project))
        if embed is not None:   # args.embed_models: the models live in this replica
            from mlplatform.config import PlatformConfig
            from mlplatform.registry import ModelRegistry

            self._dispatch.embed(ModelRegistry(PlatformConfig(**platform)), **embed,
                                 columns=project.input_columns, task=project.task.type)
        self._dispatch.start()
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
        self._schema = request_model(project.request, f"{project.name}_request")
        self._project_name = project.name
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
            # takes ~0.1 ms, less than handing it to a thread would. Concurrent requests share
            # one read (~0.04 ms per request row in a batch of 32).
            features = await self._lookup.lookup(records)
            result = await getattr(self._dispatch, method)(
                features, records, request_id, request.headers.get(PIN_HEADER))
        except RequestRejected as exc:
            self._rejected.inc(tags={"status": str(exc.status)})
            return JSONResponse(exc.body(request_id), status_code=exc.status), request_id, single
        except Unavailable as exc:
            self._rejected.inc(tags={"status": "503"})
            return _error(503, "unavailable", str(exc), request_id,
                          {"Retry-After": "1"}), request_id, single
        return result, request_id, single

    async def _respond(self, request: Request, method: str, key: str) -> JSONResponse:
        """Route through ``Dispatcher.<method>``; a single instance is answered flat."""
        result, request_id, single = await self._routed(request, method)
        if isinstance(result, JSONResponse):
            return result
        if single:
            return JSONResponse({**result[0], "request_id": request_id})
        return JSONResponse({key: result, "request_id": request_id})

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Any ``user_config`` change (``mlp serve reload`` sends ``{reload: <token>}``)
        re-resolves the embedded models' aliases now (nothing when models are not embedded)."""
        await self._dispatch.reload()

    async def reload_models(self) -> dict[str, Any]:
        """Re-resolve the embedded models now: ``{ref: ServedModel.reload() result}``."""
        return await self._dispatch.reload()

    async def routes_view(self) -> dict[str, Any]:
        """What this replica routes with (``GET /models`` without HTTP; for deploy/reload)."""
        return await self._dispatch.view()

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        """Answer one request of the project's schema (a JSON object) or
        ``{"instances": [...]}``."""
        return await self._respond(request, "predict", "predictions")

    @api.post("/explain")
    async def explain(self, request: Request) -> JSONResponse:
        """SHAP contributions for each request row, from the arm that serves it."""
        return await self._respond(request, "explain", "explanations")

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Liveness + readiness without auth: 200 when at least one arm can serve."""
        try:
            models = await self._dispatch.view()
        except Exception as exc:   # no route table yet and the Router unreachable
            return JSONResponse({"status": "unavailable", "ready_arms": [],
                                 "error": f"no route table: {exc}"}, status_code=503)
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
        models = await self._dispatch.view()
        return JSONResponse({**models, "project": self._project_name,
                             "request_fields": list(self._schema.model_fields)})
