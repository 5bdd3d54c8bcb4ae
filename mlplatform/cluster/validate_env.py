"""``mlp cluster validate``, the nodes' environment: what every Ray process on a node will see.

Read from the setup/start commands and docker options of each node type: literal
``NAME=value`` assignments such as the ``export MLP_STORAGE_ROOT=/mnt/mlp`` lines of the cloud
YAMLs' env file. The rules: token auth on and the token shipped, shared storage (and Ray Train's
``storage_path``: ``MLP_CHECKPOINT_STORAGE`` on object storage or the shared root), an MLflow
server and a Redis every node reaches, the same known ``MLP_*`` settings everywhere, the
dashboard on localhost and the MLflow server on a real database.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from mlplatform.cluster._launcher_yaml import DATA_RESOURCE, as_mapping, node_types

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]"})
_ASSIGNMENT = re.compile(r"(?<![\w$-])([A-Z][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|[^\s;&|)]*)")
_MOUNT_WORDS = ("mount", "gcsfuse", "s3fs")


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
    return problems + _head_command_problems(texts.get(head, ""))


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
    targets = [str(t).rstrip("/") for t in as_mapping(config.get("file_mounts"))]
    token_path = env.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
    token_path = re.sub(r"^(\$HOME|\$\{HOME\}|/home/[^/]+|/root)(?=/)", "~", token_path)
    if not any(token_path == t or token_path.startswith(t + "/") for t in targets):
        return [f"token auth is on but nothing puts the token at {token_path}; add a file_mounts "
                "entry for it (the token comes from `ray get-auth-token --generate` on your "
                "laptop, see cluster/README.md)"]
    return []


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


def _checkpoint_problems(config: Mapping[str, Any], where: str | None) -> list[str]:
    """Ray Train's ``storage_path``: unset means ``<MLP_STORAGE_ROOT>/ray_results`` (checked
    above); set, it must be object storage or a path on a shared mount."""
    from mlplatform.config import CHECKPOINT_SCHEMES

    if not where:
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


def _head_command_problems(head_text: str) -> list[str]:
    problems = []
    host = re.search(r"--dashboard-host[= ]+[\"']?([^\s\"';]+)", head_text)
    if host and host.group(1) not in ("127.0.0.1", "localhost"):
        problems.append(f"the head starts the dashboard with --dashboard-host={host.group(1)}: "
                        "bind it to 127.0.0.1 and reach it with `ray dashboard <yaml>`")
    backend = re.search(r"--backend-store-uri[= ]+[\"']?([^\s\"';]+)", head_text)
    if backend and urlparse(backend.group(1)).scheme in ("", "file", "sqlite"):
        problems.append(f"the MLflow server on the head stores runs in {backend.group(1)}: use "
                        "a database server (PostgreSQL, e.g. RDS/Cloud SQL) that outlives the head")
    return problems
