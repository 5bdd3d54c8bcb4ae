import json

import pytest

from mlplatform.serving.schemas import (
    RequestRejected,
    instance_model,
    parse_body,
    validate_instances,
)

INPUTS = [{"name": "amount", "type": "double"}, {"name": "hour_of_day", "type": "long"}]
COLS = ["amount", "hour_of_day"]
MODEL = instance_model(INPUTS)


def _validate(body: bytes):
    instances, single = parse_body(body, max_items=3, max_body_bytes=200)
    return validate_instances(MODEL, instances, single, COLS)


def test_single_and_batch():
    assert _validate(b'{"amount": 12.5, "hour_of_day": 3}') == [[12.5, 3]]
    assert _validate(b'{"instances": [{"amount": 1, "hour_of_day": 3.0}]}') == [[1.0, 3]]


@pytest.mark.parametrize("body,field,status", [
    (b'{"amount": "12", "hour_of_day": 3}', "amount", 422),
    (b'{"amount": 12.0}', "hour_of_day", 422),
    (b'{"amount": 12.0, "hour_of_day": 3.5}', "hour_of_day", 422),
    (b'{"amount": NaN, "hour_of_day": 3}', "body", 422),
    (b'{"amount": 1e999, "hour_of_day": 3}', "amount", 422),
    (b'{"amount": 1, "hour_of_day": 3, "extra": 1}', "extra", 422),
    (b'{"instances": [{"amount": 1, "hour_of_day": 1}, {"amount": true, "hour_of_day": 1}]}',
     "instances[1].amount", 422),
    (b'{"instances": []}', "instances", 422),
    (b'{"instances": [{}, {}, {}, {}]}', "instances", 422),
    (b'[1, 2]', "body", 422),
    (b'{not json', "body", 422),
    (b'{"amount": 1.0, "hour_of_day": 1, "pad": "' + b"x" * 300 + b'"}', None, 413),
])
def test_rejections_name_the_field(body, field, status):
    with pytest.raises(RequestRejected) as exc:
        _validate(body)
    assert exc.value.status == status
    out = exc.value.body("rid")
    json.dumps(out)  # always serialisable
    assert out["request_id"] == "rid"
    if field:
        assert field in [e["field"] for e in out["errors"]]


def test_all_errors_are_reported_not_just_the_first():
    with pytest.raises(RequestRejected) as exc:
        _validate(b'{"amount": "x"}')
    assert {e.field for e in exc.value.errors} == {"amount", "hour_of_day"}


def test_roundtrip_as_plain_data():
    err = RequestRejected(422, "bad", [])
    again = RequestRejected.from_dict(err.to_dict())
    assert (again.status, again.message) == (422, "bad")
