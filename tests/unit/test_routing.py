"""The Router's traffic split (pure logic): config validation, weighted and sticky choice,
zero-weight arms, shadow sampling."""

import math
from collections import Counter

import pytest

from mlplatform.errors import ConfigError
from mlplatform.serving.routing import ArmUnavailable, RouterConfig, RouteTable, Splitter, UnknownArm

ARMS = [{"name": "champion", "model": "fraud@champion", "weight": 90},
        {"name": "challenger", "model": "fraud@challenger", "weight": 10},
        {"name": "idle", "model": "fraud/3", "weight": 0}]


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("sticky", [False, True])
def test_a_90_10_split_lands_within_tolerance_and_zero_weight_gets_nothing(sticky):
    split = Splitter(RouterConfig.from_user_config({"arms": ARMS}), seed=1)
    n = 20_000
    counts = Counter(split.choose(f"user-{i}" if sticky else None) for i in range(n))
    assert set(counts) == {"champion", "challenger"}
    assert _within(counts["challenger"], n, 0.10), counts


def test_the_same_key_always_lands_on_the_same_arm_even_across_splitters():
    cfg = RouterConfig.from_user_config({"arms": ARMS, "sticky_key": "user_id"})
    a, b = Splitter(cfg, seed=1), Splitter(cfg, seed=2)
    for i in range(2_000):
        key = f"user-{i}"
        assert a.choose(key) == a.choose(key) == b.choose(key)


def test_a_weight_change_moves_only_the_keys_it_must():
    before = Splitter(RouterConfig.from_user_config({"arms": ARMS}))
    after = Splitter(RouterConfig.from_user_config({"arms": [
        {**ARMS[0], "weight": 80}, {**ARMS[1], "weight": 20}]}))
    keys = [f"user-{i}" for i in range(20_000)]
    moved = sum(before.choose(k) != after.choose(k) for k in keys)
    # 10 % of the keys must move from champion to challenger; none should move back.
    assert _within(moved, len(keys), 0.10)
    assert all(after.choose(k) == "challenger" for k in keys if before.choose(k) == "challenger")


def test_shadow_gets_its_sample_and_is_deterministic_per_request_id():
    split = Splitter(RouterConfig.from_user_config(
        {"arms": ARMS, "shadow": {"model": "fraud@candidate", "sample": 0.2}}))
    ids = [f"req-{i}" for i in range(20_000)]
    picked = [split.shadowed(r) for r in ids]
    assert _within(sum(picked), len(ids), 0.2)
    assert picked == [split.shadowed(r) for r in ids]
    assert not Splitter(RouterConfig.from_user_config({"arms": ARMS})).shadowed("req-1")


@pytest.mark.parametrize("config,match", [
    ({"arms": [{**ARMS[0], "weight": -1}]}, "arms.0.weight"),
    ({"arms": [{**ARMS[0], "weight": 0}, {**ARMS[2]}]}, "positive weight"),
    ({"arms": [ARMS[0], {**ARMS[1], "name": "champion"}]}, "unique.*champion"),
    ({"arms": [{**ARMS[0], "model": "../fraud@x"}]}, "invalid model"),
    ({"arms": []}, "arms"),
    ({"arms": ARMS, "shadow": {"model": "fraud@c", "sample": 1.5}}, "shadow.sample"),
    ({"arms": ARMS, "wieghts": {}}, "wieghts"),
    ([1, 2], "mapping"),
])
def test_a_bad_config_is_rejected_naming_the_problem(config, match):
    with pytest.raises(ConfigError, match=match):
        RouterConfig.from_user_config(config)


# ------------------------------------------------------------------ the route table --------
def _info(version: str) -> dict:
    return {"model_name": "fraud", "model_version": version, "threshold": 0.3, "kind": "xgboost",
            "inputs": ["amount"]}


def _table(ready: dict, **config) -> RouteTable:
    cfg = RouterConfig.from_user_config({"arms": ARMS, **config})
    return RouteTable(cfg, ready, {"fraud@challenger": "did not answer"}, version=7, seed=3,
                      served=["fraud@champion", "fraud@challenger", "fraud/3"])


def test_the_table_routes_only_to_ready_arms_with_weight():
    table = _table({"fraud@champion": _info("1"), "fraud/3": _info("3")})
    picked = Counter(table.arms_for([{}])[0].name for _ in range(2_000))
    assert picked == {"champion": 2_000}   # challenger not ready; idle has weight 0
    # A pin reaches a 0-weight arm that is ready, and refuses one that is not.
    assert {a.name for a in table.arms_for([{}, {}], pin="idle")} == {"idle"}
    with pytest.raises(ArmUnavailable, match="challenger.*did not answer"):
        table.arms_for([{}], pin="challenger")
    with pytest.raises(UnknownArm):
        table.arms_for([{}], pin="nope")


def test_no_ready_arm_is_unavailable_naming_why():
    with pytest.raises(ArmUnavailable, match="fraud@challenger: did not answer"):
        _table({"fraud/3": _info("3")}).arms_for([{}])


def test_the_sticky_key_routes_each_record_of_a_batch_by_its_own_key():
    table = _table({"fraud@champion": _info("1"), "fraud@challenger": _info("2")},
                   sticky_key="user_id")
    records = [{"user_id": f"u{i}"} for i in range(200)]
    first = [a.name for a in table.arms_for(records)]
    assert first == [a.name for a in table.arms_for(records)]
    assert set(first) == {"champion", "challenger"}


def test_the_shadow_gets_copies_only_while_its_model_is_ready():
    shadow = {"shadow": {"model": "fraud/3", "sample": 1.0}}
    ready = {"fraud@champion": _info("1")}
    assert _table(ready, **shadow).shadow_model("r1") is None
    assert _table({**ready, "fraud/3": _info("3")}, **shadow).shadow_model("r1") == "fraud/3"


def test_the_table_travels_as_plain_data_and_its_view_says_what_is_served():
    import json

    table = _table({"fraud@champion": _info("1")}, shadow={"model": "fraud/3", "sample": 0.2})
    data = json.loads(json.dumps(table.to_dict()))     # what crosses a Serve handle call
    again = RouteTable.from_dict(data)
    assert again.version == 7 and again.config == table.config and again.ready == table.ready
    view = again.view()
    assert [(a["name"], a["ready"]) for a in view["arms"]] == [
        ("champion", True), ("challenger", False), ("idle", False)]
    assert view["arms"][1]["error"] == "did not answer" and view["routing_version"] == 7
    assert view["shadow"] == {"model": "fraud/3", "sample": 0.2, "ready": False,
                              "error": "probing"}
