"""A multi-node Ray cluster in this process's machine (``ray.cluster_utils.Cluster``) with the
cluster YAMLs' resource scheme, and the small data set the cluster tests train and serve on.

Node types, with the scheduling resources of ``cluster/local-fake.yaml`` read from that file
(:data:`NODE_RESOURCES`), so the tests cannot drift from the scheme they check:

- head: ``CPU: 0`` (no training or data work; the Serve controller, the HTTP proxy and the
  Ray Train controller need no CPU and run there);
- cpu_worker: ``CPU``, ``serve_cpu`` (CPU reserved for Serve replicas, which ask for
  ``num_cpus: 0`` + ``serve_cpu``, so training and Ray Data can never take it) and ``cpu_node``
  (a marker Ray Data tasks ask a sliver of, to stay on CPU workers);
- gpu_worker: ``CPU``, ``GPU`` and its ``accelerator_type:`` marker only (the GPU is fake:
  nothing here touches CUDA).

Every node gets explicit free ports and a private temp dir, so the cluster never meets another
Ray on the machine; the nodes inherit this process's environment when they start (Serve token,
``PYTHONPATH`` for the test callbacks the Train workers import).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
SERVE_TOKEN = "cluster-serve-token"
AUTH = {"Authorization": f"Bearer {SERVE_TOKEN}"}
#: Transactions generated for the cluster tests (small: the point is placement, not scale).
N_ROWS = 4000
SEED = 7
FAKE_YAML = REPO / "cluster" / "local-fake.yaml"


def _yaml_resources() -> dict[str, dict[str, float]]:
    import yaml

    types = yaml.safe_load(FAKE_YAML.read_text())["available_node_types"]
    return {name: dict(t.get("resources") or {}) for name, t in types.items()}


#: Node type -> resources, as cluster/local-fake.yaml declares them.
NODE_RESOURCES = _yaml_resources()
#: ``serve_cpu`` a cpu_worker advertises (that much CPU is kept for Serve).
SERVE_CPU = NODE_RESOURCES["cpu_worker"]["serve_cpu"]


def _node_args(node_type: str) -> dict:
    """``Cluster.add_node`` arguments for a node of ``node_type``: its scheduling resources from
    the YAML. Its ``object_store_memory`` is left to the ``Cluster`` default (a memory setting,
    not a scheduling one; the smaller default keeps three nodes' stores small on a test host)."""
    res = {k: v for k, v in NODE_RESOURCES[node_type].items() if k != "object_store_memory"}
    args = {"num_cpus": int(res.pop("CPU", 0))}
    if "GPU" in res:
        args["num_gpus"] = int(res.pop("GPU"))
    if res:
        args["resources"] = res
    return args


def cpu_worker() -> dict:
    """Node arguments of a CPU worker (Serve + Ray Data), as cluster/local-fake.yaml has it."""
    return _node_args("cpu_worker")


def gpu_worker() -> dict:
    """Node arguments of a (fake) GPU worker, as cluster/local-fake.yaml has it."""
    return _node_args("gpu_worker")


def plain_worker(cpus: int = 1) -> dict:
    """A worker with CPUs only (node-loss tests: somewhere for Train workers to land)."""
    return {"num_cpus": cpus}


@contextlib.contextmanager
def multinode_cluster(workers: list[dict]) -> Iterator:
    """Start a head (``CPU: 0``) plus ``workers`` and connect this process to it.

    Yields the ``Cluster`` (``cluster.worker_nodes``, ``cluster.remove_node(node)``). On exit:
    disconnects, kills every node's processes and removes the temp dir. ``ray.cluster_utils``
    writes the head's address to ``/tmp/ray/ray_current_cluster``; the previous content is put
    back, so a plain ``ray start``/``ray.init()`` of someone else on the machine is unaffected.
    """
    import ray
    from ray.cluster_utils import Cluster

    current = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
    previous = current.read_text() if current.exists() else None
    # Cluster() writes there without creating the directory: on a fresh machine (no Ray run
    # there yet, or every earlier one with its own temp dir) /tmp/ray does not exist.
    current.parent.mkdir(mode=0o777, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="mlpc-", dir="/tmp")    # short: socket paths <= 107
    saved = {k: os.environ.get(k) for k in ("MLP_SERVE_TOKEN", "PYTHONPATH")}
    os.environ["MLP_SERVE_TOKEN"] = SERVE_TOKEN
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), saved["PYTHONPATH"]) if p)
    ports = {"include_dashboard": False, "temp_dir": temp_dir, "min_worker_port": 0,
             "max_worker_port": 0}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            **ports, "num_cpus": 0,
            "dashboard_agent_listen_port": free_port()})
        for args in workers:
            cluster.add_node(**ports, **args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if previous is not None:
            current.write_text(previous)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


def node_of(cluster, node_id: str):
    """The ``Cluster`` node object whose Ray node id is ``node_id``."""
    for node in cluster.list_all_nodes():
        if node.node_id == node_id:
            return node
    raise KeyError(f"no node {node_id} in the cluster")


def wait_all_cpus_free(timeout_s: float = 120) -> float:
    """Wait until every CPU of the cluster is free again; return the CPU total."""
    import ray

    def free() -> float | None:
        total = ray.cluster_resources().get("CPU", 0.0)
        return total if abs(ray.available_resources().get("CPU", 0.0) - total) < 1e-6 else None

    return wait_for(free, timeout_s, "every CPU of the cluster to be free again")


def live_placement_groups() -> dict[str, dict]:
    """Placement groups not yet REMOVED (a leak once every job has ended)."""
    import ray

    return {pg_id: pg for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] != "REMOVED"}


# ------------------------------------------------------------------ data -----------------------
_PREPARED: dict[str, object] = {}


def storage_root() -> Path:
    """One storage root (MLflow DB, feature store, training set) for the cluster tests of this
    process, so the data is generated and the features built once for every module."""
    if "root" not in _PREPARED:
        _PREPARED["root"] = root = Path(tempfile.mkdtemp(prefix="mlp-cluster-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    return _PREPARED["root"]


def training_set(platform, n_rows: int = N_ROWS):
    """Generate ``n_rows`` transactions and build the feature store (offline, online) and the
    training set on the connected cluster (Ray Data), the first time; later calls reuse them.

    Returns:
        The :class:`~mlplatform.features.TrainingSet` (``path``: the Parquet training set).
    """
    if "tset" not in _PREPARED:
        from mlplatform.pipelines import build_features, ensure_data, load

        project = load(platform.project, platform)
        ensure_data(platform, project, n_rows, SEED, force=True, echo=lambda _line: None)
        _PREPARED["tset"] = build_features(platform, project)
    return _PREPARED["tset"]


def feature_job(platform) -> dict:
    """What ``jobs/build_features.py`` does: gate the source with its contract, build every
    feature view (a new offline version each, Ray Data) and materialize them online.

    Returns:
        The new manifest of every view.
    """
    from mlplatform.features import FeatureStore

    store = FeatureStore(platform)
    store.validate_source()
    manifests = store.build(validate=False)
    store.materialize_incremental()
    return manifests


# ------------------------------------------------------------------ training ------------------
def pause_at(at_round: int, report_dir: str):
    """An XGBoost callback (``TrainConfig.xgb_callbacks``) that holds every Ray Train worker
    after ``at_round`` rounds until ``<report_dir>/release`` exists, after writing
    ``<report_dir>/rank<r>.json`` with the worker's node id: the test learns where each worker
    runs and acts on a run that is certainly mid-way. Once released it never holds again, so
    a restarted worker group runs straight through."""
    import json
    import time

    import ray
    import ray.train
    import xgboost

    release = Path(report_dir, "release")

    class PauseAt(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            done = model.num_boosted_rounds()
            if done < at_round or release.exists():
                return False
            rank = ray.train.get_context().get_world_rank()
            Path(report_dir, f"rank{rank}.json").write_text(json.dumps({
                "node_id": ray.get_runtime_context().get_node_id(), "round": done,
                "pid": os.getpid()}))
            deadline = time.monotonic() + 600   # never hang a run whose test died
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)   # poll interval of the wait on the test's release file
            return False

    return PauseAt()


def latest_checkpoint_round(storage: Path, run_prefix: str) -> int:
    """Rounds done at the newest checkpoint Ray Train has *registered* for the run whose name
    starts with ``run_prefix`` (0: none yet). Read from the checkpoint manager's snapshot in the
    run folder, which the Train controller rewrites each time it registers a checkpoint: what
    a restarted worker group would resume from."""
    import json

    for snapshot in storage.glob(f"ray_results/{run_prefix}*/checkpoint_manager_snapshot.json"):
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        return int((latest.get("metrics") or {}).get("round", 0))
    return 0


# ------------------------------------------------------------------ serving -------------------
def sequential_load(url: str, bodies: list, headers: dict, stop_file: str | None = None,
                    max_requests: int = 100_000, max_s: float = 900.0) -> list[tuple]:
    """POST ``bodies`` round-robin to ``url``, one at a time (bounded load: one request in
    flight), until ``max_requests`` are sent, ``stop_file`` exists or ``max_s`` passed.

    Meant for a separate process (:class:`LoadClient`), so that the test's own threads (the
    training driver, the feature build) never delay the client.

    Returns:
        ``(start time (epoch s), latency s, HTTP status or error name)`` per request.
    """
    import time

    import requests

    out: list[tuple] = []
    stop = Path(stop_file) if stop_file else None
    deadline = time.monotonic() + max_s
    with requests.Session() as session:
        while len(out) < max_requests and time.monotonic() < deadline:
            if stop is not None and len(out) % 10 == 0 and stop.exists():
                break
            t0, wall = time.perf_counter(), time.time()
            try:
                status = session.post(url, json=bodies[len(out) % len(bodies)], headers=headers,
                                      timeout=30).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            out.append((wall, time.perf_counter() - t0, status))
    return out


class LoadClient:
    """Runs :func:`sequential_load` in a child process."""

    def __init__(self, url: str, bodies: list, headers: dict):
        import concurrent.futures
        import multiprocessing

        self.args = (url, bodies, headers)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"))
        self._future = None

    def run(self, n: int) -> list[tuple]:
        """``n`` requests, then return their records."""
        return self._pool.submit(sequential_load, *self.args, max_requests=n).result()

    def start(self, stop_file: Path) -> None:
        """Send requests until :meth:`stop`."""
        self._stop_file = stop_file
        self._future = self._pool.submit(sequential_load, *self.args, stop_file=str(stop_file))

    def stop(self, timeout_s: float = 120) -> list[tuple]:
        self._stop_file.touch()
        return self._future.result(timeout=timeout_s)

    def close(self) -> None:
        """Stop a load still running (a test that failed midway) and end the child."""
        if self._future is not None and not self._future.done():
            self._stop_file.touch()
        self._pool.shutdown(cancel_futures=True)


def p99_bound(p99_idle_ms: float) -> float:
    """The most Serve's p99 (ms) may reach while a training job and a feature build share its
    cluster: ``max(4 x idle p99, idle p99 + 1000 ms)`` (documented in cluster/README.md).

    Serve's share is reserved in Ray's scheduler (``serve_cpu``), not in the kernel: on a test
    machine the workers' logical CPUs outnumber the cores, so the jobs' processes compete with
    the replicas for the same cores and the tail grows with that contention (and with whatever
    else the host runs). The bound is a guard against Serve losing its replicas or queueing
    behind the jobs (errors, stalls of seconds), not a latency objective; measured figures are in
    benchmarks/results/cluster_colocation.md.
    """
    return max(4 * p99_idle_ms, p99_idle_ms + 1000)


def latency_summary(records: list[tuple]) -> dict:
    """Requests, errors (non-200), p50/p95/p99/max latency in ms (200s only), rps."""
    import numpy as np

    ok = np.array([lat for _, lat, status in records if status == 200]) * 1000
    span = (records[-1][0] + records[-1][1] - records[0][0]) if records else 0.0
    pct = (lambda q: float(np.percentile(ok, q))) if len(ok) else (lambda q: float("nan"))
    return {"requests": len(records), "errors": len(records) - len(ok),
            "rps": len(ok) / span if span > 0 else 0.0, "p50_ms": pct(50), "p95_ms": pct(95),
            "p99_ms": pct(99), "max_ms": float(ok.max()) if len(ok) else float("nan")}


def request_bodies(raw_path: Path, n: int = 20) -> list[dict]:
    """``n`` live-looking transactions of known users (the last day of the raw data, stamped
    half an hour after it ends): what the endpoint scores."""
    import pandas as pd

    from mlplatform.demo import to_instances
    from tests.projects import fraud_columns

    raw = pd.read_parquet(raw_path)
    end = raw["event_timestamp"].max()
    rows = raw[raw["event_timestamp"] > end - pd.Timedelta(days=2)].drop_duplicates("user_id")
    rows = rows.head(n).copy()
    rows["transaction_id"] = [f"live-{i}" for i in range(len(rows))]
    rows["event_timestamp"] = (end + pd.Timedelta(minutes=30)).isoformat()
    return to_instances(rows[fraud_columns()["request"]])


def replica_nodes(app: str = "fraud") -> dict[str, set[tuple[str, str]]]:
    """``(replica id, node id)`` of the RUNNING replicas of each deployment of a Serve
    application: equal before and after means no replica moved, restarted or was added."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return {name: {(r["replica_id"], r["node_id"]) for r in dep["replicas"]
                   if r["state"] == "RUNNING"}
            for name, dep in details["applications"][app]["deployments"].items()}


def node_ids_with(resource: str) -> set[str]:
    """Ids of the live nodes that advertise ``resource``."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]}


def pending_task_demand() -> list[dict]:
    """Resource shapes of tasks/actors waiting for resources (what ``ray status`` lists as
    demands), read from the GCS."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    return [dict(b.bundle) for demand in status.resource_demands.ray_task_actor_demand
            for b in demand.bundles_by_count]


def pending_placement_groups() -> set[str]:
    """Ids (hex) of the placement groups the GCS could not place yet: demand it reports to the
    autoscaler, i.e. a job waiting for resources."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    return {d.pg_id for d in status.resource_demands.placement_group_demand if d.pg_id}
