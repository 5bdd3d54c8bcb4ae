"""A fake autoscaling cluster on this machine: ``mlp cluster up-local`` / ``down-local``.

``up_local`` does what the header of ``cluster/local-fake.yaml`` shows by hand
(``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``), but on free ports, in its own
Ray temp dir and with token auth on, so it never meets another Ray on the machine. Ray's
``fake_multinode`` provider then starts and stops worker "nodes" (raylets on this machine) as
work asks for them: a task or Train worker that needs a ``GPU`` brings up a ``gpu_worker``, which
goes away again after ``idle_timeout_minutes``.

``down_local`` stops exactly that cluster: every process that names its temp dir (the head's
and every fake worker's) and their children. It does not call ``ray stop``, which kills every
Ray process on the machine, other users' clusters included.

Example:
    >>> from mlplatform.cluster.local import down_local, up_local
    >>> cluster = up_local()            # doctest: +SKIP
    >>> import ray; ray.init(address=cluster.address)   # doctest: +SKIP
    >>> down_local()                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mlplatform._ray import CPU_NODE_RESOURCE
from mlplatform.errors import MLPlatformError

DEFAULT_CONFIG = Path("cluster/local-fake.yaml")
#: Where up-local records the running cluster, so down-local (any shell, any directory) finds it.
DEFAULT_STATE_DIR = Path("~/.mlplatform/local-cluster")
STATE_FILE = "state.json"
#: The only head node type the fake provider knows (it tags the head with this fixed name).
FAKE_HEAD_NODE_TYPE = "ray.head.default"
#: Ray's message when a starting raylet missed its (fixed, 30 s) window to register.
RAYLET_STARTUP_TIMEOUT = "timed out during startup"
STARTUP_ATTEMPTS = 2
#: Settings for the head's processes (the autoscaler, and job drivers, which inherit them).
HEAD_ENV = {
    "RAY_FAKE_CLUSTER": "1",       # the fake_multinode provider refuses to start without it
    "RAY_AUTH_MODE": "token",      # token auth stays on, as on the cloud clusters
    # The autoscaler acts every second instead of every 5: workers appear and idle ones go
    # sooner, which is the point of a demo cluster.
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    # Ray Data tasks ask for a share of `cpu_node`, which only CPU workers have (PlatformConfig).
    "MLP_DATA_PLACEMENT_RESOURCE": CPU_NODE_RESOURCE,
}


class ClusterError(MLPlatformError):
    """The local cluster could not be started or stopped; the message says what to do."""


@dataclass
class LocalCluster:
    """A running local fake cluster, as recorded in the state file."""

    address: str            #: GCS address for ``ray.init(address=...)`` and ``ray status``
    dashboard_url: str      #: for ``ray job submit --address`` (bound to 127.0.0.1)
    temp_dir: str           #: Ray's ``--temp-dir``: every process of the cluster names it
    config: str             #: the copy of the YAML the autoscaler reads (with the GCS address)
    source_config: str      #: the YAML it was started from
    head_pids: list[int] = field(default_factory=list)
    started_at: float = 0.0

    @property
    def logs_dir(self) -> Path:
        return Path(self.temp_dir) / "session_latest" / "logs"


def up_local(config: Path = DEFAULT_CONFIG, *, port: int | None = None,
             dashboard_port: int | None = None, state_dir: Path | None = None,
             timeout_s: float = 180.0, echo: Callable[[str], object] = print) -> LocalCluster:
    """Start a Ray head whose autoscaler runs ``config`` on the fake multinode provider.

    Returns once the head is up and every node type's ``min_workers`` are running, then prints
    the address, the dashboard, how to submit a job and the node status.

    Args:
        config: A ``provider: {type: fake_multinode}`` launcher YAML.
        port: GCS port (default: a free one). ``dashboard_port`` likewise.
        state_dir: Where the state file and the autoscaler's copy of the YAML go
            (default ``~/.mlplatform/local-cluster``).
        timeout_s: How long to wait for the head and the minimum workers.
        echo: Where progress and the summary are written.

    Raises:
        ClusterError: The YAML is not a fake-multinode config Ray accepts, a local cluster is
            already running, or the cluster did not come up in time (it is stopped again).
    """
    state_dir = _state_dir(state_dir)
    existing = _read_state(state_dir)
    if existing is not None:
        if _cluster_processes(existing.temp_dir):
            raise ClusterError(f"a local cluster is already running at {existing.address} (from "
                               f"{existing.source_config}); stop it with `mlp cluster down-local`")
        _forget(state_dir, existing)       # left over from a cluster that is gone
    cfg = _load_fake_config(Path(config))
    state_dir.mkdir(parents=True, exist_ok=True)
    ensure_auth_token(echo)
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            cluster, status = _start(cfg, Path(config), state_dir, port, dashboard_port,
                                     timeout_s, echo)
            break
        except ClusterError as exc:
            # Ray gives a starting raylet a fixed 30 s to register; a busy machine can miss it.
            if RAYLET_STARTUP_TIMEOUT not in str(exc) or attempt == STARTUP_ATTEMPTS:
                raise
            echo(f"The head did not register in time (machine busy?); retrying ({attempt + 1}/"
                 f"{STARTUP_ATTEMPTS}) ...")
    echo(_summary(cluster, status, state_dir))
    return cluster


def down_local(state_dir: Path | None = None, *, timeout_s: float = 60.0,
               echo: Callable[[str], object] = print) -> bool:
    """Stop the cluster ``up_local`` started: the head, every fake worker, all their workers.

    Returns:
        True if a cluster was recorded (and is now stopped); False if there was none.

    Raises:
        ClusterError: Some of its processes survived SIGKILL (their pids are named).
    """
    state_dir = _state_dir(state_dir)
    cluster = _read_state(state_dir)
    if cluster is None:
        echo(f"No local cluster is running (no {state_dir / STATE_FILE}).")
        return False
    stopped = _stop(state_dir, cluster, timeout_s=timeout_s)
    echo(f"Stopped the local cluster at {cluster.address}: {stopped['raylets']} node(s) "
         f"(head + fake workers), {stopped['processes']} process(es).")
    return True


def cluster_processes(cluster: LocalCluster):
    """Live processes of ``cluster`` (for checks that nothing is left): see :func:`down_local`."""
    return _cluster_processes(cluster.temp_dir)


# ---------------------------------------------------------------------------------- helpers --
def _load_fake_config(path: Path) -> dict:
    from ray.autoscaler._private.util import validate_config

    if not path.is_file():
        raise ClusterError(f"cluster config {path} does not exist; pass --config "
                           f"{DEFAULT_CONFIG} (run from the project root) or another YAML")
    cfg = yaml.safe_load(path.read_text()) or {}
    provider = (cfg.get("provider") or {}).get("type")
    if provider != "fake_multinode":
        raise ClusterError(f"{path}: provider.type is {provider!r}; up-local runs only "
                           "`fake_multinode` configs (use `ray up` for cloud YAMLs)")
    if cfg.get("head_node_type") != FAKE_HEAD_NODE_TYPE:
        raise ClusterError(f"{path}: head_node_type must be {FAKE_HEAD_NODE_TYPE!r} on the fake "
                           "provider (it tags the head with that name; any other makes the "
                           "autoscaler launch extra 'head' nodes)")
    try:
        validate_config(cfg)
    except Exception as exc:   # jsonschema.ValidationError, ValueError, RuntimeError
        raise ClusterError(f"{path} fails Ray's cluster config validation: "
                           f"{str(exc).splitlines()[0]}") from None
    return cfg


def ensure_auth_token(echo: Callable[[str], object] = print) -> None:
    """Make sure Ray finds an auth token: ``ray start`` with token auth refuses to start
    without one (it never generates it). Ray's own command creates ``~/.ray/auth_token``."""
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or Path("~/.ray/auth_token").expanduser().is_file()):
        return
    out = subprocess.run([_ray_bin(), "get-auth-token", "--generate"], capture_output=True,
                         text=True, timeout=120)   # the token goes to stdout: not shown
    if out.returncode != 0:
        raise ClusterError("could not create a Ray auth token with `ray get-auth-token "
                           f"--generate`: {out.stderr.strip()[-1000:]}")
    echo("Created a Ray auth token in ~/.ray/auth_token (`ray get-auth-token --generate`); "
         "clients of the cluster read it from there.")


def _start(cfg: dict, config: Path, state_dir: Path, port: int | None,
           dashboard_port: int | None, timeout_s: float,
           echo: Callable[[str], object]) -> tuple[LocalCluster, str]:
    """One attempt at starting the head and waiting for the minimum workers; on failure
    everything it started is stopped again before the error propagates."""
    import ray._private.services

    ip = ray._private.services.get_node_ip_address()
    port = port or _free_port()
    dashboard_port = dashboard_port or _free_port()
    temp_dir = tempfile.mkdtemp(prefix="mlp-fake-")   # short: Ray's socket paths live in it
    rendered = state_dir / "autoscaler.yaml"
    cfg = {**cfg, "provider": {**cfg["provider"], "gcs_address": f"{ip}:{port}"}}
    rendered.write_text(f"# Written by `mlp cluster up-local` from {config}: edit that file.\n"
                        + yaml.safe_dump(cfg, sort_keys=False))
    cluster = LocalCluster(address=f"{ip}:{port}", dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                           temp_dir=temp_dir, config=str(rendered),
                           source_config=str(config.resolve()), started_at=time.time())
    env = {**os.environ, **HEAD_ENV, "AUTOSCALER_METRIC_PORT": str(_free_port()),
           # job drivers run `python` from the head's PATH: make it this environment's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [_ray_bin(), "start", "--head", f"--port={port}", *_head_resource_flags(cfg),
           "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}",
           # fixed defaults (52365, 10001) would collide with any other Ray on the machine
           f"--dashboard-agent-listen-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}",
           f"--temp-dir={temp_dir}", f"--autoscaling-config={rendered}", "--disable-usage-stats"]
    echo(f"Starting a local fake cluster from {config} (head at {cluster.address}) ...")
    _write_state(state_dir, cluster)   # first, so down-local can clean up a half-started one
    try:
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`ray start --head` did not finish in {timeout_s:.0f}s") from None
        if out.returncode != 0:
            raise ClusterError(f"`ray start --head` failed (exit {out.returncode}):\n"
                               + (out.stdout + out.stderr)[-3000:])
        cluster.head_pids = [p.pid for p in _cluster_processes(temp_dir)]
        _write_state(state_dir, cluster)
        minimum = {name: int(t.get("min_workers", 0))
                   for name, t in cfg["available_node_types"].items() if name != FAKE_HEAD_NODE_TYPE}
        if any(minimum.values()):
            echo("Waiting for the minimum workers: "
                 + ", ".join(f"{n} {name}" for name, n in minimum.items() if n) + " ...")
        status = _wait_for_workers(cluster, minimum, env, time.monotonic() + timeout_s)
    except BaseException:
        _stop(state_dir, cluster, timeout_s=60)
        raise
    return cluster, status


def _head_resource_flags(cfg: dict) -> list[str]:
    """``ray start`` flags for the head type's resources (the autoscaler never starts the head)."""
    res = dict(cfg["available_node_types"][FAKE_HEAD_NODE_TYPE].get("resources") or {})
    flags = [f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}"]
    if "object_store_memory" in res:
        flags.append(f"--object-store-memory={res.pop('object_store_memory')}")
    if res:
        flags.append(f"--resources={json.dumps(res)}")
    return flags


def _wait_for_workers(cluster: LocalCluster, minimum: dict[str, int], env: dict,
                      deadline: float) -> str:
    """Poll ``ray status`` until each node type has its minimum active; return the last status."""
    last = ""
    while True:
        out = subprocess.run([_ray_bin(), "status", "--address", cluster.address], env=env,
                             capture_output=True, text=True, timeout=120)
        last = out.stdout + out.stderr
        active = _active_nodes(last) if out.returncode == 0 else None
        if active is not None and all(active.get(t, 0) >= n for t, n in minimum.items()):
            return last
        if time.monotonic() > deadline:
            raise ClusterError(f"the local cluster did not reach its minimum workers {minimum}; "
                               f"last `ray status`:\n{last[-2000:]}\nLogs: {cluster.logs_dir}")
        time.sleep(1)   # poll interval: each `ray status` call takes seconds itself


def _active_nodes(status: str) -> dict[str, int] | None:
    """``{node_type: count}`` from the "Active:" section of ``ray status`` (None: no report yet)."""
    match = re.search(r"^Active:\n(.*?)^\S", status, flags=re.S | re.M)
    if match is None:
        return None
    counts: dict[str, int] = {}
    for line in match.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            counts[parts[1]] = counts.get(parts[1], 0) + int(parts[0])
    return counts


def _summary(cluster: LocalCluster, status: str, state_dir: Path) -> str:
    nodes = status.split("Resources\n")[0].split("Node status\n")[-1].strip("-\n")
    submit = (f"RAY_AUTH_MODE=token ray job submit --address {cluster.dashboard_url} "
              "--working-dir . -- python jobs/train.py --config jobs/configs/fraud_xgb.yaml")
    return "\n".join([
        "Local fake cluster is up (Ray's fake_multinode provider: workers start on demand).",
        f"  Ray address   {cluster.address}   (RAY_ADDRESS for drivers, ray.init(address=...))",
        f"  Dashboard     {cluster.dashboard_url}   (bound to 127.0.0.1)",
        "  Auth          token: RAY_AUTH_MODE=token; the token is $RAY_AUTH_TOKEN or "
        "~/.ray/auth_token",
        f"  Config        {cluster.config}",
        f"  Logs          {cluster.logs_dir}",
        "Submit a job:",
        f"  {submit}",
        "Watch the nodes:",
        f"  RAY_AUTH_MODE=token ray status --address {cluster.address}",
        "Stop it:",
        "  mlp cluster down-local" + ("" if state_dir == _state_dir(None)
                                      else f" --state-dir {state_dir}"),
        "Nodes:",
        *(f"  {line}" for line in nodes.splitlines() if line.strip()),
    ])


def _cluster_processes(temp_dir: str) -> list:
    """Processes whose command line names ``temp_dir``, and all their children.

    Every Ray process of the cluster (GCS, raylets, agents, the autoscaler, log monitors) has
    the session dir under ``temp_dir`` in its command line; fake workers' raylets are children
    of the autoscaler; Ray workers (``ray::IDLE``, renamed) are children of their raylet.
    """
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
        except psutil.Error:
            continue
    for proc in list(found.values()):
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(state_dir: Path, cluster: LocalCluster, timeout_s: float) -> dict[str, int]:
    """Stop every process of ``cluster``; then drop its temp dir and the state file."""
    import psutil

    procs = _cluster_processes(cluster.temp_dir)
    raylets = sum("raylet/raylet" in _cmd(p) for p in procs)
    # The autoscaler first, so it starts no new fake worker while the others stop.
    monitors = [p for p in procs if "autoscaler/_private/monitor.py" in _cmd(p)]
    _signal(monitors, "terminate")
    _signal(procs, "terminate")
    _, alive = psutil.wait_procs(procs, timeout=min(5.0, timeout_s))
    _signal(alive, "kill")
    psutil.wait_procs(alive, timeout=5)
    deadline = time.monotonic() + timeout_s
    while (left := _cluster_processes(cluster.temp_dir)) and time.monotonic() < deadline:
        _signal(left, "kill")     # a worker a raylet forked while it was being stopped
        psutil.wait_procs(left, timeout=2)
    if left:
        raise ClusterError(f"could not stop processes {[p.pid for p in left]} of the local "
                           f"cluster at {cluster.address}; kill them by pid")
    _forget(state_dir, cluster)
    return {"processes": len(procs), "raylets": raylets}


def _signal(procs: list, how: str) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            getattr(proc, how)()


def _cmd(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline()[:2])
    except psutil.Error:
        return ""


def _forget(state_dir: Path, cluster: LocalCluster) -> None:
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    Path(cluster.config).unlink(missing_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def _state_dir(state_dir: Path | None) -> Path:
    return Path(os.path.expanduser(str(state_dir or DEFAULT_STATE_DIR)))


def _read_state(state_dir: Path) -> LocalCluster | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return LocalCluster(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"the state file {path} is unreadable ({exc}); delete it and stop "
                           "any leftover Ray processes of the local cluster by pid") from None


def _write_state(state_dir: Path, cluster: LocalCluster) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2))
    tmp.replace(state_dir / STATE_FILE)


def _ray_bin() -> str:
    """The ``ray`` CLI of this Python environment (the one mlplatform runs in)."""
    local = Path(sys.executable).parent / "ray"
    return str(local) if local.exists() else (shutil.which("ray") or "ray")


def _free_port() -> int:
    from mlplatform._ports import free_port

    return free_port()
