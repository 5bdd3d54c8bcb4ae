"""The Serve application: ``build_app(args)`` for ``serve run`` / ``serve deploy``, and
``deploy()`` to run the same YAML from Python (the demo and the tests use it).

Example Serve YAML (``serve_configs/fraud.yaml``)::

    applications:
      - name: fraud
        import_path: mlplatform.serving.app:build_app
        args: {model: "fraud@champion"}
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError

DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "fraud.yaml"


class AppArgs(BaseModel):
    """``args:`` of the Serve application (in the Serve YAML)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="fraud@champion",
                       description="Registered model to serve: 'name@alias' or 'name/version'.")
    platform_config: str | None = Field(
        default=None, description="PlatformConfig YAML file (else $MLP_CONFIG / MLP_* / defaults).")
    platform: dict[str, Any] = Field(
        default_factory=dict, description="PlatformConfig overrides, e.g. {storage_root: /data}.")
    max_items: PositiveInt = Field(default=256, description="Most instances in one request.")
    max_body_bytes: PositiveInt = Field(default=1_048_576, description="Largest body (413 above).")
    max_batch_size: PositiveInt = Field(default=32,
                                        description="Requests scored together by @serve.batch.")
    batch_wait_timeout_s: NonNegativeFloat = Field(
        default=0.005, description="How long @serve.batch waits to fill a batch.")


def build_app(args: Mapping[str, Any] | None = None):
    """Build the Serve application graph ``Ingress -> ModelServer``.

    The model reference is resolved here, so a missing model fails the deploy with a clear
    message instead of starting replicas that cannot load.

    Raises:
        ConfigError: Unknown or invalid ``args``.
        ModelNotFound: The model reference does not resolve in the registry.
    """
    from mlplatform.registry import ModelRegistry
    from mlplatform.serving.deployments import Ingress, ModelServer

    try:
        a = AppArgs(**dict(args or {}))
    except ValidationError as exc:
        raise ConfigError("invalid Serve application args: " + "; ".join(
            f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
            + f". Allowed args: {', '.join(AppArgs.model_fields)}.") from None
    platform = PlatformConfig.load(a.platform_config, overrides=a.platform)
    ModelRegistry(platform).resolve(a.model)
    server = ModelServer.bind(a.model, platform.model_dump(mode="json"), a.max_batch_size,
                              a.batch_wait_timeout_s)
    return Ingress.bind(server, a.max_items, a.max_body_bytes)


def deploy(
    config_path: str | Path = DEFAULT_SERVE_CONFIG,
    args_overrides: Mapping[str, Any] | None = None,
    http_port: int | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Deploy a Serve YAML on the connected Ray cluster, as ``serve deploy`` would, and wait.

    Args:
        config_path: Serve config file (``ServeDeploySchema``).
        args_overrides: Merged into every application's ``args`` (e.g. ``{"platform":
            {"storage_root": "/abs/path"}}``).
        http_port: Override ``http_options.port``.
        timeout_s: How long to wait for every application to be RUNNING.

    Returns:
        The base URL of the HTTP proxy, e.g. ``http://127.0.0.1:8000``.

    Raises:
        RuntimeError: An application failed to deploy (the message holds Serve's reason) or did
            not become RUNNING in time.
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(config_path).read_text())
    for app in raw.get("applications", []):
        app["args"] = {**(app.get("args") or {}), **dict(args_overrides or {})}
    if http_port is not None:
        raw.setdefault("http_options", {})["port"] = http_port
    schema = ServeDeploySchema.model_validate(raw)
    serve.start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    _get_global_client().deploy_apps(schema)
    wait_until_running([a.name for a in schema.applications], timeout_s)
    host = schema.http_options.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{schema.http_options.port}"


def wait_until_running(app_names: list[str], timeout_s: float) -> None:
    """Block until every named Serve application is RUNNING; raise if one fails or time runs out."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in app_names}
        failed = {n: apps[n].message for n, s in states.items() if s == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError("Serve deploy failed: " + "; ".join(
                f"{n}: {m}" for n, m in failed.items()))
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve applications not RUNNING after {timeout_s}s: {states}")
        time.sleep(0.5)  # polling interval of the wait-for-condition loop
