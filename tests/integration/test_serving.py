"""The Serve app from serve_configs/fraud.yaml, deployed on the shared cluster, over real HTTP."""

import numpy as np
import pandas as pd
import pytest
import requests

from mlplatform.demo import to_instances
from mlplatform.features import FEATURE_COLUMNS
from mlplatform.registry import ModelRegistry, load_model


@pytest.fixture(scope="module")
def url(spine, platform):
    from ray import serve

    from mlplatform.serving import deploy

    base = deploy(args_overrides={"platform": platform.model_dump(mode="json")})
    yield base
    serve.shutdown()


@pytest.fixture(scope="module")
def sample(spine):
    feats = pd.read_parquet(spine.features_path)
    return pd.concat([feats[feats.is_fraud == 1].head(5), feats[feats.is_fraud == 0].head(15)])


def test_served_scores_equal_direct_model_scores(url, sample, platform, spine):
    direct = load_model(ModelRegistry(platform), "fraud@champion").predict(sample)
    instances = to_instances(sample[FEATURE_COLUMNS])
    single = [requests.post(f"{url}/predict", json=i, timeout=30).json() for i in instances[:5]]
    batch = requests.post(f"{url}/predict", json={"instances": instances}, timeout=30)
    assert batch.status_code == 200
    body = batch.json()
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], direct, rtol=1e-6)
    np.testing.assert_allclose([s["score"] for s in single], direct[:5], rtol=1e-6)
    for answer in single + [body]:
        assert answer["model_version"] == spine.model_version.version
        assert answer["model_name"] == "fraud" and answer["request_id"]
    # Fraud scores higher than legit on average: the served model is the trained one.
    assert np.mean(direct[:5]) > np.mean(direct[5:])


def test_request_id_is_echoed(url, sample):
    inst = to_instances(sample[FEATURE_COLUMNS].head(1))[0]
    r = requests.post(f"{url}/predict", json=inst, headers={"X-Request-ID": "abc-123"}, timeout=30)
    assert r.json()["request_id"] == "abc-123" and r.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("mutate,field", [
    (lambda i: {**i, "amount": "a lot"}, "amount"),
    (lambda i: {k: v for k, v in i.items() if k != "hour_of_day"}, "hour_of_day"),
    (lambda i: {**i, "user_txn_count": 2.5}, "user_txn_count"),
    (lambda i: {**i, "colour": "red"}, "colour"),
    (lambda i: {"instances": [i, {**i, "amount": None}]}, "instances[1].amount"),
])
def test_bad_body_gets_422_naming_the_field(url, sample, mutate, field):
    inst = to_instances(sample[FEATURE_COLUMNS].head(1))[0]
    r = requests.post(f"{url}/predict", json=mutate(inst), timeout=30)
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in [e["field"] for e in body["errors"]]
    assert body["error"] == "invalid_request" and body["request_id"]


@pytest.mark.parametrize("data", [b"{broken", b"NaN", b'{"amount": NaN}', b"[]"])
def test_malformed_json_is_422_not_500(url, data):
    r = requests.post(f"{url}/predict", data=data, headers={"content-type": "application/json"},
                      timeout=30)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_oversized_body_is_413(url):
    r = requests.post(f"{url}/predict", data=b'{"x": "' + b"a" * 1_100_000 + b'"}', timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["message"]


def test_healthz_and_models(url, spine):
    h = requests.get(f"{url}/healthz", timeout=30).json()
    assert h == {"status": "ok", "model_name": "fraud",
                 "model_version": spine.model_version.version}
    m = requests.get(f"{url}/models", timeout=30).json()["models"][0]
    assert m["model_ref"] == "fraud@champion"
    assert [c["name"] for c in m["inputs"]] == FEATURE_COLUMNS


def test_deploy_of_missing_model_fails_clearly(spine, platform):
    from mlplatform.serving import deploy

    with pytest.raises(RuntimeError, match="no alias 'nope'"):
        deploy(args_overrides={"model": "fraud@nope", "platform": platform.model_dump(mode="json")},
               timeout_s=120)


def test_generated_request_id_matches_header(url, sample):
    inst = to_instances(sample[FEATURE_COLUMNS].head(1))[0]
    r = requests.post(f"{url}/predict", json=inst, timeout=30)
    assert r.json()["request_id"] and r.json()["request_id"] == r.headers["x-request-id"]
