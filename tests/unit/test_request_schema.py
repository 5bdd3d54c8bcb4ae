import json

import pytest

from mlplatform.project import request_model
from mlplatform.serving.schemas import RequestRejected, parse_body, validate_instances
from tests.projects import project

MODEL = request_model(project("fraud").request)
GOOD = {"user_id": "u1", "merchant_id": "m1", "amount": 12.5, "merchant_category": "grocery",
        "country": "US", "device_type": "desktop"}


def _validate(body: bytes | dict, max_items: int = 3, max_bytes: int = 400):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    instances, single = parse_body(raw, max_items=max_items, max_body_bytes=max_bytes)
    return validate_instances(MODEL, instances, single)


def test_single_and_batch():
    (one,) = _validate({**GOOD, "event_timestamp": "2026-01-02T03:04:05Z", "transaction_id": "t"})
    assert one["amount"] == 12.5 and one["event_timestamp"].year == 2026
    assert one["transaction_id"] == "t"
    two = _validate({"instances": [GOOD, {**GOOD, "amount": 3}]})
    assert [r["amount"] for r in two] == [12.5, 3.0] and two[0]["event_timestamp"] is None


@pytest.mark.parametrize("body,field,status", [
    ({**GOOD, "amount": "12"}, "amount", 422),
    ({k: v for k, v in GOOD.items() if k != "user_id"}, "user_id", 422),
    ({**GOOD, "amount": -1}, "amount", 422),
    ({**GOOD, "user_id": 7}, "user_id", 422),
    ({**GOOD, "country": "Atlantis"}, "country", 422),
    ({**GOOD, "device_type": "smart_fridge"}, "device_type", 422),
    ({**GOOD, "event_timestamp": "yesterday"}, "event_timestamp", 422),
    (b'{"amount": NaN}', "body", 422),
    (json.dumps({**GOOD, "amount": 12345}).replace("12345", "1e999").encode(), "amount", 422),
    ({**GOOD, "extra": 1}, "extra", 422),
    ({"instances": [GOOD, {**GOOD, "amount": True}]}, "instances[1].amount", 422),
    ({"instances": []}, "instances", 422),
    ({"instances": [GOOD] * 4}, "instances", 422),
    (b'[1, 2]', "body", 422),
    (b'{not json', "body", 422),
    ({**GOOD, "merchant_id": "x" * 500}, None, 413),
])
def test_rejections_name_the_field(body, field, status):
    with pytest.raises(RequestRejected) as exc:
        _validate(body, max_bytes=400 if status == 413 else 10_000)
    assert exc.value.status == status
    out = exc.value.body("rid")
    json.dumps(out)  # always serialisable
    assert out["request_id"] == "rid"
    if field:
        assert field in [e["field"] for e in out["errors"]]


def test_all_errors_are_reported_not_just_the_first():
    with pytest.raises(RequestRejected) as exc:
        _validate({"amount": "x", "country": "Atlantis"})
    assert {e.field for e in exc.value.errors} >= {
        "amount", "country", "user_id", "merchant_id", "merchant_category", "device_type"}


def test_roundtrip_as_plain_data():
    err = RequestRejected(422, "bad", [])
    again = RequestRejected.from_dict(err.to_dict())
    assert (again.status, again.message) == (422, "bad")
