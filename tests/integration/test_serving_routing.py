"""Traffic splitting on Ray Serve, over real HTTP, driven with the real `serve deploy` CLI.

One app (serve_configs/fraud-ab.yaml: the ModelServer graph, one deployment per model, called
over Serve's gRPC channel) serves four versions of ``fraud_ab`` (champion, challenger,
candidate, faulty: a model that loads but fails every prediction). Tests run in file order and
move the same app along: split accuracy, composition, coalesced calls, the gRPC transport,
metrics, live weight change under load, sticky keys, shadow errors, a rejected config,
`mlp serve reload` after an alias move, a replica killed under load, backpressure, and last (it
rebuilds the app) an arm whose model fails to load plus alias polling.
"""

import copy
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from mlplatform.demo import to_instances
from mlplatform.registry import ModelRegistry, load_model
from tests.conftest import free_port, wait_for
from tests.integration.conftest import ADMIN, AUTH, BIN, REPO, serve_deploy
from tests.integration.serving_models import check_burst, log_xgboost
from tests.projects import fraud_columns, project

FEATURE_COLUMNS, REQUEST_COLUMNS = fraud_columns()["inputs"], fraud_columns()["request"]
MODEL = "fraud_ab"
CHAMPION, CHALLENGER, CANDIDATE, FAULTY = (f"{MODEL}@{a}" for a in
                                           ("champion", "challenger", "candidate", "faulty"))
SPLIT = {"arms": [{"name": "champion", "model": CHAMPION, "weight": 90},
                  {"name": "challenger", "model": CHALLENGER, "weight": 10},
                  {"name": "idle", "model": CANDIDATE, "weight": 0}],
         "shadow": {"model": CANDIDATE, "sample": 0.3}}


@pytest.fixture(scope="module")
def versions(spine, platform):
    registry = ModelRegistry(platform)
    out = {}
    for alias, rounds, kwargs in (("champion", 20, {}), ("challenger", 6, {"threshold": 0.2}),
                                  ("candidate", 12, {"threshold": 0.0}),
                                  ("faulty", 3, {"faulty": True}),
                                  ("broken", 3, {"columns": FEATURE_COLUMNS[:5]})):
        uri = log_xgboost(platform, spine.features_path, rounds, seed=rounds, **kwargs)
        out[alias] = registry.register(uri, MODEL, alias=alias).version
    return out


def _serve_yaml(tmp: Path, platform, router: dict, models: list[str], **args) -> Path:
    """serve_configs/fraud-ab.yaml for model ``fraud_ab``, this session's storage, a free port,
    2 champion replicas, small Ingress limits (backpressure) and ``router`` as user_config."""
    raw = yaml.safe_load((REPO / "serve_configs" / "fraud-ab.yaml").read_text())
    app = raw["applications"][0]
    app["args"].update({"models": models, "platform": platform.model_dump(mode="json"),
                        "reload_interval_s": 0, "project": str(project("fraud").root), **args})
    deployments = []
    for d in app["deployments"]:
        d = copy.deepcopy(d)
        if d["name"].startswith("ModelServer-"):
            d["name"] = d["name"].replace("ModelServer-fraud-", f"ModelServer-{MODEL}-")
            if d["name"].endswith("-champion"):
                d.pop("autoscaling_config", None)
                d["num_replicas"] = 2
            d["ray_actor_options"] = {"num_cpus": 0.1}
        if d["name"] == "Ingress":
            d.update(max_ongoing_requests=16, max_queued_requests=8)
        if d["name"] == "Router":
            d["user_config"] = router
        deployments.append(d)
    served = {f"ModelServer-{MODEL}-{m.split('@')[1]}" for m in models}
    app["deployments"] = [d for d in deployments
                          if not d["name"].startswith("ModelServer-") or d["name"] in served]
    app["deployments"] += [{"name": f"ModelServer-{MODEL}-{m.split('@')[1]}",
                            "ray_actor_options": {"num_cpus": 0.1}}
                           for m in models if f"ModelServer-{MODEL}-{m.split('@')[1]}"
                           not in {d["name"] for d in app["deployments"]}]
    raw["http_options"]["port"] = PORT
    path = tmp / f"serve-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


PORT = free_port()
URL = f"http://127.0.0.1:{PORT}"


def _models() -> dict:
    return requests.get(f"{URL}/models", headers=AUTH, timeout=30).json()


def _arms_ready(expected: dict[str, float]) -> bool:
    view = _models()
    return ({a["name"]: a["weight"] for a in view["arms"]} == expected
            and all(a["ready"] for a in view["arms"] if a["weight"] > 0))


@pytest.fixture(scope="module")
def app(versions, platform, ray_cluster, tmp_path_factory):
    from ray import serve

    from mlplatform.serving import wait_until_running

    serve.shutdown()
    tmp = tmp_path_factory.mktemp("serve-routing")
    serve_deploy(ray_cluster, _serve_yaml(tmp, platform, SPLIT,
                                           [CHAMPION, CHALLENGER, CANDIDATE, FAULTY]))
    wait_for(lambda: serve.status().applications.get("fraud") is not None, 60, "the app")
    wait_until_running(["fraud"], 300)
    wait_for(lambda: _arms_ready({"champion": 90, "challenger": 10, "idle": 0}), 60,
             "the Router to see its arms", ignore=(requests.RequestException,))
    yield tmp
    serve.shutdown()


@pytest.fixture(scope="module")
def instances(spine):
    raw = pd.read_parquet(spine.raw_path, columns=REQUEST_COLUMNS).tail(400)
    raw["event_timestamp"] = raw["event_timestamp"].map(lambda t: t.isoformat())
    return to_instances(raw)


class Load:
    """Requests from ``threads`` client threads until stopped; every answer is recorded.

    A client retries 503 and connection errors up to ``retries`` times (a retry budget, as a
    production client has); what still fails is a failure.
    """

    def __init__(self, instances, threads: int = 6, retries: int = 0, total: int | None = None):
        self.instances, self.retries, self.total = instances, retries, total
        self.results: list[tuple[float, int, dict]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _run(self, k: int):
        with requests.Session() as http:
            i = k
            while not self._stop.is_set():
                if self.total is not None and len(self.results) >= self.total:
                    return
                inst = self.instances[i % len(self.instances)]
                i += len(self._threads)
                status, body = 0, {}
                for _ in range(self.retries + 1):
                    try:
                        r = http.post(f"{URL}/predict", json=inst, headers=AUTH, timeout=60)
                        status, body = r.status_code, r.json()
                    except requests.RequestException as exc:
                        status, body = -1, {"error": str(exc)}
                    if status not in (-1, 503):
                        break
                with self._lock:
                    self.results.append((time.monotonic(), status, body))

    def since(self, t0: float):
        with self._lock:
            return [(s, b) for t, s, b in self.results if t >= t0]


def _metrics(ray_cluster) -> str:
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return requests.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=30).text


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name]


def test_split_matches_the_weights_and_zero_weight_gets_nothing(app, instances, versions):
    with Load(instances, threads=8, total=400) as load:
        wait_for(lambda: len(load.results) >= 400, 300, "400 answers")
    answers = load.since(0)
    assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
    arms = Counter(b["arm"] for _, b in answers)
    n = sum(arms.values())
    assert arms["idle"] == 0 and set(arms) == {"champion", "challenger"}
    # Binomial(n, 0.1): the challenger's share is within 4.5 standard deviations.
    sd = (n * 0.1 * 0.9) ** 0.5
    assert abs(arms["challenger"] - 0.1 * n) < 4.5 * sd, arms
    by_arm = {b["arm"]: b["model_version"] for _, b in answers}
    assert by_arm == {"champion": versions["champion"], "challenger": versions["challenger"]}
    for _, b in answers:
        assert b["request_id"] and b["model_name"] == MODEL
        threshold = {"champion": 0.3, "challenger": 0.2}[b["arm"]]
        assert b["decision"] == ("fraud" if b["score"] >= threshold else "legit")


def test_each_arm_serves_exactly_its_model(app, instances, versions, platform):
    """Composition: the score through Ingress (feature lookup) -> Router -> arm equals the
    arm's model scoring the same features directly."""
    from mlplatform.serving.deployments import FeatureLookup

    batch = instances[:8]
    registry = ModelRegistry(platform)
    records = [{**i, "event_timestamp": pd.Timestamp(i["event_timestamp"])} for i in batch]
    # The lookup class itself, outside Serve (its online-equals-offline check: test_serving).
    lookup = FeatureLookup(platform.model_dump(mode="json"), project("fraud"))
    inputs = pd.DataFrame(lookup.features(records)["matrix"], columns=FEATURE_COLUMNS)
    for arm, alias in (("champion", "champion"), ("challenger", "challenger")):
        r = requests.post(f"{URL}/predict", json={"instances": batch},
                          headers={**ADMIN, "X-MLP-Arm": arm}, timeout=30)
        assert r.status_code == 200, r.text
        served = [p["score"] for p in r.json()["predictions"]]
        assert {p["arm"] for p in r.json()["predictions"]} == {arm}
        direct = load_model(registry, f"{MODEL}/{versions[alias]}").predict(inputs)
        np.testing.assert_allclose(served, direct, rtol=1e-6)


def test_concurrent_requests_are_each_answered_for_their_own_transaction(app, instances,
                                                                         platform):
    """A burst of concurrent requests pinned to the champion: the Ingress coalesces their
    ModelServer calls (several requests' rows in one call), and each request still gets the
    score of its own transactions. 12 threads: this app's Ingress takes 16 at once."""
    check_burst(URL, instances, platform, MODEL, {**ADMIN, "X-MLP-Arm": "champion"}, threads=12)


def test_model_server_calls_go_over_grpc_not_actor_tasks(app, instances):
    """The Ingress calls its ModelServers over Serve's gRPC channel between replicas
    (``args.model_calls_by_reference: false``, the default), not as Ray actor tasks.

    A ModelServer replica listens on two ports: its Ray core worker (actor tasks, and Serve's
    queue-length probes, which every caller uses) and Serve's inter-deployment gRPC server. A
    caller that sends actor tasks only is connected to the first; one that calls over gRPC is
    connected to both (Serve opens the gRPC channel on the first call over it).
    """
    import psutil
    from ray.util.state import list_actors

    with requests.Session() as http:
        for _ in range(20):
            r = http.post(f"{URL}/predict", json=instances[0],
                          headers={**ADMIN, "X-MLP-Arm": "champion"}, timeout=30)
            assert r.status_code == 200, r.text
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    servers = [a.pid for a in alive
               if a.class_name == f"ServeReplica:fraud:ModelServer-{MODEL}-champion"]
    ingresses = [a.pid for a in alive if a.class_name == "ServeReplica:fraud:Ingress"]
    # The YAML's options reach the deployments the app names from args.models: 2 replicas.
    assert len(servers) == 2 and ingresses
    seen = {}
    for server in servers:
        listening = {c.laddr.port for c in psutil.Process(server).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert len(listening) == 2, f"the ModelServer replica listens on {listening}: " \
            "expected its Ray core worker's port and Serve's gRPC server's"
        reached = {c.raddr.port for pid in ingresses
                   for c in psutil.Process(pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.raddr
                   and c.raddr.port in listening}
        seen[server] = (reached, listening)
    # 20 calls over the champion's 2 replicas: at least one was called, over both its ports.
    assert any(reached == listening for reached, listening in seen.values()), (
        f"the Ingress replicas reach the ModelServers' ports (reached, listening) {seen}: "
        "its calls go as Ray actor tasks, not over Serve's gRPC channel")


def test_pinning_an_arm_needs_the_admin_token(app, instances):
    inst = instances[0]
    r = requests.post(f"{URL}/predict", json=inst, headers={**AUTH, "X-MLP-Arm": "challenger"},
                      timeout=30)
    assert r.status_code == 403 and "admin" in r.json()["message"]
    r = requests.post(f"{URL}/predict", json=inst, headers={**ADMIN, "X-MLP-Arm": "nope"},
                      timeout=30)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "x-mlp-arm"
    r = requests.post(f"{URL}/predict", json=inst, headers={**ADMIN, "X-MLP-Arm": "idle"},
                      timeout=30)
    assert r.status_code == 200 and r.json()["arm"] == "idle"   # 0 weight, but pinnable


def test_explain_adds_up_to_the_served_margin(app, instances, versions):
    r = requests.post(f"{URL}/explain", json={"instances": instances[:3]},
                      headers={**ADMIN, "X-MLP-Arm": "challenger"}, timeout=60)
    assert r.status_code == 200, r.text
    for e in r.json()["explanations"]:
        assert e["arm"] == "challenger" and e["model_version"] == versions["challenger"]
        assert set(e["contributions"]) == set(FEATURE_COLUMNS)
        assert e["base_value"] + sum(e["contributions"].values()) == pytest.approx(
            e["margin"], abs=1e-3)
        assert e["additivity_ok"] and e["score"] == pytest.approx(
            1 / (1 + np.exp(-e["margin"])), rel=1e-5)
        assert e["decision"] in ("fraud", "legit") and "explained" not in e   # binary
    predicted = requests.post(f"{URL}/predict", json=instances[0],
                              headers={**ADMIN, "X-MLP-Arm": "challenger"}, timeout=30).json()
    assert predicted["score"] == pytest.approx(r.json()["explanations"][0]["score"], rel=1e-6)


def test_per_arm_metrics_reach_prometheus(app, ray_cluster):
    def exported():
        text = _metrics(ray_cluster)
        # Counters are per node and cumulative: keep this module's model (other test modules
        # served "fraud" on this cluster before).
        reqs = {(lb["arm"], lb["model_version"]): v
                for lb, v in _samples(text, "ray_mlp_serve_requests_total")
                if lb["model_name"] == MODEL}
        shadow = sum(v for lb, v in _samples(text, "ray_mlp_serve_shadow_requests_total")
                     if lb["model"] == CANDIDATE)
        latency = [lb for lb, _ in _samples(text, "ray_mlp_serve_latency_ms_bucket")
                   if lb["arm"] == "challenger"]
        scores = [lb for lb, _ in _samples(text, "ray_mlp_serve_score_bucket")
                  if lb["arm"] == "challenger"]
        served = sum(reqs.values())
        # The candidate decides at 0.0 ("fraud" for every row), so it disagrees with nearly
        # every served "legit"; a counter is exported only after its first increment.
        disagreements = _samples(text, "ray_mlp_serve_shadow_disagreements_total")
        # A new series is exported a cycle after the first increment: wait for every series
        # asserted on below (the 0-weight arm's single pinned request included).
        if (served < 400 or not latency or not scores or shadow == 0 or not disagreements
                or {arm for arm, _ in reqs} != {"champion", "challenger", "idle"}):
            return None
        return reqs, shadow, served, text

    reqs, shadow, served, text = wait_for(exported, 90, "per-arm metrics in Prometheus")
    assert {arm for arm, _ in reqs} == {"champion", "challenger", "idle"}
    # The 0-weight arm served only the one request pinned to it (test_pinning...).
    assert sum(v for (arm, _), v in reqs.items() if arm == "idle") == 1
    # Shadow copies: 30 % of the predictions (sampled by request id), within 5 sd.
    assert abs(shadow - 0.3 * served) < 5 * (served * 0.3 * 0.7) ** 0.5, (shadow, served)
    assert sum(v for lb, v in _samples(text, "ray_mlp_serve_shadow_disagreements_total")
               if lb["model"] == CANDIDATE) > 0.5 * shadow


def test_live_weight_change_under_load_fails_nothing(app, instances, ray_cluster, platform):
    new = {**SPLIT, "arms": [{**a, "weight": w} for a, w in zip(SPLIT["arms"], (30, 70, 0),
                                                                strict=True)]}
    with Load(instances, threads=6) as load:
        wait_for(lambda: len(load.results) >= 50, 120, "load before the change")
        serve_deploy(ray_cluster, _serve_yaml(app, platform, new,
                                               [CHAMPION, CHALLENGER, CANDIDATE, FAULTY]))
        wait_for(lambda: _arms_ready({"champion": 30, "challenger": 70, "idle": 0}), 120,
                 "the Router to take the new weights")
        changed = time.monotonic()
        wait_for(lambda: len(load.since(changed)) >= 200, 300, "200 answers after the change")
    statuses = Counter(s for _, s, _ in load.results)
    assert statuses == {200: sum(statuses.values())}, statuses
    after = Counter(b["arm"] for _, b in load.since(changed))
    n = sum(after.values())
    assert abs(after["challenger"] - 0.7 * n) < 4.5 * (n * 0.21) ** 0.5, after


def test_sticky_key_keeps_each_user_on_one_arm(app, instances, ray_cluster, platform):
    sticky = {**SPLIT, "arms": [{**a, "weight": w} for a, w in zip(SPLIT["arms"], (50, 50, 0),
                                                                   strict=True)],
              "sticky_key": "user_id"}
    serve_deploy(ray_cluster, _serve_yaml(app, platform, sticky,
                                           [CHAMPION, CHALLENGER, CANDIDATE, FAULTY]))
    wait_for(lambda: _models()["sticky_key"] == "user_id", 120, "the sticky config")
    users = {}
    for inst in instances[:60] * 3:
        r = requests.post(f"{URL}/predict", json=inst, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        users.setdefault(inst["user_id"], set()).add(r.json()["arm"])
    assert all(len(arms) == 1 for arms in users.values()), users
    assert {next(iter(a)) for a in users.values()} == {"champion", "challenger"}


def test_shadow_errors_never_reach_the_caller(app, instances, ray_cluster, platform):
    config = {**SPLIT, "shadow": {"model": FAULTY, "sample": 1.0}}
    serve_deploy(ray_cluster, _serve_yaml(app, platform, config,
                                           [CHAMPION, CHALLENGER, CANDIDATE, FAULTY]))
    wait_for(lambda: (_models()["shadow"] or {}).get("model") == FAULTY
             and _models()["shadow"]["ready"], 120, "the faulty shadow")
    for inst in instances[:30]:
        r = requests.post(f"{URL}/predict", json=inst, headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["arm"] in ("champion", "challenger"), r.text

    def errors_counted():
        return sum(v for lb, v in _samples(_metrics(ray_cluster),
                                           "ray_mlp_serve_shadow_requests_total")
                   if lb["model"] == FAULTY and lb["outcome"] == "error") >= 30

    wait_for(errors_counted, 90, "the shadow's errors in the metrics")


def test_a_bad_router_config_is_refused_and_the_running_one_stays(app, instances, ray_cluster,
                                                                  platform):
    bad = {"arms": [{"name": "champion", "model": CHAMPION, "weight": -5},
                    {"name": "champion", "model": CHALLENGER, "weight": 0}]}
    path = _serve_yaml(app, platform, bad, [CHAMPION, CHALLENGER, CANDIDATE, FAULTY])
    # Our deploy command refuses it before Serve sees it ...
    out = subprocess.run([str(BIN / "mlp"), "serve", "deploy", str(path), "--address",
                          ray_cluster["address"]], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_AUTH_MODE": "token"}, cwd=REPO)
    assert out.returncode == 2 and "'arms.0.weight'" in out.stderr, out.stderr
    assert "nothing deployed" in out.stderr
    before = _models()
    # ... and a raw `serve deploy` of it leaves the Router on its previous config.
    serve_deploy(ray_cluster, path)
    wait_for(lambda: _models()["config_error"], 120, "the Router to report the bad config")
    after = _models()
    assert after["arms"] == before["arms"] and "weight" in after["config_error"]
    assert requests.post(f"{URL}/predict", json=instances[0], headers=AUTH,
                         timeout=30).status_code == 200


def test_alias_move_and_mlp_serve_reload_fail_nothing(app, instances, ray_cluster, platform,
                                                      versions):
    registry = ModelRegistry(platform)
    serve_deploy(ray_cluster, _serve_yaml(app, platform, SPLIT,
                                           [CHAMPION, CHALLENGER, CANDIDATE, FAULTY]))
    wait_for(lambda: _arms_ready({"champion": 90, "challenger": 10, "idle": 0})
             and not _models()["config_error"], 120, "the split config back")
    with Load(instances, threads=6) as load:
        wait_for(lambda: len(load.results) >= 50, 120, "load before the move")
        registry.set_alias(MODEL, "champion", versions["candidate"], reason="reload test")
        out = subprocess.run([str(BIN / "mlp"), "serve", "reload", "--app", "fraud",
                              "--address", ray_cluster["address"]], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "token"},
                             cwd=REPO)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"v{versions['candidate']}" in out.stdout.split("champion", 1)[1].splitlines()[0]
        moved = time.monotonic()
        wait_for(lambda: len(load.since(moved)) >= 60, 120, "60 answers after the reload")
    statuses = Counter(s for _, s, _ in load.results)
    assert statuses == {200: sum(statuses.values())}, statuses
    champion = {b["model_version"] for _, b in load.since(moved) if b["arm"] == "champion"}
    assert champion == {versions["candidate"]}
    registry.set_alias(MODEL, "champion", versions["champion"], reason="reload test done")


def test_killed_model_replica_under_load_is_replaced_without_failed_requests(app, instances):
    import ray
    from ray import serve
    from ray.util.state import list_actors

    name = f"ModelServer-{MODEL}-champion"

    def alive_replicas():
        return [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                if a.class_name == f"ServeReplica:fraud:{name}"]

    # The previous test's deploys may still be settling (or the state API slow on a busy box).
    def two_replicas():
        found = alive_replicas()
        return found if len(found) == 2 else None

    replicas = wait_for(two_replicas, 120, "the champion's two replicas")
    with Load(instances, threads=6, retries=3) as load:
        wait_for(lambda: len(load.results) >= 50, 120, "load before the kill")
        ray.kill(ray.get_actor(replicas[0].name, namespace="serve"), no_restart=True)
        killed = time.monotonic()

        def replaced():
            dep = serve.status().applications["fraud"].deployments[name]
            alive = alive_replicas()
            return (str(dep.status).endswith("HEALTHY") and len(alive) == 2
                    and replicas[0].actor_id not in {a.actor_id for a in alive})

        wait_for(replaced, 180, "Serve to replace the killed replica")
        wait_for(lambda: len(load.since(killed)) >= 100, 120, "answers after the kill")
    statuses = Counter(s for _, s, _ in load.results)
    assert statuses == {200: sum(statuses.values())}, statuses


def test_overload_is_answered_503_fast_never_500(app, instances):
    from concurrent.futures import ThreadPoolExecutor

    def one(inst):
        t = time.perf_counter()
        try:
            r = requests.post(f"{URL}/predict", json=inst, headers=AUTH, timeout=60)
            return r.status_code, time.perf_counter() - t
        except requests.RequestException:
            return -1, time.perf_counter() - t

    with ThreadPoolExecutor(96) as pool:
        results = list(pool.map(one, instances[:96] * 2))
    statuses = Counter(s for s, _ in results)
    assert set(statuses) <= {200, 503} and statuses[503] > 0 and statuses[200] > 0, statuses
    rejected = sorted(t for s, t in results if s == 503)
    assert rejected[len(rejected) // 2] < 2.0, rejected   # shed at once, not after queueing


def test_an_arm_whose_model_fails_to_load_never_gets_traffic(app, instances, ray_cluster,
                                                             platform, versions):
    """Adding a model is an args change (Serve rebuilds the app); its ModelServer fails to
    start, `serve status` says why, and the Router never routes to it. Alias polling is on."""
    from ray import serve

    broken = f"{MODEL}@broken"
    config = {"arms": [{"name": "champion", "model": CHAMPION, "weight": 50},
                       {"name": "broken", "model": broken, "weight": 50}]}
    serve_deploy(ray_cluster, _serve_yaml(app, platform, config, [CHAMPION, broken],
                                           reload_interval_s=1))
    name = f"ModelServer-{MODEL}-broken"

    def reported():
        deps = serve.status().applications["fraud"].deployments
        return name in deps and "takes inputs" in (deps[name].message or "") and deps[name]

    status = wait_for(reported, 300, "serve status to report the broken model")
    assert "retrain it" in status.message
    wait_for(lambda: _models()["arms"][0]["ready"] and not _models()["arms"][1]["ready"], 120,
             "the Router to serve the champion only", ignore=(requests.RequestException, KeyError))
    assert "takes inputs" in _models()["arms"][1]["error"] or "did not answer" in \
        _models()["arms"][1]["error"]
    arms = Counter()
    for inst in instances[:100]:
        r = requests.post(f"{URL}/predict", json=inst, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        arms[r.json()["arm"]] += 1
    assert arms == {"champion": 100}
    # Alias polling (reload_interval_s: 1): a promotion reaches the arm without any command.
    ModelRegistry(platform).set_alias(MODEL, "champion", versions["challenger"])

    def polled():
        r = requests.post(f"{URL}/predict", json=instances[0], headers=AUTH, timeout=30)
        return r.status_code == 200 and r.json()["model_version"] == versions["challenger"]

    wait_for(polled, 120, "the polled reload of the champion")
