"""The Serve application of a project: ``build_app(args)`` for ``serve run`` / ``serve
deploy``, and ``deploy()`` to run the same YAML from Python (the demo and the tests use it).

Example Serve YAML (``serve_configs/`` holds full ones)::

    applications:
      - name: churn
        import_path: mlplatform.serving.app:build_app
        args: {project: projects/churn, model: "churn@champion"}

``args.project`` is the project folder: its request schema is what the app validates, its
feature views what it looks up, and its model-inputs function what turns a request into the
model's inputs. A relative path is relative to the working directory of the process that
builds the app; :func:`deploy` and ``mlp serve deploy`` make it absolute first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError, config_error


class AppArgs(BaseModel):
    """``args:`` of the Serve application (in the Serve YAML)."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(
        default=None, description="The project folder (or its mlplatform.yaml): the request "
        "schema, the features looked up and the model inputs. Default: the platform config's "
        "project, $MLP_PROJECT, else ./mlplatform.yaml.")
    model: str | None = Field(default=None,
                              description="The model served when 'models' is not given "
                              "(default: '<project name>@champion').")
    models: list[str] | None = Field(
        default=None, description="Models to serve, one ModelServer deployment each "
        "('name@alias' or 'name/version'); the Router's arms and shadow choose among them.")
    platform_config: str | None = Field(
        default=None, description="PlatformConfig YAML file (else $MLP_CONFIG / MLP_* / defaults).")
    platform: dict[str, Any] = Field(
        default_factory=dict, description="PlatformConfig overrides, e.g. {storage_root: /data}.")
    max_items: PositiveInt = Field(default=256, description="Most instances in one request.")
    max_body_bytes: PositiveInt = Field(default=1_048_576, description="Largest body (413 above).")
    max_batch_size: PositiveInt = Field(
        default=32, description="Requests scored together by @serve.batch (also: looked up "
        "together in the online store, and sent together in one ModelServer call).")
    model_calls_in_flight: PositiveInt = Field(
        default=8, description="Most calls in flight from one Ingress replica to one "
        "ModelServer deployment (the requests waiting for one go together in the next call). "
        "A ModelServer's autoscaler sees these calls: keep it >= max_replicas x "
        "target_ongoing_requests / Ingress replicas, or max_replicas is never reached.")
    model_calls_by_reference: bool = Field(
        default=False, description="Call the ModelServers (and the Explainer) as Ray actor "
        "tasks, arguments and results through the object store, instead of over Serve's gRPC "
        "channel between replicas (arguments inline; ~25% less Ingress CPU per request in "
        "benchmarks/serving.py). Set true for inputs of several MB per call.")
    batch_wait_timeout_s: NonNegativeFloat = Field(
        default=0.005, description="How long @serve.batch waits to fill a batch.")
    reload_interval_s: NonNegativeFloat = Field(
        default=30.0, description="How often an alias is re-resolved (0: only on mlp serve reload).")
    embed_models: bool = Field(
        default=False, description="Load the models inside each Ingress replica and score "
        "in-process (no Serve hop per request; no ModelServer deployments): the fastest for "
        "small CPU models such as a tree ensemble. Keep false for GPU or large models, or to "
        "scale and isolate models apart from the Ingress.")
    auth: bool = Field(default=True, description="Bearer-token auth on every route but /healthz.")
    token_env: str = Field(default="MLP_SERVE_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$",
                           description="Environment variable holding the bearer token.")
    admin_token_env: str = Field(
        default="MLP_SERVE_ADMIN_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the token that may pin arms (X-MLP-Arm).")

    @property
    def served(self) -> list[str]:
        """The model references served: ``models``, else ``model``, else the project's
        ``<name>@champion``."""
        if self.models:
            return list(dict.fromkeys(self.models))
        return [self.model or f"{project_name(self.project)}@champion"]


def project_path(project: str | None) -> str | None:
    """The project a Serve app uses, as a path: ``args.project``, else ``$MLP_PROJECT``, else
    None (the loader then looks for ``./mlplatform.yaml``).

    A relative path is taken from the working directory of the process that builds the app
    (Serve's ``runtime_env.working_dir`` when the YAML sets one); where nothing is there, from
    the checkout mlplatform runs from (the shipped ``examples/``)."""
    import os

    project = project or os.environ.get("MLP_PROJECT") or None
    if project is None or Path(project).expanduser().is_absolute() or Path(project).exists():
        return project
    checkout = Path(__file__).resolve().parents[2] / project
    return str(checkout) if checkout.exists() else project


def project_name(project: str | None) -> str:
    """The name in a project file (read without loading its code).

    Raises:
        ConfigError: There is no project file, or it names no project.
    """
    from mlplatform.errors import ProjectError
    from mlplatform.project import find_project_file

    try:
        file = find_project_file(project_path(project))
        name = (yaml.safe_load(file.read_text()) or {}).get("name")
    except (ProjectError, yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"Serve application args.project: {exc}") from None
    if not isinstance(name, str):
        raise ConfigError(f"project file {file} names no project (its `name` key)")
    return name


def load_app_project(args: AppArgs):
    """The app's project, loaded and checked.

    Raises:
        ConfigError: The project cannot be found or is invalid (naming the file and key).
    """
    from mlplatform.errors import ProjectError
    from mlplatform.project import load_project

    try:
        return load_project(project_path(args.project))
    except ProjectError as exc:
        raise ConfigError(f"Serve application args.project: {exc}") from None


def server_name(model_ref: str) -> str:
    """The ModelServer deployment name of a model: ``churn@champion`` ->
    ``ModelServer-churn-champion``, ``churn/3`` -> ``ModelServer-churn-v3``."""
    from mlplatform.registry.registry import parse_model_ref

    name, alias, version = parse_model_ref(model_ref)
    return f"ModelServer-{name}-{alias if alias is not None else 'v' + str(version)}"


def default_router_config(models: list[str]) -> dict[str, Any]:
    """All traffic to the first served model (when the YAML sets no Router user_config)."""
    from mlplatform.registry.registry import parse_model_ref

    _, alias, version = parse_model_ref(models[0])
    return {"arms": [{"name": alias or f"v{version}", "model": models[0], "weight": 100}]}


def _app_args(args: Mapping[str, Any] | None) -> AppArgs:
    try:
        a = AppArgs(**dict(args or {}))
    except ValidationError as exc:
        raise config_error("Serve application args", exc, AppArgs) from None
    try:
        for ref in a.served:
            server_name(ref)
    except ValueError as exc:
        raise ConfigError(f"invalid Serve application args: {exc}") from None
    return a


def build_app(args: Mapping[str, Any] | None = None):
    """Build ``Ingress (+ FeatureLookup, arm choice) -> ModelServer-<model>`` (+ ``Explainer``),
    with the ``Router`` deployment publishing the route table the Ingress replicas follow.

    With ``embed_models`` the models are loaded in the Ingress replicas instead:
    ``Ingress (+ FeatureLookup, arm choice, models)``.

    Every served model is resolved here, so a missing model fails the deploy with a clear
    message instead of starting replicas that cannot load; an embedded one is also loaded once
    here (:func:`check_loads`).

    Raises:
        ConfigError: Unknown or invalid ``args``, an invalid project, auth on without a token,
            a served model that is not the project's (other inputs or task), or an embedded
            model that cannot load.
        ModelNotFound: A model reference does not resolve in the registry.
    """
    import logging
    import os

    from mlplatform.registry import ModelRegistry
    from mlplatform.serving.deployments import Ingress
    from mlplatform.serving.model_server import Explainer, ModelServer
    from mlplatform.serving.router import Router

    a = _app_args(args)
    project = load_app_project(a)
    if a.auth and not os.environ.get(a.token_env):
        raise ConfigError(f"auth is on but ${a.token_env} is not set where the app is built: "
                          f"export {a.token_env}=<token> before `ray start` / `serve run` (e.g. "
                          f"$(openssl rand -hex 24)), or set args.auth: false for a local demo")
    if not a.auth:
        logging.getLogger("ray.serve").warning(
            "Serve app built with auth: false — every route is open. Local demos only.")
    platform = PlatformConfig.load(a.platform_config, overrides=a.platform)
    registry = ModelRegistry(platform)
    for ref in a.served:
        registry.resolve(ref)
    plat = platform.model_dump(mode="json")
    default = default_router_config(a.served)
    if a.embed_models:
        for ref in a.served:
            check_loads(registry, ref, project)
        embed = {"refs": a.served, "max_batch_size": a.max_batch_size,
                 "batch_wait_timeout_s": a.batch_wait_timeout_s,
                 "reload_interval_s": a.reload_interval_s}
        router = Router.options(user_config=default).bind(None, default, a.served)
        return Ingress.bind(plat, project, router, {}, Explainer.bind(plat), a.max_items,
                            a.max_body_bytes, a.auth, a.token_env, a.admin_token_env, embed,
                            a.max_batch_size, by_reference=a.model_calls_by_reference)
    servers = {ref: ModelServer.options(name=server_name(ref)).bind(
        ref, plat, project.input_columns, project.task.type, a.max_batch_size,
        a.batch_wait_timeout_s, a.reload_interval_s)
        for ref in a.served}
    router = Router.options(user_config=default).bind(servers, default, a.served)
    return Ingress.bind(plat, project, router, servers, Explainer.bind(plat), a.max_items,
                        a.max_body_bytes, a.auth, a.token_env, a.admin_token_env, None,
                        a.max_batch_size, a.model_calls_in_flight, a.model_calls_by_reference)


def check_loads(registry: Any, ref: str, project: Any) -> None:
    """Load ``ref`` once where the app is built (``args.embed_models``), and throw it away.

    An embedded model lives inside the Ingress replicas, so no deployment of its own could
    report in ``serve status`` that it cannot load. Loading it while the app is built makes a
    model that cannot load fail the deploy instead: ``serve status`` shows the application
    ``DEPLOY_FAILED`` with this message, and an app already running keeps its previous config
    (Serve applies nothing of a build that failed), so the model never gets traffic.

    Raises:
        ConfigError: Naming the model, why it cannot load, and what to do.
    """
    from mlplatform.serving.served_model import _load

    try:
        _load(registry, ref, project.input_columns, project.task.type)
    except Exception as exc:
        raise ConfigError(
            f"embedded model {ref} cannot load, so this app is not deployed (a running app "
            f"keeps its previous config): {type(exc).__name__}: {exc}. Fix the model or its "
            "alias in the registry, or remove it from args.models and the Router's arms"
        ) from None


def check_serve_config(raw: Mapping[str, Any]) -> None:
    """Validate what Serve cannot: our app args and each Router ``user_config`` (weights,
    names, and that every arm's and the shadow's model is in ``args.models``).

    Raises:
        ConfigError: Naming the application, the key and the fix; nothing is deployed.
    """
    from mlplatform.serving.routing import RouterConfig

    for app in raw.get("applications") or []:
        if app.get("import_path") != "mlplatform.serving.app:build_app":
            continue
        where = f"application '{app.get('name', 'default')}'"
        args = _app_args(app.get("args"))
        for dep in app.get("deployments") or []:
            if dep.get("name") != "Router" or dep.get("user_config") is None:
                continue
            try:
                cfg = RouterConfig.from_user_config(dep["user_config"])
            except ConfigError as exc:
                raise ConfigError(f"{where}, deployment Router: {exc}") from None
            refs = [x.model for x in cfg.arms] + ([cfg.shadow.model] if cfg.shadow else [])
            missing = [r for r in refs if r not in args.served]
            if missing:
                raise ConfigError(f"{where}: the Router routes to {missing}, which no ModelServer "
                                  f"serves; add them to args.models (now {args.served})")
            if cfg.sticky_key is not None:
                fields = load_app_project(args).request.fields
                if cfg.sticky_key not in fields:
                    raise ConfigError(f"{where}, deployment Router: sticky_key "
                                      f"{cfg.sticky_key!r} is not a request field of the "
                                      f"project (fields: {list(fields)})")
        names = ({"Ingress", "Router", "Explainer"} if args.embed_models
                 else {server_name(r) for r in args.served} | {"Ingress", "Router", "Explainer"})
        unknown = [d.get("name") for d in app.get("deployments") or []
                   if d.get("name") not in names]
        if unknown:
            hint = (" (the feature lookup runs inside the Ingress replicas: size the Ingress "
                    "instead)" if "FeatureLookup" in unknown else
                    " (with embed_models the models run inside the Ingress replicas: size the "
                    "Ingress instead)" if args.embed_models and any(
                        str(u).startswith("ModelServer-") for u in unknown) else "")
            raise ConfigError(f"{where}: deployments {unknown} do not exist in this app; "
                              f"its deployments are {sorted(names)}{hint}")
        for problem in autoscaling_problems(app, args):
            logging.getLogger(__name__).warning("%s: %s", where, problem)


def most_replicas(deployment: Mapping[str, Any]) -> int | str:
    """The replicas a deployment of a Serve config can have: its autoscaling ``max_replicas``,
    else its ``num_replicas`` (1 when unset; ``"auto"`` when Serve sizes it)."""
    auto = deployment.get("autoscaling_config") or {}
    return auto.get("max_replicas", deployment.get("num_replicas", 1))


def autoscaling_problems(app: Mapping[str, Any], args: AppArgs) -> list[str]:
    """ModelServer ``max_replicas`` that autoscaling can never reach: a ModelServer's ongoing
    requests are the Ingress's calls, at most ``args.model_calls_in_flight`` per Ingress
    replica, so it scales to at most ``calls x Ingress replicas / target_ongoing_requests``."""
    if args.embed_models:
        return []
    deps = {d.get("name"): d for d in app.get("deployments") or []}
    ingress_max = most_replicas(deps.get("Ingress") or {})
    if not isinstance(ingress_max, int):      # num_replicas: auto, Serve sizes the Ingress
        return []
    out = []
    for ref in args.served:
        auto = (deps.get(server_name(ref)) or {}).get("autoscaling_config")
        if not isinstance(auto, Mapping):
            continue
        most, target = auto.get("max_replicas", 1), auto.get("target_ongoing_requests", 2)
        reachable = args.model_calls_in_flight * ingress_max / target
        if reachable < most:
            out.append(
                f"{server_name(ref)} has max_replicas {most} but can reach only "
                f"{reachable:g}: {ingress_max} Ingress replica(s) x args.model_calls_in_flight "
                f"{args.model_calls_in_flight} calls / target_ongoing_requests {target}. Raise "
                f"args.model_calls_in_flight to {-(-most * target // ingress_max)} (or the Ingress "
                "replicas), or lower max_replicas.")
    return out


def deploy(
    config_path: str | Path,
    args_overrides: Mapping[str, Any] | None = None,
    http_port: int | None = None,
    router_config: Mapping[str, Any] | None = None,
    controller_env: Mapping[str, str] | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Deploy a Serve YAML on the connected Ray cluster, as ``serve deploy`` would, and wait.

    Args:
        config_path: Serve config file (``ServeDeploySchema``).
        args_overrides: Merged into every application's ``args`` (e.g. ``{"platform":
            {"storage_root": "/abs/path"}}``). When it sets ``models``, the YAML's options for
            ModelServers of models no longer served are dropped.
        http_port: Override ``http_options.port``.
        router_config: Replaces the Router's ``user_config`` (arms, weights, sticky, shadow).
        controller_env: Environment of the Serve controller when this call starts Serve, e.g.
            :func:`mlplatform.serving.haproxy.haproxy_env` for the HAProxy ingress.
        timeout_s: How long to wait for every application to be RUNNING.

    Returns:
        The base URL of the HTTP proxy, e.g. ``http://127.0.0.1:8000``.

    Raises:
        ConfigError: The app args or a Router ``user_config`` are invalid (nothing deployed).
        RuntimeError: An application failed to deploy (the message holds Serve's reason) or did
            not become RUNNING in time.
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(config_path).read_text())
    for app in raw.get("applications", []):
        app["args"] = {**(app.get("args") or {}), **dict(args_overrides or {})}
        absolute_project(app, Path(config_path).resolve().parent)
        if {"model", "models", "embed_models"} & set(args_overrides or {}):
            # Other models were asked for: drop the YAML's options for ModelServers of models
            # no longer served (Serve refuses options for deployments that do not exist).
            served_args = _app_args(app["args"])
            served = (set() if served_args.embed_models
                      else {server_name(r) for r in served_args.served})
            app["deployments"] = [d for d in app.get("deployments") or [] if not (
                d.get("name", "").startswith("ModelServer-") and d["name"] not in served)]
        if router_config is not None:
            deployments = [d for d in app.get("deployments") or [] if d.get("name") != "Router"]
            router = next((d for d in app.get("deployments") or []
                           if d.get("name") == "Router"), {"name": "Router"})
            app["deployments"] = [*deployments, {**router, "user_config": dict(router_config)}]
    if http_port is not None:
        raw.setdefault("http_options", {})["port"] = http_port
    check_serve_config(raw)
    schema = ServeDeploySchema.model_validate(raw)
    serve.start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                controller_options=({"runtime_env": {"env_vars": dict(controller_env)}}
                                    if controller_env else None))
    _get_global_client().deploy_apps(schema)
    wait_until_running([a.name for a in schema.applications], timeout_s)
    for app in schema.applications:
        if app.import_path == "mlplatform.serving.app:build_app":
            wait_until_routable(app.name, timeout_s)
    host = schema.http_options.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{schema.http_options.port}"


def absolute_project(app: dict[str, Any], base: Path | None = None) -> None:
    """Make an application's relative ``args.project`` absolute, so the Serve build task finds
    it wherever it runs: relative to ``base`` (the Serve YAML's folder) when a project is
    there, else to this process's working directory."""
    args = app.get("args") or {}
    if app.get("import_path") != "mlplatform.serving.app:build_app" or not args.get("project"):
        return
    p = Path(args["project"]).expanduser()
    if p.is_absolute():
        return
    for candidate in ([base / p] if base is not None else []) + [p]:
        if (candidate / "mlplatform.yaml").is_file() or (
                candidate.is_file() and candidate.suffix in (".yaml", ".yml")):
            app["args"] = {**args, "project": str(candidate.resolve())}
            return


def wait_until_routable(app_name: str, timeout_s: float) -> dict[str, Any]:
    """Block until the app routes: an Ingress replica holds a route table in which every arm
    with weight > 0 has a ready model (RUNNING means every replica started; the Router still
    has to probe its arms, or the Ingress to load its embedded models)."""
    from ray import serve

    ingress = serve.get_deployment_handle("Ingress", app_name)
    deadline = time.monotonic() + timeout_s
    while True:
        view = ingress.routes_view.remote().result()
        waiting = {a["name"]: a.get("error") for a in view["arms"]
                   if a["weight"] > 0 and not a["ready"]}
        if not waiting:
            return view
        failed = {a["name"]: view["load_errors"][a["model"]] for a in view["arms"]
                  if a["name"] in waiting and a["model"] in view.get("load_errors", {})}
        if failed:   # an embedded model that failed to load: waiting will not fix it
            raise RuntimeError(f"arms whose model failed to load (they get no traffic; fix "
                               f"the model or set their weight to 0): {failed}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"arms not ready after {timeout_s}s: {waiting}")
        time.sleep(0.5)   # polling interval of the wait-for-condition loop


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


def reload_models(app_name: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Make every ModelServer of ``app_name`` re-resolve its alias now (``mlp serve reload``).

    It sends the running config back to Serve with a new ``user_config: {reload: <token>}`` on
    each ModelServer deployment: Serve calls ``reconfigure`` on every replica (nothing
    restarts), and a replica whose alias moved loads the new version and swaps it in.

    With ``embed_models`` the same goes to the Ingress deployment, whose replicas hold the
    models.

    Returns:
        The Ingress's view afterwards (``GET /models``): arms with their loaded versions.

    Raises:
        RuntimeError: No such application, or it was not deployed from a config
            (``serve run``/``serve deploy``/:func:`deploy`).
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema, ServeInstanceDetails

    client = _get_global_client()
    details = ServeInstanceDetails(**client.get_serve_details())
    if app_name not in details.applications:
        raise RuntimeError(f"no Serve application '{app_name}'; running: "
                           f"{sorted(details.applications)}")
    configs = []
    for name, app in details.applications.items():
        if app.deployed_app_config is None:
            raise RuntimeError(f"application '{name}' was not deployed from a config; "
                               "redeploy it with serve deploy / serve run <yaml>")
        configs.append(app.deployed_app_config.model_dump(exclude_unset=True))
    token = f"{time.time():.6f}"
    target = next(c for c in configs if c["name"] == app_name)
    servers = [d for d in details.applications[app_name].deployments if
               d.startswith("ModelServer-")]
    # No ModelServer deployments: the models are embedded in the Ingress replicas.
    reloaded = servers or ["Ingress"]
    overrides = {d["name"]: d for d in target.get("deployments", [])}
    for name in reloaded:
        overrides.setdefault(name, {"name": name})["user_config"] = {"reload": token}
    target["deployments"] = list(overrides.values())
    schema = ServeDeploySchema(
        proxy_location=details.proxy_location,
        http_options=details.http_options.model_dump(exclude_unset=True),
        applications=configs)
    client.deploy_apps(schema)
    wait_until_running([app_name], timeout_s)
    # What each alias resolves to now (a reload call is idempotent: a replica that already
    # reloaded answers with the same version).
    expected = {}
    for name in servers:
        out = serve.get_deployment_handle(name, app_name).reload.remote().result()
        expected[out["model_ref"]] = out["to_version"]
    ingress = serve.get_deployment_handle("Ingress", app_name)
    if not servers:
        for out in ingress.reload_models.remote().result().values():
            expected[out["model_ref"]] = out["to_version"]
    deadline = time.monotonic() + timeout_s
    while True:   # the Ingress sees the new versions once the Router probed the arms again
        view = ingress.routes_view.remote().result()
        loaded = {a["model"]: a.get("model_version") for a in view["arms"]}
        if all(loaded.get(ref, v) == v for ref, v in expected.items()):
            return view
        if time.monotonic() > deadline:
            raise RuntimeError(f"models not reloaded after {timeout_s}s: serving {loaded}, "
                               f"registry says {expected}")
        time.sleep(0.5)   # polling interval of the wait-for-condition loop
