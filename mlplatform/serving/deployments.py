"""Ray Serve deployments: ``Ingress`` (HTTP, request ids) -> ``ModelServer``.

A request carries a raw transaction. ``ModelServer`` validates it, looks up the entities'
features in the online store (by ``user_id``, ``merchant_id`` and their combinations with the
country/device), derives the model inputs with the same ``model_inputs`` the training set used,
and scores with ``@serve.batch``. Resource figures come from the Serve YAML, not decorators.
Issue #6 splits the lookup into a FeatureLookup deployment and adds the weighted Router.
"""


import logging
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from mlplatform.serving.schemas import (
    RequestRejected,
    parse_body,
    transaction_model,
    validate_instances,
)

logger = logging.getLogger("ray.serve")
api = FastAPI(title="mlplatform", description="Fraud scoring on Ray Serve, models from MLflow.")


# Defined above the deployments: Serve pickles a deployment class when it is decorated,
# so module-level helpers its methods call must already exist then.
def _request_id(request: Request) -> str:
    """Serve's id for this request: the caller's X-Request-ID if sent, else one Serve generated.

    Serve also returns it as the ``x-request-id`` response header, so body and header agree.
    """
    from ray.serve.context import _get_serve_request_context

    return (_get_serve_request_context().request_id or request.headers.get("x-request-id")
            or uuid.uuid4().hex)


def _features_for(store, records: list[dict[str, Any]]) -> tuple[np.ndarray, list[bool]]:
    """Online lookup + on-demand transformation: the model's input matrix for ``records``.

    Unknown users (nothing in the online store, or older than the view's TTL) are scored with
    default features and flagged.
    """
    from datetime import datetime, timezone

    import pandas as pd

    from mlplatform.features import VIEW_FEATURES, model_inputs

    now = datetime.now(timezone.utc)
    for r in records:
        r["event_timestamp"] = r["event_timestamp"] or now
    times = [r["event_timestamp"] for r in records]
    looked_up = store.get_online_features(records, VIEW_FEATURES, as_of=times)
    frame = pd.DataFrame(records)
    for name in VIEW_FEATURES:
        frame[name] = pd.to_numeric(pd.Series(looked_up[name], dtype=object), errors="coerce")
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    unknown = [v is None for v in looked_up["user_last_event_at"]]
    return model_inputs(frame).to_numpy(dtype=np.float64), unknown


def _audit_deploy(registry, version, model_ref: str) -> None:
    """Record in the audit trail that this replica serves ``version`` (a replica that cannot
    write the trail still serves, and says so in its log)."""
    try:
        ctx = serve.get_replica_context()
        target = f"serve:{ctx.app_name}/{ctx.deployment}#{ctx.replica_id.unique_id}"
    except Exception:   # outside a replica (tests calling the class directly)
        target = "serve:local"
    try:
        registry.record_deploy(version.name, version.version, f"{target} ({model_ref})")
    except Exception as exc:
        logger.warning("could not record the deploy of %s in the audit trail: %s", version.uri, exc)


@serve.deployment
class ModelServer:
    """Serves one registered model version (``models:/<name>@<alias>`` resolved at start)."""

    def __init__(self, model_ref: str, platform: dict[str, Any], max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.005):
        from mlplatform.config import PlatformConfig
        from mlplatform.features import FEATURE_COLUMNS, FeatureStore
        from mlplatform.registry import ModelRegistry, load_model

        config = PlatformConfig(**platform)
        registry = ModelRegistry(config)
        self._model = load_model(registry, model_ref)
        self._columns = self._model.feature_names
        if self._columns != FEATURE_COLUMNS:
            raise ValueError(f"model {model_ref} takes inputs {self._columns}, but the platform's "
                             f"model_inputs() produces {FEATURE_COLUMNS}; retrain it on a "
                             "training set from mlplatform.features.build_training_set")
        _audit_deploy(registry, self._model.version, model_ref)
        self._store = FeatureStore(config)
        self._schema = transaction_model()
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._ref = model_ref
        logger.info("ModelServer loaded %s as %s", model_ref, self._model.version.uri)

    def info(self) -> dict[str, Any]:
        """What is loaded: name, version, reference and the request schema."""
        mv = self._model.version
        return {"model_ref": self._ref, "model_name": mv.name, "model_version": mv.version,
                "run_id": mv.run_id, "inputs": self._model.inputs,
                "request_fields": list(self._schema.model_fields)}

    async def predict(self, instances: list[Any], single: bool) -> dict[str, Any]:
        """Validate raw transactions, look up their features online, and score them.

        A bad request is an answer, not a failure: it comes back as ``{"rejected": {...}}``
        so Serve neither logs a traceback nor counts a replica error for a client's mistake.
        """
        try:
            records = validate_instances(self._schema, instances, single)
        except RequestRejected as exc:
            return {"rejected": exc.to_dict()}
        matrix, unknown_user = _features_for(self._store, records)
        scores = await self._score_batch(matrix)
        mv = self._model.version
        return {"predictions": [
                    {"transaction_id": r["transaction_id"], "score": s, "unknown_user": u}
                    for r, s, u in zip(records, scores, unknown_user, strict=True)],
                "model_name": mv.name, "model_version": mv.version}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score_batch(self, matrices: list[np.ndarray]) -> list[list[float]]:
        # One model call (XGBoost or torch) for every request that arrived within the window.
        import pandas as pd

        sizes = [len(m) for m in matrices]
        scores = self._model.predict(pd.DataFrame(np.vstack(matrices), columns=self._columns))
        out, start = [], 0
        for n in sizes:
            out.append([float(s) for s in scores[start:start + n]])
            start += n
        return out


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP entry point: ``POST /predict``, ``GET /healthz``, ``GET /models``."""

    def __init__(self, model_server, max_items: int = 256, max_body_bytes: int = 1_048_576):
        self._server = model_server
        self._max_items, self._max_body_bytes = max_items, max_body_bytes

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        """Score one raw transaction (a JSON object) or ``{"instances": [...]}``."""
        request_id = _request_id(request)
        try:
            instances, single = parse_body(await request.body(), self._max_items,
                                           self._max_body_bytes)
            result = await self._server.predict.remote(instances, single)
            if "rejected" in result:
                raise RequestRejected.from_dict(result["rejected"])
        except RequestRejected as exc:
            return JSONResponse(exc.body(request_id), status_code=exc.status)
        meta = {"model_name": result["model_name"], "model_version": result["model_version"],
                "request_id": request_id}
        if single:
            return JSONResponse({**result["predictions"][0], **meta})
        return JSONResponse({"predictions": result["predictions"], **meta})

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        info = await self._server.info.remote()
        return {"status": "ok", "model_name": info["model_name"],
                "model_version": info["model_version"]}

    @api.get("/models")
    async def models(self) -> dict[str, Any]:
        return {"models": [await self._server.info.remote()]}

