"""One cluster, three workloads: the fraud Serve app (serve_configs/fraud-cluster.yaml), a training
job and a feature build, at the same time.

Cluster: head (``CPU: 0``), a cpu_worker (``CPU: 2, serve_cpu: 2, cpu_node: 1000``) and a fake
gpu_worker (``CPU: 2, GPU: 1``), their resources read from cluster/local-fake.yaml. Serve
replicas ask for ``num_cpus: 0`` + a share of ``serve_cpu``; the training job asks for every CPU
of the cluster (2 workers x 2 CPU); the feature build's Ray Data tasks ask for CPU (+ a sliver
of ``cpu_node``).

The scenario, with a bounded load on the endpoint throughout (one request in flight, from
another process):

1. idle: :data:`IDLE_REQUESTS` requests -> p99_idle;
2. the training job starts and takes every CPU; its workers are held after round
   :data:`HOLD_AT` (``pause_at``), so "the cluster is full" is a fact, not a race;
3. the feature build starts: its tasks find no free CPU and wait (listed as pending demand by
   the GCS), nothing fails; so does a second training job's reservation (a placement group of
   the same shape stays PENDING); the replicas still hold their ``serve_cpu``;
4. the training job is released and finishes; the waiting reservation is then granted (and
   given back) and the feature build gets CPUs and finishes;
5. every request answered 200 and p99 over the busy window is within :func:`p99_bound`.

The bound (:func:`~tests.cluster._multinode.p99_bound`): ``p99_busy <= max(4 x p99_idle,
p99_idle + 1000 ms)``, p99_idle the larger of an idle measurement before and one after the jobs
(the host's own drift). Serve's resources are reserved in Ray's scheduler, not in the kernel: here
2 cores carry 4 logical worker CPUs, the replicas, the client, the test's driver threads and
other tenants, so the jobs' processes compete with the replicas for the cores and the tail grows
with that contention. Measured on this 2-core machine shared with other tenants (load average
15-60; benchmarks/cluster_colocation.py, 2 runs): idle p99 48-500 ms from one minute to the next,
p99 0.23-0.42 s under training and 0.53-1.33 s under training + feature build, p50 24-36 ms idle
and 44-64 ms busy. Four runs of this test: idle p99 66-230 ms, busy p99 344-1078 ms (3.9-7x:
the +1000 ms arm is the one that holds), no failed request. The bound catches Serve losing its
replicas or queueing behind the jobs (errors, stalls of seconds); it is not a latency objective.
"""

import threading
import time

import pytest
import yaml

from tests.cluster._multinode import (
    AUTH,
    NODE_RESOURCES,
    REPO,
    SERVE_CPU,
    LoadClient,
    cpu_worker,
    feature_job,
    gpu_worker,
    latency_summary,
    live_placement_groups,
    multinode_cluster,
    node_ids_with,
    p99_bound,
    pending_placement_groups,
    pending_task_demand,
    replica_nodes,
    request_bodies,
    storage_root,
    training_set,
    wait_all_cpus_free,
)
from tests.conftest import free_port, haproxy_serve_env, wait_for
from tests.projects import FRAUD

CONFIG = "serve_configs/fraud-cluster.yaml"
IDLE_REQUESTS = 200
ROUNDS, HOLD_AT = 30, 5
#: serve_cpu the replicas of serve_configs/fraud-cluster.yaml hold at their minimum sizes.
SERVE_CPU_HELD = 1.5
#: The cluster's CPUs (cluster/local-fake.yaml); the training job takes them all with one
#: worker per node, so both worker types must have the same CPU count.
WORKER_CPUS = NODE_RESOURCES["cpu_worker"]["CPU"]
TOTAL_CPUS = WORKER_CPUS + NODE_RESOURCES["gpu_worker"]["CPU"]
assert TOTAL_CPUS == 2 * WORKER_CPUS, "the scenario needs cpu_worker and gpu_worker CPUs equal"


def test_the_nodes_are_those_of_the_local_fake_yaml(cluster):
    """The multi-node cluster advertises exactly what cluster/local-fake.yaml declares."""
    import ray

    by_kind = {"cpu_worker": "serve_cpu", "gpu_worker": "GPU"}
    for kind, marker in by_kind.items():
        (node,) = [n for n in ray.nodes() if n["Alive"] and marker in n["Resources"]]
        declared = {k: v for k, v in NODE_RESOURCES[kind].items() if k != "object_store_memory"}
        advertised = {k: v for k, v in node["Resources"].items() if k in declared}
        assert advertised == declared, kind


@pytest.fixture(scope="module")
def cluster():
    with multinode_cluster([cpu_worker(), gpu_worker()]) as c:
        yield c


@pytest.fixture(scope="module")
def platform(cluster):
    from mlplatform.config import PlatformConfig

    return PlatformConfig(storage_root=storage_root(), data_placement_resource="cpu_node",
                          project=FRAUD)


@pytest.fixture(scope="module")
def url(platform, tmp_path_factory):
    """serve_configs/fraud-cluster.yaml deployed (on 127.0.0.1 and a free port) with a
    registered fraud@champion, behind HAProxy in Serve's throughput mode as the cluster YAMLs
    set it up (RAY_SERVE_* on every node; here in the Serve controller's env, which the
    replicas on the cpu_worker inherit)."""
    from ray import serve

    from mlplatform.registry import ModelRegistry
    from mlplatform.serving import deploy
    from tests.integration.serving_models import log_xgboost

    tset = training_set(platform)
    uri = log_xgboost(platform, tset.path, rounds=40, seed=3)
    ModelRegistry(platform).register(uri, "fraud", alias="champion")
    raw = yaml.safe_load((REPO / CONFIG).read_text())
    raw["http_options"]["host"] = "127.0.0.1"        # the shipped file listens on 0.0.0.0
    path = tmp_path_factory.mktemp("serve") / "fraud-cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    with haproxy_serve_env(throughput_optimized=True) as env:
        base = deploy(path, args_overrides={"platform": platform.model_dump(mode="json")},
                      http_port=free_port(), controller_env=env)
        yield f"{base}/predict"
        serve.shutdown()


@pytest.fixture(scope="module")
def load(url, platform):
    client = LoadClient(url, request_bodies(platform.path("raw")), AUTH)
    yield client
    client.close()


def test_serve_replicas_run_on_the_cpu_worker_and_hold_serve_cpu_not_cpu(url):
    import ray

    (cpu_node,) = node_ids_with("serve_cpu")
    placed = replica_nodes()
    assert placed and all(len(replicas) == 1 and {node for _, node in replicas} == {cpu_node}
                          for replicas in placed.values()), placed
    available, total = ray.available_resources(), ray.cluster_resources()
    assert available["serve_cpu"] == pytest.approx(SERVE_CPU - SERVE_CPU_HELD)
    assert available["CPU"] == total["CPU"] == TOTAL_CPUS      # replicas took no CPU


def test_haproxy_on_the_head_answers_for_the_replicas_on_the_cpu_worker(url, platform):
    """Multi-node HAProxy: the endpoint's port is HAProxy's (the controller's node, the head),
    and the Ingress replica it forwards to (its own HTTP server, on the cpu_worker) runs in
    throughput mode and answers."""
    import psutil
    import requests

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    listeners = {c.pid for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listeners and {psutil.Process(p).name() for p in listeners} == {"haproxy"}
    (cpu_node,) = node_ids_with("serve_cpu")
    assert {node for _, node in replica_nodes()["Ingress"]} == {cpu_node}
    ingress = [p for p in psutil.process_iter(["cmdline"])
               if "ServeReplica:fraud:Ingress" in " ".join(p.info["cmdline"] or [])]
    assert ingress and all(p.environ().get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
                           for p in ingress)
    body = request_bodies(platform.path("raw"))[0]
    answer = requests.post(url, json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200 and answer.json()["arm"] == "champion", answer.text


def test_training_and_feature_build_beside_serve(cluster, platform, load, tmp_path):
    import ray

    from mlplatform.training import TrainConfig, train_xgboost

    idle = latency_summary(load.run(IDLE_REQUESTS))
    assert idle["errors"] == 0, idle
    serve_cpu_free = ray.available_resources()["serve_cpu"]
    placed = replica_nodes()

    outcome: dict = {}

    def job(name, fn):
        def run():
            try:
                outcome[name] = fn()
            except BaseException as exc:   # handed to the test thread
                outcome[f"{name}_error"] = exc
        thread = threading.Thread(target=run, daemon=True, name=name)
        thread.start()
        return thread

    def check_jobs():
        for key, value in outcome.items():
            if key.endswith("_error"):
                raise AssertionError(f"{key[:-6]} failed") from value

    config = TrainConfig(
        features_path=training_set(platform).path, num_boost_round=ROUNDS,
        early_stopping_rounds=0, run_name="colocated",
        scaling={"num_workers": 2, "resources_per_worker": {"CPU": WORKER_CPUS}},
        xgb_callbacks=[{"target": "tests.cluster._multinode:pause_at",
                        "kwargs": {"at_round": HOLD_AT, "report_dir": str(tmp_path)}}])
    load.start(tmp_path / "stop-load")
    busy_from = time.time()
    training = job("training", lambda: train_xgboost(config, platform))

    def training_holds_every_cpu() -> bool:
        check_jobs()
        return all((tmp_path / f"rank{r}.json").exists() for r in range(2))

    second = None
    try:
        wait_for(training_holds_every_cpu, 300, "the training job to hold every CPU", ignore=())
        assert ray.available_resources().get("CPU", 0) == 0
        build = job("build", lambda: feature_job(platform))

        def build_waits_for_cpu() -> bool:
            check_jobs()
            return any("CPU" in shape for shape in pending_task_demand())

        wait_for(build_waits_for_cpu, 120, "the feature build's tasks to wait for a CPU",
                 ignore=())
        assert build.is_alive() and "build" not in outcome    # waiting, not failed or done
        # A second training job's reservation (Ray Train's placement group: the same bundles)
        # waits too: reported as pending demand, not refused.
        second = ray.util.placement_group([{"CPU": WORKER_CPUS}] * 2, strategy="PACK")
        wait_for(lambda: second.id.hex() in pending_placement_groups(), 60,
                 "the second reservation to wait as pending demand")
        assert ray.util.placement_group_table(second)["state"] == "PENDING"
        # Serve kept its reservation while training holds every CPU.
        assert ray.available_resources()["serve_cpu"] == pytest.approx(serve_cpu_free)
        assert replica_nodes() == placed
    except BaseException:
        if second is not None:
            ray.util.remove_placement_group(second)
        raise
    finally:
        (tmp_path / "release").touch()   # the training job goes on
    # The waiting reservation is granted once the training ends; given back at once so the
    # feature build gets the CPUs.
    granted = second.wait(timeout_seconds=400)
    ray.util.remove_placement_group(second)
    assert granted, "the waiting reservation never got the CPUs the training freed"
    for thread in (training, build):
        thread.join(timeout=400)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    busy_until = time.time()
    records = load.stop()
    check_jobs()
    after = latency_summary(load.run(IDLE_REQUESTS))

    busy = latency_summary([r for r in records if busy_from <= r[0] <= busy_until])
    idle_p99 = max(idle["p99_ms"], after["p99_ms"])   # the machine's own drift, both sides
    print(f"\nServe p50/p99 idle {idle['p50_ms']:.1f}/{idle['p99_ms']:.1f} ms, after "
          f"{after['p50_ms']:.1f}/{after['p99_ms']:.1f} ms; under training + feature build "
          f"{busy['p50_ms']:.1f}/{busy['p99_ms']:.1f} ms ({busy['requests']} requests over "
          f"{busy_until - busy_from:.0f} s; bound {p99_bound(idle_p99):.0f} ms)")
    assert busy["requests"] >= 50 and busy["errors"] == 0 and after["errors"] == 0, (busy, after)
    assert busy["p99_ms"] <= p99_bound(idle_p99), (idle, after, busy)

    # Both jobs did their work; the training job was never restarted.
    result = outcome["training"]
    assert result.params["rounds_trained"] == ROUNDS and result.params["resumed_at_rounds"] == []
    assert outcome["build"] and all(m.num_rows > 0 for m in outcome["build"].values())
    # Serve still holds exactly its share; every CPU is free again, no placement group left.
    assert replica_nodes() == placed
    assert ray.available_resources()["serve_cpu"] == pytest.approx(serve_cpu_free)
    assert wait_all_cpus_free() == TOTAL_CPUS
    assert not live_placement_groups()
