"""``mlp cluster validate``, the nodes' environment: what every Ray process on a node will see.

Read from the setup/start commands and docker options of each node type: literal
``NAME=value`` assignments such as the ``export MLP_STORAGE_ROOT=/mnt/mlp`` lines of the cloud
YAMLs' env file. The rules: token auth on and the token shipped, shared storage (and Ray Train's
``storage_path``: ``MLP_CHECKPOINT_STORAGE`` on object storage or the shared root; set
explicitly when GPU workers run on spot/preemptible capacity), an MLflow server and a Redis every
node reaches, the same known ``MLP_*`` settings and the same ``RAY_SERVE_*`` values everywhere,
the price table shipped to every node (``MLP_PRICE_TABLE``), the dashboard on localhost, and,
when the tracking URI points at the head, an ``mlflow server`` started there on a real database
(``--backend-store-uri`` or ``MLFLOW_BACKEND_STORE_URI``, shell variables followed).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlplatform.cluster._launcher_yaml import (
    DATA_RESOURCE,
    as_mapping,
    gpu_count,
    node_types,
    provider_type,
)

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]"})
_ASSIGNMENT = re.compile(r"(?<![\w$-])([A-Z][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|[^\s;&|)]*)")
_MOUNT_WORDS = ("mount", "gcsfuse", "s3fs")
_HOME = re.compile(r"^(\$HOME|\$\{HOME\}|/home/[^/]+|/root)(?=/)")
_HEAD_IP = re.compile(r"\$\{?RAY_HEAD_IP\}?")
#: Ray Serve's settings (e.g. RAY_SERVE_ENABLE_HA_PROXY, RAY_SERVE_THROUGHPUT_OPTIMIZED): the
#: same on every node.
SERVE_PREFIX = "RAY_SERVE_"
#: How the MLflow server is given its database: the flag or the environment variable.
_BACKEND_FLAG = re.compile(r"--backend-store-uri[= ]+(\"[^\"]*\"|'[^']*'|[^\s;&|)]+)")
_BACKEND_ENV = re.compile(r"(?<![\w$-])MLFLOW_BACKEND_STORE_URI=(\"[^\"]*\"|'[^']*'|[^\s;&|)]*)")


def _text(commands: Any) -> str:
    items = commands if isinstance(commands, list) else []
    lines = "\n".join(str(c) for c in items).splitlines()
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in lines)


def _node_text(config: Mapping[str, Any], name: str, is_head: bool) -> str:
    """Every command (and docker option) that runs on a node of this type, as text."""
    node_type, docker = node_types(config).get(name, {}), as_mapping(config.get("docker"))
    init = node_type.get("initialization_commands", config.get("initialization_commands"))
    if is_head:
        parts = [init, config.get("setup_commands"), config.get("head_setup_commands"),
                 config.get("head_start_ray_commands"), docker.get("run_options"),
                 docker.get("head_run_options")]
    else:
        setup = node_type.get("worker_setup_commands")
        if setup is None:
            setup = (config.get("setup_commands") or []) + (config.get("worker_setup_commands") or [])
        node_docker = as_mapping(node_type.get("docker"))
        parts = [init, setup, config.get("worker_start_ray_commands"), docker.get("run_options"),
                 node_docker.get("worker_run_options", docker.get("worker_run_options"))]
    return "\n".join(_text(p) for p in parts)


def _env(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip("\"'") for m in _ASSIGNMENT.finditer(text)}


def environment_problems(config: Mapping[str, Any]) -> list[str]:
    head = str(config.get("head_node_type", ""))
    texts = {n: _node_text(config, n, n == head) for n in node_types(config)}
    envs = {n: _env(t) for n, t in texts.items()}
    found: dict[str, list[str]] = {}  # problem -> node types it applies to
    for name, env in envs.items():
        for problem in _node_env_problems(config, env):
            found.setdefault(problem, []).append(name)
    mlp_keys = {n: {k for k in e if k.startswith("MLP_")} for n, e in envs.items()}
    everywhere = set.union(*mlp_keys.values()) if mlp_keys else set()
    for name, keys in mlp_keys.items():
        if everywhere - keys:
            found.setdefault(f"does not get {sorted(everywhere - keys)}, which other nodes do: "
                             "every node must see the same MLP_* settings", []).append(name)
    problems = []
    for problem, names in found.items():
        who = ("every node type" if len(names) == len(envs) > 1 else
               f"node type{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}")
        problems.append(f"{who}: {problem}")
    return (problems + _serve_problems(envs)
            + _head_command_problems(config, texts.get(head, ""), envs.get(head, {})))


def _serve_problems(envs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Ray Serve's settings must be the same on every node: the controller (head) picks the
    ingress, and every replica (workers) reads the throughput mode when it imports Serve."""
    serve = {n: {k: v for k, v in e.items() if k.startswith(SERVE_PREFIX)}
             for n, e in envs.items()}
    if len({tuple(sorted(s.items())) for s in serve.values()}) <= 1:
        return []
    shown = "; ".join(f"{n!r}: {' '.join(f'{k}={v}' for k, v in sorted(s.items())) or 'none'}"
                      for n, s in serve.items())
    return [f"the node types disagree on Ray Serve's settings ({shown}): the Serve controller "
            "on the head and the replicas on the workers must run the same ingress mode; set "
            "the same RAY_SERVE_* values on every node"]


def _node_env_problems(config: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    from mlplatform.config import ENV_PREFIX, PROCESS_ENV, SERVE_ENV_PREFIX, allowed_keys

    known = sorted({ENV_PREFIX + k.upper() for k in allowed_keys()} | set(PROCESS_ENV))
    problems = _auth_problems(config, env)
    for var in sorted(env):
        if var.startswith(ENV_PREFIX) and var not in known and not var.startswith(SERVE_ENV_PREFIX):
            close = difflib.get_close_matches(var, known, n=1)
            problems.append(f"sets {var}, which mlplatform does not know, so every "
                            "PlatformConfig.load() there would fail"
                            + (f" (did you mean {close[0]}?)" if close else ""))
    problems += _storage_problems(config, env.get("MLP_STORAGE_ROOT"))
    problems += _checkpoint_problems(config, env.get("MLP_CHECKPOINT_STORAGE"))
    problems += _price_table_problems(config, env.get("MLP_PRICE_TABLE"))
    for var in ("MLP_MLFLOW_TRACKING_URI", "MLP_MLFLOW_REGISTRY_URI"):
        problems += _mlflow_problems(var, env.get(var), required=var == "MLP_MLFLOW_TRACKING_URI")
    if env.get("MLP_ONLINE_STORE") != "redis":
        problems.append(f"MLP_ONLINE_STORE is {env.get('MLP_ONLINE_STORE', 'unset (sqlite)')}: "
                        "a SQLite file per node; set MLP_ONLINE_STORE=redis and MLP_REDIS_URL")
    elif (urlparse(env.get("MLP_REDIS_URL", "")).hostname or "localhost") in _LOCAL_HOSTS:
        problems.append(f"MLP_REDIS_URL={env.get('MLP_REDIS_URL', '(unset: localhost)')} is not a "
                        "server the other nodes reach; point it at a shared Redis")
    if env.get("MLP_DATA_PLACEMENT_RESOURCE") != DATA_RESOURCE and any(
            as_mapping(t.get("resources")).get(DATA_RESOURCE) for t in node_types(config).values()):
        problems.append(f"set MLP_DATA_PLACEMENT_RESOURCE={DATA_RESOURCE} so Ray Data tasks stay "
                        "on the CPU workers that advertise it")
    return problems


def _auth_problems(config: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    mode = env.get("RAY_AUTH_MODE")
    if mode != "token":
        state = f"RAY_AUTH_MODE={mode}" if mode else "no RAY_AUTH_MODE"
        return [f"Ray starts with {state}: anyone who reaches the cluster could run code on it; "
                "export RAY_AUTH_MODE=token before `ray start`"]
    if env.get("RAY_AUTH_TOKEN"):
        return []
    token_path = _home(env.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
    if _file_mount_of(config, token_path) is None:
        return [f"token auth is on but nothing puts the token at {token_path}; add a file_mounts "
                "entry for it (the token comes from `ray get-auth-token --generate` on your "
                "laptop, see cluster/README.md)"]
    return []


def _home(path: str) -> str:
    """``$HOME/x``, ``${HOME}/x``, ``/home/<user>/x`` -> ``~/x`` (how file_mounts names it)."""
    return _HOME.sub("~", path)


def _file_mount_of(config: Mapping[str, Any], path: str) -> tuple[str, str] | None:
    """The ``file_mounts`` entry (node path, local path) that puts ``path`` on the nodes."""
    for target, source in as_mapping(config.get("file_mounts")).items():
        target = str(target).rstrip("/")
        if path == target or path.startswith(target + "/"):
            return target, str(source)
    return None


def _mount_points(config: Mapping[str, Any]) -> list[str]:
    docker = as_mapping(config.get("docker"))
    options = " ".join(str(o) for key in ("run_options", "head_run_options", "worker_run_options")
                       for o in docker.get(key) or [])
    points = re.findall(r"(?:-v|--volume)[ =]\S+:(/[^\s:]+)", options)
    commands = [config.get(k) for k in ("initialization_commands", "setup_commands")]
    commands += [t.get("initialization_commands") for t in node_types(config).values()]
    for line in "\n".join(_text(c) for c in commands).splitlines():
        if any(w in line for w in _MOUNT_WORDS):
            points += re.findall(r"(?<=\s)(/[\w./-]+)", line)
    return points


def _storage_problems(config: Mapping[str, Any], root: str | None) -> list[str]:
    from mlplatform.config import PlatformConfig

    if not root:
        return ["MLP_STORAGE_ROOT is not set: Ray Train checkpoints, features and "
                "the prediction log would stay on each node's disk; set it to shared storage"]
    if "://" in root:
        kept = str(PlatformConfig(storage_root=root).storage_root)
        if "://" not in kept:
            return [f"MLP_STORAGE_ROOT={root}: mlplatform's storage_root is a file "
                    f"system path (PlatformConfig turns it into {kept}); mount the bucket or a "
                    "shared file system (EFS/Filestore/NFS) on every node and use the mount point"]
        return []
    return _unshared("MLP_STORAGE_ROOT", root, root, config, "use the shared mount point")


def _unshared(var: str, value: str, path: str, config: Mapping[str, Any], fix: str) -> list[str]:
    """A relative path, or one on no mount of the YAML, is not the same folder on every node."""
    if not path.startswith(("/", "~", "$HOME", "${HOME}")):
        return [f"{var}={value} is relative: each process would resolve it against its own "
                f"working directory; {fix}"]
    if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in _mount_points(config)):
        return [f"{var}={value} is not on anything the YAML mounts (an initialization/setup "
                "command with `mount`, or a docker `-v` run option): a node's own disk is not "
                f"shared, so workers could not read each other's checkpoints; {fix}"]
    return []


def spot_gpu_types(config: Mapping[str, Any]) -> list[str]:
    """Node types with GPUs on spot/preemptible capacity (AWS ``InstanceMarketOptions``, GCP
    ``scheduling.provisioningModel: SPOT`` / ``preemptible``, Azure ``priority: Spot``)."""
    out = []
    for name, node_type in node_types(config).items():
        node_config = as_mapping(node_type.get("node_config"))
        market = as_mapping(node_config.get("InstanceMarketOptions")).get("MarketType", "")
        scheduling = as_mapping(node_config.get("scheduling"))
        azure = as_mapping(node_config.get("azure_arm_parameters"))
        spot = (str(market).lower() == "spot"
                or str(scheduling.get("provisioningModel", "")).upper() == "SPOT"
                or scheduling.get("preemptible") is True
                or str(azure.get("priority", "")).lower() == "spot")
        if spot and gpu_count(node_type) > 0:
            out.append(name)
    return out


def _checkpoint_problems(config: Mapping[str, Any], where: str | None) -> list[str]:
    """Ray Train's ``storage_path``: object storage, or a path on a shared mount. Unset means
    ``<MLP_STORAGE_ROOT>/ray_results`` (checked above), which is allowed only when no GPU worker
    can be reclaimed: a spot GPU worker's replacement must find the checkpoints where the
    cluster YAML says they are (cluster/README.md, "Checkpoints and spot GPUs")."""
    from mlplatform.config import CHECKPOINT_SCHEMES

    if not where:
        spot = spot_gpu_types(config)
        if spot:
            return [f"MLP_CHECKPOINT_STORAGE is not set, but GPU node type(s) {spot} run on "
                    "spot/preemptible capacity: Ray Train resumes a reclaimed worker's run from "
                    "its checkpoints, so put them on object storage, export "
                    "MLP_CHECKPOINT_STORAGE=s3://<bucket>/<prefix> (gs://<bucket>/<prefix> on "
                    "GCP), or on purpose on the shared file system (an absolute path under its "
                    "mount)"]
        return []
    scheme = where.split("://", 1)[0].lower() if "://" in where else ""
    if scheme and scheme != "file":
        if scheme not in CHECKPOINT_SCHEMES:
            return [f"MLP_CHECKPOINT_STORAGE={where}: Ray Train cannot write to '{scheme}://'; "
                    "use s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"]
        return []
    path = where.split("://", 1)[1] if scheme else where
    return _unshared("MLP_CHECKPOINT_STORAGE", where, path, config,
                     "use s3://<bucket>/<prefix>, gs://<bucket>/<prefix> or the shared mount")


def _mlflow_problems(var: str, uri: str | None, required: bool) -> list[str]:
    if not uri:
        return [f"{var} is not set: runs would go to a SQLite file on each node; set "
                f"{var}=http://$RAY_HEAD_IP:5000 (the MLflow server on the head)"] if required else []
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file", "sqlite"):
        kind = "SQLite database" if parsed.scheme == "sqlite" else "local path"
        return [f"{var}={uri} is a {kind} on that node's disk, which workers cannot "
                "share; run `mlflow server` on the head and use http://$RAY_HEAD_IP:5000"]
    if parsed.scheme in ("http", "https") and (parsed.hostname or "") in _LOCAL_HOSTS:
        return [f"{var}={uri} points at the node itself: a worker would look for "
                "MLflow on its own localhost; use the head's address (http://$RAY_HEAD_IP:5000)"]
    return []


def _price_table_problems(config: Mapping[str, Any], where: str | None) -> list[str]:
    """Jobs price their cost with ``MLP_PRICE_TABLE``: it must name a file the nodes get (a
    ``file_mounts`` entry, e.g. this YAML itself, or a file on the shared mount)."""
    if provider_type(config) == "local":
        return []     # your own machines: no list prices to apply
    fix = ("ship the table to every node and name it: file_mounts: {\"~/mlp-cluster\": "
           "\"cluster\"} and export MLP_PRICE_TABLE=\"$HOME/mlp-cluster/<this file>.yaml\" "
           "(its metadata.prices is the table)")
    if not where:
        return ["MLP_PRICE_TABLE is not set: jobs there would be costed at mlplatform's "
                f"built-in prices, not this YAML's metadata.prices; {fix}"]
    path = _home(where)
    mounted = _file_mount_of(config, path)
    if mounted is None:
        if any(path.startswith(p.rstrip("/") + "/") for p in _mount_points(config)):
            return []      # put on the shared file system by hand
        return [f"MLP_PRICE_TABLE={where}: nothing puts a file there (no file_mounts entry, not "
                f"on a shared mount), so every job would fail to price its cost; {fix}"]
    target, source = mounted
    local = Path(source).expanduser() / Path(path).relative_to(target)
    if local.is_file():   # resolvable from here (ray up resolves it from its working directory)
        from mlplatform.cluster.cost import PriceTable, load_price_table

        try:
            table = load_price_table(local)
        except ValueError as exc:   # ConfigError
            return [f"MLP_PRICE_TABLE={where} gets {source} (file_mounts), which is not a price "
                    f"table: {exc}"]
        own = as_mapping(config.get("metadata")).get("prices")
        if isinstance(own, Mapping):
            try:
                mine = PriceTable.from_mapping(own, "metadata.prices")
            except ValueError:
                return []     # reported by the price rule
            if (table.cpu_hour, dict(table.gpu_hour)) != (mine.cpu_hour, dict(mine.gpu_hour)):
                return [f"MLP_PRICE_TABLE={where} gets {source} (file_mounts), whose prices "
                        "differ from this YAML's metadata.prices: ship this file itself"]
    return []


def _resolve(value: str, text: str, depth: int = 3) -> str | None:
    """``value`` with one ``$name`` / ``${name}`` reference followed to its last assignment in
    ``text`` (any case: ``db_uri=...``); None when it comes from a command or is unknown."""
    value = value.strip("\"'")
    ref = re.fullmatch(r"\$\{?([A-Za-z_]\w*)\}?", value)
    if ref is None:
        return None if value.startswith(("$(", "`")) or "$" in value else value
    found = re.findall(rf"(?<![\w$-]){ref.group(1)}=(\"[^\"]*\"|'[^']*'|[^\s;&|)]*)", text)
    if not found or depth == 0:
        return None
    return _resolve(found[-1], text, depth - 1)


def _head_command_problems(config: Mapping[str, Any], head_text: str,
                           head_env: Mapping[str, str]) -> list[str]:
    problems = []
    host = re.search(r"--dashboard-host[= ]+[\"']?([^\s\"';]+)", head_text)
    if host and host.group(1) not in ("127.0.0.1", "localhost"):
        problems.append(f"the head starts the dashboard with --dashboard-host={host.group(1)}: "
                        "bind it to 127.0.0.1 and reach it with `ray dashboard <yaml>`")
    start = _text(config.get("head_start_ray_commands"))
    servers = re.findall(r"\bmlflow\s+server\b", start)
    uri = head_env.get("MLP_MLFLOW_TRACKING_URI", "")
    if _HEAD_IP.search(uri) and not servers:
        problems.append(f"MLP_MLFLOW_TRACKING_URI={uri} points at the head, but "
                        "head_start_ray_commands start no `mlflow server`: start it there (with "
                        "a PostgreSQL backend and object-store artifacts, see "
                        "cluster/aws-gpu.yaml) or point the URI at an MLflow server elsewhere")
    if not servers:
        return problems
    backends = [m.group(1) for m in _BACKEND_FLAG.finditer(start)]
    backends += [m.group(1) for m in _BACKEND_ENV.finditer(head_text)]
    if not backends:
        problems.append("the MLflow server on the head has no backend store (--backend-store-uri "
                        "or MLFLOW_BACKEND_STORE_URI): it would keep runs in a local file store "
                        "on the head's disk; give it a PostgreSQL database (RDS/Cloud SQL)")
    for raw in backends:
        uri = _resolve(raw, head_text)
        if uri is not None and urlparse(uri).scheme in ("", "file", "sqlite"):
            problems.append(f"the MLflow server on the head stores runs in {uri}: use a database "
                            "server (PostgreSQL, e.g. RDS/Cloud SQL) that outlives the head")
    return problems
