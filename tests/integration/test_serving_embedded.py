"""``args.embed_models: true`` (serve_configs/fraud.yaml's layout): the models live in the
Ingress replicas, scored in-process.

The same Router config (arms, weights) routes among embedded models; ``mlp serve reload`` (its
library function) swaps in a moved alias without a failed request; no ModelServer deployment
exists; and a model that cannot load fails its deploy in ``serve status`` while the running app
keeps serving its previous config (last: it leaves the app DEPLOY_FAILED).
"""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from mlplatform.demo import to_instances
from mlplatform.registry import ModelRegistry, load_model
from tests.conftest import free_port, wait_for
from tests.integration.conftest import ADMIN, AUTH, REPO, serve_deploy
from tests.integration.serving_models import as_records, log_xgboost
from tests.projects import fraud_columns, project

FEATURE_COLUMNS, REQUEST_COLUMNS = fraud_columns()["inputs"], fraud_columns()["request"]
MODEL = "fraud_emb"
CHAMPION, CHALLENGER, BROKEN = (f"{MODEL}@{a}" for a in ("champion", "challenger", "broken"))
ROUTER = {"arms": [{"name": "champion", "model": CHAMPION, "weight": 50},
                   {"name": "challenger", "model": CHALLENGER, "weight": 50}]}


@pytest.fixture(scope="module")
def versions(spine, platform):
    registry = ModelRegistry(platform)
    out = {}
    for alias, rounds, kwargs in (("champion", 15, {}), ("challenger", 5, {"threshold": 0.2}),
                                  ("broken", 3, {"columns": FEATURE_COLUMNS[:5]}),
                                  ("next", 9, {})):
        uri = log_xgboost(platform, spine.features_path, rounds, seed=rounds, **kwargs)
        out[alias] = registry.register(uri, MODEL, alias=alias).version
    return out


def _serve_yaml(tmp, platform, models: list[str], router: dict):
    """serve_configs/fraud.yaml as shipped (embedded models), for ``fraud_emb``'s ``models``
    routed by ``router``, on a free port."""
    raw = yaml.safe_load((REPO / "serve_configs" / "fraud.yaml").read_text())
    app = raw["applications"][0]
    assert app["args"]["embed_models"] is True
    assert not [d for d in app["deployments"] if d["name"].startswith("ModelServer")]
    raw["http_options"]["port"] = PORT
    app["args"].update({"models": models, "reload_interval_s": 0,
                        "platform": platform.model_dump(mode="json"),
                        "project": str(project("fraud").root)})
    next(d for d in app["deployments"] if d["name"] == "Router")["user_config"] = router
    path = tmp / f"fraud-embedded-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


PORT = free_port()


@pytest.fixture(scope="module")
def url(versions, platform, ray_cluster, tmp_path_factory):
    """serve_configs/fraud.yaml (embedded models), deployed with the real `serve deploy`."""
    from ray import serve

    from mlplatform.serving import wait_until_running

    serve.shutdown()
    tmp = tmp_path_factory.mktemp("serve-embedded")
    serve_deploy(ray_cluster, _serve_yaml(tmp, platform, [CHAMPION, CHALLENGER], ROUTER))
    wait_for(lambda: serve.status().applications.get("fraud") is not None, 60, "the app")
    wait_until_running(["fraud"], 300)
    base = f"http://127.0.0.1:{PORT}"
    wait_for(lambda: requests.get(f"{base}/healthz", timeout=10).status_code == 200, 120,
             "the app to route", ignore=(requests.RequestException,))
    yield base, tmp
    serve.shutdown()


@pytest.fixture(scope="module")
def instances(spine):
    raw = pd.read_parquet(spine.raw_path, columns=REQUEST_COLUMNS).tail(120)
    raw["event_timestamp"] = raw["event_timestamp"].map(lambda t: t.isoformat())
    return to_instances(raw)


def test_no_model_server_runs_and_every_arm_is_ready(url):
    from ray import serve

    url, _ = url
    deployments = set(serve.status().applications["fraud"].deployments)
    assert deployments == {"Ingress", "Router", "Explainer"}
    view = requests.get(f"{url}/models", headers=AUTH, timeout=30).json()
    assert view["embedded"] is True and view["load_errors"] == {}
    assert {a["name"]: a["ready"] for a in view["arms"]} == {"champion": True, "challenger": True}


def test_embedded_arms_split_traffic_and_score_exactly_their_model(url, instances, versions,
                                                                   platform):
    from mlplatform.serving.deployments import FeatureLookup

    url, _ = url
    arms = Counter()
    for inst in instances[:100]:
        r = requests.post(f"{url}/predict", json=inst, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        arms[body["arm"]] += 1
        assert body["model_version"] == versions[body["arm"]]
        threshold = {"champion": 0.3, "challenger": 0.2}[body["arm"]]
        assert body["decision"] == ("fraud" if body["score"] >= threshold else "legit")
    assert set(arms) == {"champion", "challenger"} and min(arms.values()) > 20, arms
    batch = instances[:8]
    records = [{**i, "event_timestamp": pd.Timestamp(i["event_timestamp"])} for i in batch]
    lookup = FeatureLookup(platform.model_dump(mode="json"), project("fraud"))
    inputs = pd.DataFrame(lookup.features(records)["matrix"], columns=FEATURE_COLUMNS)
    registry = ModelRegistry(platform)
    for arm in ("champion", "challenger"):
        r = requests.post(f"{url}/predict", json={"instances": batch},
                          headers={**ADMIN, "X-MLP-Arm": arm}, timeout=30)
        assert r.status_code == 200, r.text
        direct = load_model(registry, f"{MODEL}/{versions[arm]}").predict(inputs)
        np.testing.assert_allclose([p["score"] for p in r.json()["predictions"]], direct,
                                   rtol=1e-6)


def test_concurrent_lookups_share_one_store_read_and_equal_lone_ones(platform, instances,
                                                                      replica_context):
    """FeatureLookup.lookup under concurrency: one online-store read for every request that
    arrived together, each request getting exactly its own rows (as a lone lookup gives them),
    and a request that cannot be looked up failing alone."""
    import asyncio

    from mlplatform.serving.deployments import FeatureLookup

    lookup = FeatureLookup(platform.model_dump(mode="json"), project("fraud"), max_batch_size=32)
    unknown = {**instances[5], "user_id": "u-nobody", "transaction_id": "t-unknown"}
    requests_ = [as_records([i]) for i in instances[:12]] + [as_records(instances[20:23]),
                                                           as_records([unknown])]
    lone = [lookup.features(r) for r in requests_]
    reads = []
    store_read = lookup._store.lookup_online
    lookup._store.lookup_online = lambda *a, **k: reads.append(len(a[0])) or store_read(*a, **k)
    bad = [{k: v for k, v in as_records([instances[30]])[0].items() if k != "merchant_id"}]

    async def burst():
        return await asyncio.gather(*(lookup.lookup(r) for r in [*requests_, bad]),
                                    return_exceptions=True)

    out = asyncio.run(burst())
    assert reads[0] == 12 + 3 + 1 + 1          # the whole burst in one read first
    assert isinstance(out[-1], KeyError) and "merchant_id" in str(out[-1])
    for got, want in zip(out[:-1], lone, strict=True):
        np.testing.assert_array_equal(got["matrix"], want["matrix"])   # NaNs equal too
        assert got["unknown"] == want["unknown"]
    assert "user" in out[-2]["unknown"][0] and not any(out[0]["unknown"])
    reads.clear()
    asyncio.run(lookup.lookup(requests_[0]))    # alone: looked up at once, by itself
    assert reads == [1]


def test_reload_swaps_a_moved_alias_in_without_a_failed_request(url, instances, versions,
                                                                platform):
    import threading

    url, _ = url

    from mlplatform.serving.app import reload_models

    registry = ModelRegistry(platform)
    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def load():
        with requests.Session() as http:
            i = 0
            while not stop.is_set():
                r = http.post(f"{url}/predict", json=instances[i % len(instances)],
                              headers={**ADMIN, "X-MLP-Arm": "champion"}, timeout=30)
                answers.append((r.status_code, r.json()))
                i += 1

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_for(lambda: len(answers) >= 20, 60, "answers before the move")
        registry.set_alias(MODEL, "champion", versions["next"], reason="embedded reload test")
        view = reload_models("fraud", timeout_s=120)
        assert next(a for a in view["arms"] if a["name"] == "champion")["model_version"] == \
            versions["next"]
        moved = len(answers)
        wait_for(lambda: len(answers) >= moved + 20, 60, "answers after the reload")
    finally:
        stop.set()
        worker.join(timeout=60)
        registry.set_alias(MODEL, "champion", versions["champion"], reason="test done")
    assert Counter(s for s, _ in answers) == {200: len(answers)}
    assert {b["model_version"] for _, b in answers[moved:]} == {versions["next"]}


def test_a_model_that_cannot_load_fails_its_deploy_in_serve_status_and_never_gets_traffic(
        url, instances, platform, ray_cluster):
    """An embedded model has no deployment of its own to fail: the app loads it once while it
    is built, so `serve deploy` of an arm whose model cannot load ends DEPLOY_FAILED in
    `serve status`, naming the model and why, and the running app keeps its previous config
    (its arms, their traffic) with no request failed. Last: it leaves the app DEPLOY_FAILED."""
    from ray import serve

    url, tmp = url
    router = {"arms": [*ROUTER["arms"], {"name": "broken", "model": BROKEN, "weight": 50}]}
    answers: Counter = Counter()
    with requests.Session() as http:
        serve_deploy(ray_cluster, _serve_yaml(tmp, platform, [CHAMPION, CHALLENGER, BROKEN],
                                               router))

        def failed() -> str | None:
            for inst in instances[:5]:
                r = http.post(f"{url}/predict", json=inst, headers=AUTH, timeout=30)
                answers[(r.status_code, r.json().get("arm"))] += 1
            app = serve.status().applications["fraud"]
            return app.message if app.status == "DEPLOY_FAILED" else None

        message = wait_for(failed, 180, "serve status to report the broken model")
        for inst in instances[5:25]:          # and after: the previous config still serves
            r = http.post(f"{url}/predict", json=inst, headers=AUTH, timeout=30)
            answers[(r.status_code, r.json().get("arm"))] += 1
    assert BROKEN in message and "takes inputs" in message and "cannot load" in message, message
    view = requests.get(f"{url}/models", headers=AUTH, timeout=30).json()
    assert {a["name"] for a in view["arms"]} == {"champion", "challenger"}
    assert {s for s, _ in answers} == {200}, answers
    assert {arm for _, arm in answers} == {"champion", "challenger"}, answers
