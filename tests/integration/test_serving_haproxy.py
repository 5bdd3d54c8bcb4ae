"""The same app behind Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``), alone and
with Serve's throughput-optimized mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, the recommended
production setting): auth, 4xx handling, live reconfiguration and metrics."""

import contextlib
import threading
import time
from collections import Counter

import pandas as pd
import psutil
import pytest
import requests

from mlplatform.demo import to_instances
from tests.conftest import free_port, haproxy_serve_env, wait_for
from tests.integration.conftest import AUTH, FRAUD_SERVE, REPO
from tests.projects import fraud_columns

REQUEST_COLUMNS = fraud_columns()["request"]


@pytest.fixture(scope="module", params=["haproxy", "haproxy-throughput"])
def url(request, spine, platform):
    from ray import serve

    from mlplatform.serving import deploy

    serve.shutdown()
    with haproxy_serve_env(request.param == "haproxy-throughput") as env:
        base = deploy(FRAUD_SERVE, args_overrides={"platform": platform.model_dump(mode="json")},
                      http_port=free_port(), controller_env=env)
        yield base
        serve.shutdown()


@pytest.fixture(scope="module")
def instance(spine):
    raw = pd.read_parquet(spine.raw_path, columns=REQUEST_COLUMNS).tail(20)
    raw["event_timestamp"] = raw["event_timestamp"].map(lambda t: t.isoformat())
    return to_instances(raw)


def test_haproxy_is_what_answers_on_the_http_port(url, request):
    port = int(url.rsplit(":", 1)[1])

    def listener_names() -> set[str]:
        """Names of the processes listening on the port. HAProxy reloads (a new process takes
        the socket, the old one exits) when the replicas change: a listener may vanish while it
        is looked at, and then is not counted."""
        names = set()
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                with contextlib.suppress(psutil.NoSuchProcess):
                    names.add(psutil.Process(c.pid).name())
        return names

    names = wait_for(listener_names, 30, "a live listener on the HTTP port", ignore=())
    assert names == {"haproxy"}, names
    # The mode reached the replicas (they inherit the controller's env vars).
    ingress = [p for p in psutil.process_iter(["cmdline"])
               if "ServeReplica:fraud:Ingress" in " ".join(p.info["cmdline"] or [])]
    assert ingress
    fast = request.node.callspec.params["url"] == "haproxy-throughput"
    for p in ingress:
        assert (p.environ().get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1") is fast


def test_auth_and_4xx_behind_haproxy(url, instance, spine):
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    assert requests.post(f"{url}/predict", json=instance[0], timeout=30).status_code == 401
    ok = requests.post(f"{url}/predict", json=instance[0], headers=AUTH, timeout=30)
    assert ok.status_code == 200 and ok.json()["arm"] == "champion"
    assert ok.json()["model_version"] == spine.model_version.version
    bad = requests.post(f"{url}/predict", json={**instance[0], "amount": "lots"}, headers=AUTH,
                        timeout=30)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "amount"
    big = requests.post(f"{url}/predict", data=b'{"x": "' + b"a" * 1_100_000 + b'"}',
                        headers=AUTH, timeout=30)
    assert big.status_code == 413


def test_live_reconfiguration_and_metrics_behind_haproxy(url, instance, platform, ray_cluster):
    from mlplatform.serving import deploy
    from tests.integration.test_serving_routing import _metrics, _samples

    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load():
        with requests.Session() as http:
            while not stop.is_set():
                r = http.post(f"{url}/predict", json=instance[len(results) % 20], headers=AUTH,
                              timeout=60)
                results.append((time.monotonic(), r.status_code, r.json().get("arm", "")))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 30, 120, "load before the change")
        deploy(FRAUD_SERVE, args_overrides={"platform": platform.model_dump(mode="json")},
               router_config={"arms": [{"name": "main", "model": "fraud@champion",
                                        "weight": 1}]})
        wait_for(lambda: results and results[-1][2] == "main", 120, "the new arm name")
        changed = time.monotonic()
        wait_for(lambda: sum(t >= changed for t, _, _ in results) >= 50, 120, "answers after")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert Counter(s for _, s, _ in results) == {200: len(results)}
    assert {a for t, _, a in results if t >= changed} == {"main"}

    def exported():
        return {lb["arm"] for lb, _ in _samples(_metrics(ray_cluster),
                                                "ray_mlp_serve_requests_total")} >= {"main"}

    wait_for(exported, 90, "the new arm's metrics")


def test_ingress_scales_out_under_load_without_a_failed_request(url, instance, request):
    """fraud.yaml's Ingress autoscales (it is the CPU-bound deployment): sustained load above
    its target_ongoing_requests brings up max_replicas replicas, HAProxy sends to the new one
    too, and no request fails meanwhile."""
    import yaml
    from ray import serve

    if request.node.callspec.params["url"] != "haproxy-throughput":
        pytest.skip("checked once, in the recommended production mode (throughput-optimized)")
    raw = yaml.safe_load((REPO / "serve_configs" / "fraud.yaml").read_text())
    scaling = next(d for d in raw["applications"][0]["deployments"]
                   if d["name"] == "Ingress")["autoscaling_config"]

    def running() -> int:
        states = serve.status().applications["fraud"].deployments["Ingress"].replica_states
        return states.get("RUNNING", 0)

    def replicas() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if "ServeReplica:fraud:Ingress" in " ".join(p.info["cmdline"] or [])]

    assert running() == scaling["min_replicas"] < scaling["max_replicas"]
    statuses: Counter = Counter()
    stop = threading.Event()

    def load(i: int) -> None:
        with requests.Session() as http:
            while not stop.is_set():
                r = http.post(f"{url}/predict", json=instance[i % 20], headers=AUTH, timeout=60)
                statuses[r.status_code] += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True)
               for i in range(3 * scaling["target_ongoing_requests"])]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: running() == scaling["max_replicas"], 180, "the Ingress to scale out")
        procs = replicas()
        assert len(procs) == scaling["max_replicas"]
        before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
        served = sum(statuses.values())
        wait_for(lambda: sum(statuses.values()) >= served + 600, 120, "600 answers after")
        used = {p.pid: sum(p.cpu_times()[:2]) - before[p.pid] for p in procs}
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert statuses and set(statuses) == {200}, statuses
    # Both replicas did the work of requests (an idle replica uses a few ms of CPU in that time).
    assert all(cpu > 0.1 for cpu in used.values()), used
    # Every deployment autoscales as the YAML says; fraud.yaml embeds the model in the Ingress,
    # so no ModelServer runs (the ModelServer graph's YAML options: test_serving_routing.py).
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    deployed = ServeInstanceDetails(**_get_global_client().get_serve_details())
    deployments = deployed.applications["fraud"].deployments
    configured = {d["name"]: d["autoscaling_config"] for d in raw["applications"][0]["deployments"]
                  if "autoscaling_config" in d}
    assert set(configured) == {"Ingress"}
    assert set(deployments) == {"Ingress", "Router", "Explainer"}
    for name, wanted in configured.items():
        applied = deployments[name].deployment_config.autoscaling_config
        applied = applied if isinstance(applied, dict) else applied.model_dump()
        assert {k: applied[k] for k in wanted} == wanted, name
    # A stopping Router cuts the Ingress replicas' long polls after 1 s instead of waiting them
    # out (serve delete: 9 s -> 3 s); the decorator's setting reaches the deployed app.
    from mlplatform.serving.router import GRACEFUL_SHUTDOWN_S

    router = deployments["Router"].deployment_config
    assert router.graceful_shutdown_timeout_s == GRACEFUL_SHUTDOWN_S
