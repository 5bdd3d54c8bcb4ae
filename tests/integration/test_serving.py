"""The Serve app from serve_configs/fraud.yaml, deployed on the shared cluster, over real HTTP.

fraud.yaml's layout: the model embedded in the Ingress replicas (``args.embed_models: true``).
The ModelServer graph (``embed_models: false``) has its own suite: test_serving_routing.py.

Requests carry raw transactions (the fraud example's request schema); the app looks features up
in the online store. The served score must equal the score computed through the offline path
(point-in-time join of the same transaction + the project's model inputs): one feature
definition and one transformation, offline and online.
"""

import numpy as np
import pandas as pd
import pytest
import requests

from mlplatform.demo import to_instances
from mlplatform.registry import ModelRegistry, load_model
from tests.integration.conftest import AUTH, FRAUD_SERVE
from tests.integration.serving_models import check_burst
from tests.projects import fraud_columns, inputs

_C = fraud_columns()
FEATURE_COLUMNS, REQUEST_COLUMNS, VIEW_FEATURES = _C["inputs"], _C["request"], _C["features"]


@pytest.fixture(scope="module")
def url(spine, platform):
    from ray import serve

    from mlplatform.serving import deploy

    base = deploy(FRAUD_SERVE, args_overrides={"platform": platform.model_dump(mode="json")})
    yield base
    serve.shutdown()


def test_each_replica_records_its_deploy_in_the_audit_trail(url, spine, platform):
    registry = ModelRegistry(platform)
    deploys = registry.audit.events(model="fraud", action="deploy")
    champion = registry.resolve("fraud@champion").version
    assert any(e["version"] == champion and e["details"]["target"].startswith("serve:")
               and "fraud@champion" in e["details"]["target"] for e in deploys), deploys
    assert registry.audit.verify().ok


@pytest.fixture(scope="module")
def sample(spine):
    """New transactions of known users, half an hour after the data ends (what arrives live)."""
    raw = pd.read_parquet(spine.raw_path)
    end = raw["event_timestamp"].max()
    recent = raw[raw["event_timestamp"] > end - pd.Timedelta(days=2)].drop_duplicates("user_id")
    rows = recent.head(20).copy()
    rows["transaction_id"] = [f"live-{i}" for i in range(len(rows))]
    rows["event_timestamp"] = end + pd.Timedelta(minutes=30)
    rows["amount"] = np.r_[[5000.0] * 5, rows["amount"].iloc[5:]]    # some unusual amounts
    return rows[REQUEST_COLUMNS].reset_index(drop=True)


def _requests(frame):
    body = frame.copy()
    body["event_timestamp"] = body["event_timestamp"].map(lambda t: t.isoformat())
    return to_instances(body)


def _offline_scores(sample, platform):
    """The same transactions through the offline path: point-in-time join + model_inputs."""
    from mlplatform.features import FeatureStore

    entity = sample.assign(as_of=sample["event_timestamp"] - pd.Timedelta(microseconds=1))
    joined = FeatureStore(platform).get_historical_features(
        entity, VIEW_FEATURES, timestamp_column="as_of").to_pandas()
    joined = joined.set_index("transaction_id").loc[sample["transaction_id"]].reset_index()
    return load_model(ModelRegistry(platform), "fraud@champion").predict(
        inputs("fraud").frame(joined))


def test_served_scores_equal_offline_path_scores(url, sample, platform, spine):
    expected = _offline_scores(sample, platform)
    instances = _requests(sample)
    single = [requests.post(f"{url}/predict", json=i, headers=AUTH, timeout=30).json() for i in instances[:5]]
    batch = requests.post(f"{url}/predict", json={"instances": instances}, headers=AUTH,
                          timeout=30)
    assert batch.status_code == 200, batch.text
    body = batch.json()
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected, rtol=1e-6)
    np.testing.assert_allclose([s["score"] for s in single], expected[:5], rtol=1e-6)
    assert [p["transaction_id"] for p in body["predictions"]] == list(sample["transaction_id"])
    assert not any(p["unknown_entities"] for p in body["predictions"])
    for answer in single + body["predictions"]:
        assert answer["model_version"] == spine.model_version.version
        assert answer["model_name"] == "fraud" and answer["arm"] == "champion"
        threshold = float(spine.model_version.tags["decision_threshold"])
        assert answer["decision"] == ("fraud" if answer["score"] >= threshold else "legit")
    assert body["request_id"] and all(a["request_id"] for a in single)


def test_unknown_user_is_served_with_defaults_and_flagged(url, sample):
    inst = {**_requests(sample.head(1))[0], "user_id": "never-seen"}
    r = requests.post(f"{url}/predict", json=inst, headers=AUTH, timeout=30)
    # Every entity keyed by the user is unknown; the merchant is known.
    assert r.status_code == 200 and r.json()["unknown_entities"] == [
        "user", "user_country", "user_device"]
    assert 0.0 <= r.json()["score"] <= 1.0


def test_request_id_is_echoed(url, sample):
    inst = _requests(sample.head(1))[0]
    r = requests.post(f"{url}/predict", json=inst, headers={**AUTH, "X-Request-ID": "abc-123"}, timeout=30)
    assert r.json()["request_id"] == "abc-123" and r.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("mutate,field", [
    (lambda i: {**i, "amount": "a lot"}, "amount"),
    (lambda i: {k: v for k, v in i.items() if k != "user_id"}, "user_id"),
    (lambda i: {**i, "country": "Atlantis"}, "country"),
    (lambda i: {**i, "amount": -3}, "amount"),
    (lambda i: {**i, "colour": "red"}, "colour"),
    (lambda i: {"instances": [i, {**i, "amount": None}]}, "instances[1].amount"),
])
def test_bad_body_gets_422_naming_the_field(url, sample, mutate, field):
    inst = _requests(sample.head(1))[0]
    r = requests.post(f"{url}/predict", json=mutate(inst), headers=AUTH, timeout=30)
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in [e["field"] for e in body["errors"]]
    assert body["error"] == "invalid_request" and body["request_id"]


@pytest.mark.parametrize("data", [b"{broken", b"NaN", b'{"amount": NaN}', b"[]"])
def test_malformed_json_is_422_not_500(url, data):
    r = requests.post(f"{url}/predict", data=data, headers={**AUTH, "content-type": "application/json"},
                      timeout=30)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_oversized_body_is_413(url):
    r = requests.post(f"{url}/predict", data=b'{"x": "' + b"a" * 1_100_000 + b'"}', headers=AUTH,
                      timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["message"]


def test_healthz_and_models(url, spine):
    h = requests.get(f"{url}/healthz", timeout=30)     # no token needed
    assert h.status_code == 200 and h.json() == {"status": "ok", "ready_arms": ["champion"]}
    m = requests.get(f"{url}/models", headers=AUTH, timeout=30).json()
    assert m["embedded"] is True and m["load_errors"] == {}     # fraud.yaml's layout
    assert [(a["name"], a["model"], a["weight"], a["ready"], a["model_version"])
            for a in m["arms"]] == [("champion", "fraud@champion", 100, True,
                                     spine.model_version.version)]
    assert [c["name"] for c in m["inputs"]] == FEATURE_COLUMNS
    assert m["request_fields"] == REQUEST_COLUMNS and m["project"] == "fraud"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dGVzdDp0ZXN0"}])
def test_every_route_but_healthz_needs_the_token(url, sample, headers):
    inst = _requests(sample.head(1))[0]
    for method, path, body in (("post", "/predict", inst), ("post", "/explain", inst),
                               ("get", "/models", None)):
        r = requests.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_deploy_of_missing_model_fails_clearly(spine, platform):
    from mlplatform.serving import deploy

    with pytest.raises(RuntimeError, match="no alias 'nope'"):
        deploy(FRAUD_SERVE, args_overrides={"models": ["fraud@nope"],
                               "platform": platform.model_dump(mode="json")},
               router_config={"arms": [{"name": "nope", "model": "fraud@nope", "weight": 1}]},
               timeout_s=120)


def test_generated_request_id_matches_header(url, sample):
    inst = _requests(sample.head(1))[0]
    r = requests.post(f"{url}/predict", json=inst, headers=AUTH, timeout=30)
    assert r.json()["request_id"] and r.json()["request_id"] == r.headers["x-request-id"]


def test_concurrent_requests_are_each_answered_for_their_own_transaction(url, spine, platform):
    """A burst of concurrent requests, their lookups and model calls batched in the Ingress:
    each request gets the score of its own transactions."""
    raw = pd.read_parquet(spine.raw_path, columns=REQUEST_COLUMNS).tail(120)
    raw["event_timestamp"] = raw["event_timestamp"].map(lambda t: t.isoformat())
    check_burst(url, to_instances(raw), platform, "fraud", AUTH)
