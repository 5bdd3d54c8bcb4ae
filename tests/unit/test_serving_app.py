"""The Serve app's config checks (pure logic: no Ray, no Serve)."""

import copy
import os
from pathlib import Path

import pytest
import yaml

from mlplatform.errors import ConfigError
from mlplatform.serving.app import (
    AppArgs,
    _app_args,
    autoscaling_problems,
    check_serve_config,
    default_router_config,
    server_name,
)

CONFIGS = Path(__file__).resolve().parents[2] / "serve_configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_pass_serve_schema_and_our_checks(path):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)
    check_serve_config(raw)
    app = raw["applications"][0]
    names = {d["name"] for d in app["deployments"]}
    if app["args"].get("embed_models"):         # fraud.yaml: the models in the Ingress
        assert names == {"Ingress", "Router", "Explainer"}
    else:                                        # each ModelServer sized in the YAML
        assert {server_name(m) for m in app["args"]["models"]} <= names
    router = next(d for d in app["deployments"] if d["name"] == "Router")
    assert router["ray_actor_options"]["num_cpus"] < 1     # fractional: small machines
    assert autoscaling_problems(app, _app_args(app["args"])) == []   # max_replicas reachable


def test_an_unreachable_model_server_max_replicas_is_reported_with_the_fix(caplog):
    """A ModelServer's ongoing requests are the Ingress's calls (at most
    args.model_calls_in_flight per Ingress replica): max_replicas above calls x Ingress
    replicas / target can never be reached, and the check says what to raise."""
    import logging

    raw = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    app = raw["applications"][0]
    app["args"]["embed_models"] = False                 # fraud.yaml embeds; ModelServers here
    server = {"name": "ModelServer-fraud-champion",
              "autoscaling_config": {"min_replicas": 1, "max_replicas": 8,
                                     "target_ongoing_requests": 4}}
    app["deployments"].append(server)
    app["args"]["model_calls_in_flight"] = 16
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    scaling = ingress.pop("autoscaling_config")         # fraud.yaml's Ingress autoscales (1-2)
    ingress["num_replicas"] = 1
    problems = autoscaling_problems(app, _app_args(app["args"]))
    assert len(problems) == 1 and "ModelServer-fraud-champion" in problems[0], problems
    assert "reach only 4" in problems[0] and "model_calls_in_flight to 32" in problems[0]
    with caplog.at_level(logging.WARNING, logger="mlplatform.serving.app"):
        check_serve_config(raw)                         # a warning, not a refusal
    assert "model_calls_in_flight to 32" in caplog.text
    ingress["num_replicas"] = 2                         # two Ingress replicas: 2 x 16 / 4 = 8
    assert autoscaling_problems(app, _app_args(app["args"])) == []
    del ingress["num_replicas"]
    ingress["autoscaling_config"] = {**scaling, "max_replicas": 2}   # scaled out: 2 x 16 / 4
    assert autoscaling_problems(app, _app_args(app["args"])) == []
    ingress["autoscaling_config"]["max_replicas"] = 1
    assert len(autoscaling_problems(app, _app_args(app["args"]))) == 1
    del ingress["autoscaling_config"]
    ingress["num_replicas"] = "auto"                    # Serve sizes the Ingress: no bound
    assert autoscaling_problems(app, _app_args(app["args"])) == []
    ingress["num_replicas"] = 1
    app["args"]["embed_models"] = True                  # no ModelServers at all
    assert autoscaling_problems(app, _app_args(app["args"])) == []


def test_server_names_follow_the_model_reference():
    assert server_name("fraud@champion") == "ModelServer-fraud-champion"
    assert server_name("fraud/3") == "ModelServer-fraud-v3"
    with pytest.raises(ValueError, match="invalid model reference"):
        server_name("fraud@@x")


def test_default_routing_sends_everything_to_the_first_model():
    assert default_router_config(["fraud/7", "fraud@challenger"]) == {
        "arms": [{"name": "v7", "model": "fraud/7", "weight": 100}]}
    assert AppArgs(project="examples/fraud").served == ["fraud@champion"]
    assert AppArgs(project="examples/wine", model="wine/2").served == ["wine/2"]
    from mlplatform.serving.dispatch import CALLS_IN_FLIGHT

    assert AppArgs().model_calls_in_flight == CALLS_IN_FLIGHT   # one default, two places
    assert AppArgs(models=["a@x", "a@x", "b@y"]).served == ["a@x", "b@y"]


@pytest.mark.parametrize("args,needle", [
    ({"max_items": 0}, "max_items"),
    ({"modle": "fraud@champion"}, "modle"),
    ({"models": ["fraud@@bad"]}, "invalid model reference"),
    ({"token_env": "lower-case"}, "token_env"),
])
def test_bad_app_args_are_named(args, needle):
    with pytest.raises(ConfigError, match=needle):
        _app_args(args)


def _ab() -> dict:
    return yaml.safe_load((CONFIGS / "fraud-ab.yaml").read_text())


def _router(raw: dict) -> dict:
    return next(d for d in raw["applications"][0]["deployments"] if d["name"] == "Router")


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: _router(r)["user_config"]["arms"][0].update(weight=-1), "arms.0.weight"),
    (lambda r: [a.update(weight=0) for a in _router(r)["user_config"]["arms"]],
     "positive weight"),
    (lambda r: _router(r)["user_config"]["arms"][1].update(name="champion"), "unique"),
    (lambda r: _router(r)["user_config"]["arms"][1].update(model="fraud@other"),
     "no ModelServer serves"),
    (lambda r: _router(r)["user_config"].update(shadow={"model": "fraud@nope", "sample": 0.5}),
     "no ModelServer serves"),
    (lambda r: _router(r)["user_config"]["shadow"].update(sample=1.5), "shadow.sample"),
    (lambda r: r["applications"][0]["deployments"].append({"name": "ModelServer-fraud-x"}),
     "do not exist"),
])
def test_bad_router_configs_are_refused_before_serve_sees_them(mutate, needle):
    raw = _ab()
    mutate(raw)
    with pytest.raises(ConfigError, match=needle):
        check_serve_config(raw)


def test_the_ab_config_is_accepted_unchanged():
    raw = _ab()
    before = copy.deepcopy(raw)
    check_serve_config(raw)
    assert raw == before


def test_serve_tokens_are_not_platform_config_keys(monkeypatch):
    from mlplatform.config import PlatformConfig

    for name in ("MLP_SERVE_TOKEN", "MLP_SERVE_ADMIN_TOKEN", "MLP_SERVE_FRAUD_TOKEN"):
        monkeypatch.setenv(name, "secret")
    assert PlatformConfig.load().storage_root    # loads: the variables are the Serve app's
    assert "secret" not in repr(PlatformConfig.load().to_display_dict())
    assert os.environ["MLP_SERVE_TOKEN"] == "secret"


def test_haproxy_env_keeps_its_files_and_ports_private(tmp_path):
    from mlplatform.serving.haproxy import haproxy_env

    env = haproxy_env(Path("/tmp/mh1"), {"stats": 1, "metrics": 2, "fallback": 3})
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith("/tmp/mh1/h/")
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]) == (
        "1", "3")
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in env
    fast = haproxy_env(Path("/tmp/mh1"), {"stats": 1, "metrics": 2, "fallback": 3},
                       throughput_optimized=True)
    assert fast == {**env, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    with pytest.raises(ValueError, match="too long"):
        haproxy_env(tmp_path / ("x" * 40), {"stats": 1, "metrics": 2, "fallback": 3})


class _CountingModel:
    """A model that records the size of every call (stands in for XGBoost: pure logic here)."""

    def __init__(self, scale: float = 10.0):
        self.calls: list[int] = []
        self.scale = scale

    def predict_matrix(self, matrix):
        self.calls.append(len(matrix))
        return matrix[:, 0] / self.scale


def _served(batch_wait_s: float, max_batch_size: int, scale: float = 10.0):
    """A ServedModel around a counting model (its batching logic, no registry)."""
    from mlplatform.serving.batching import AdaptiveBatch
    from mlplatform.serving.served_model import ServedModel

    served = object.__new__(ServedModel)
    model = _CountingModel(scale)
    served._state = {"model": model, "model_name": "m", "model_version": "1", "threshold": 0.5,
                     "task": "binary", "classes": None}
    served._batch = AdaptiveBatch(served._score_one, served._score_many, max_batch_size,
                                  batch_wait_s)
    return served, model


def test_a_lone_request_is_scored_at_once_and_concurrent_ones_are_batched(replica_context):
    import asyncio

    import numpy as np

    async def scenario():
        # A batch window far longer than a direct call, and batches that fill at 8 requests.
        server, model = _served(batch_wait_s=5.0, max_batch_size=8)
        loop = asyncio.get_running_loop()
        started = loop.time()
        lone = await server.predict(np.array([[3.0, 1.0]]))
        assert loop.time() - started < 2.5          # it did not wait out the batch window
        assert model.calls == [1] and lone["scores"] == [0.3]
        many = await asyncio.gather(*(server.predict(np.array([[float(i), 0.0]]))
                                      for i in range(8)))
        assert [m["scores"] for m in many] == [[i / 10] for i in range(8)]
        assert model.calls[1:] == [8]            # one model call for the 8 concurrent requests
        assert server._batch.in_flight == 0

    asyncio.run(scenario())


def test_two_models_in_one_process_never_share_a_batch(replica_context):
    """Embedded models (several ServedModels in one Ingress replica) batch apart: @serve.batch
    on a method would keep one queue per class and score B's requests with A's model."""
    import asyncio

    import numpy as np

    async def scenario():
        a, model_a = _served(batch_wait_s=0.05, max_batch_size=4, scale=10.0)
        b, model_b = _served(batch_wait_s=0.05, max_batch_size=4, scale=100.0)
        rows = [np.array([[float(i), 0.0]]) for i in range(4)]
        out = await asyncio.gather(*(a.predict(r) for r in rows), *(b.predict(r) for r in rows))
        assert [o["scores"][0] for o in out] == [i / 10 for i in range(4)] + [
            i / 100 for i in range(4)]
        assert sum(model_a.calls) == sum(model_b.calls) == 4

    asyncio.run(scenario())


@pytest.mark.parametrize("coalesce", [False, True], ids=["serve.batch", "coalescer"])
def test_a_bad_item_fails_only_its_own_caller_in_a_batch(replica_context, coalesce):
    """AdaptiveBatch: when the batch call raises, each item is retried alone, so a request
    that cannot be served fails by itself and the requests batched with it are answered."""
    import asyncio

    from mlplatform.serving.batching import AdaptiveBatch

    calls: list[list[int]] = []

    def one(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative item {x}")
        return x * 2

    def many(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        return [one(x) for x in xs]

    async def scenario():
        batch = AdaptiveBatch(one, many, max_batch_size=8, batch_wait_timeout_s=0.0,
                              coalesce=coalesce)
        out = await asyncio.gather(*(batch(x) for x in (1, 2, -3, 4)), return_exceptions=True)
        assert out[:2] == [2, 4] and out[3] == 8
        assert isinstance(out[2], ValueError) and "negative item -3" in str(out[2])
        assert calls == [[1, 2, -3, 4]]          # one batch call, then each alone
        assert await batch(5) == 10 and calls == [[1, 2, -3, 4]]   # alone: one() at once
        with pytest.raises(ValueError, match="negative item -1"):
            await batch(-1)
        assert batch.in_flight == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("coalesce", [False, True], ids=["serve.batch", "coalescer"])
def test_a_batch_function_that_loses_results_fails_loudly(replica_context, coalesce):
    import asyncio

    from mlplatform.serving.batching import AdaptiveBatch

    async def scenario():
        batch = AdaptiveBatch(lambda x: x, lambda xs: xs[:-1], max_batch_size=4,
                              batch_wait_timeout_s=0.0, coalesce=coalesce)
        out = await asyncio.gather(*(batch(x) for x in range(3)), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) and "2 results for 3 items" in str(o)
                   for o in out), out

    asyncio.run(scenario())


def test_the_coalescer_batches_what_queued_during_a_call_and_survives_cancelled_callers():
    """AdaptiveBatch(coalesce=True), the feature lookup's batching: a lone item is served alone
    at once; items that arrive together go in one call; items that arrive while a call runs go
    together in the next one (never more than max_batch_size); a caller cancelled while queued
    is dropped and the others are still answered."""
    import asyncio

    from mlplatform.serving.batching import AdaptiveBatch

    calls: list[list[int]] = []

    async def until(condition, timeout_s: float = 5.0) -> None:
        """Yield to the event loop until ``condition()`` holds (fails after ``timeout_s``)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0)           # one turn of the loop between checks

    async def scenario():
        gate = asyncio.Event()

        def one(x: int) -> int:
            calls.append([x])
            return -x

        async def many(xs: list[int]) -> list[int]:
            calls.append(list(xs))
            await gate.wait()                # the call takes a while: others queue meanwhile
            return [-x for x in xs]

        batch = AdaptiveBatch(one, many, max_batch_size=3, batch_wait_timeout_s=0.0,
                              coalesce=True)
        assert await batch(7) == -7 and calls == [[7]]
        first = [asyncio.ensure_future(batch(x)) for x in (1, 2)]
        await until(lambda: len(calls) == 2)  # the call of 1 and 2 runs (waits on gate)
        assert calls[-1] == [1, 2]
        queued = [asyncio.ensure_future(batch(x)) for x in (3, 4, 5, 6, 8)]
        await until(lambda: batch.in_flight == 7)   # all five wait behind that call
        queued[1].cancel()                   # 4 gives up while it waits
        gate.set()
        assert await asyncio.gather(*first) == [-1, -2]
        out = await asyncio.gather(*queued, return_exceptions=True)
        assert isinstance(out[1], asyncio.CancelledError)
        assert [o for i, o in enumerate(out) if i != 1] == [-3, -5, -6, -8]
        assert calls[2:] == [[3, 5], [6, 8]], calls   # 4 dropped; at most 3 per call
        assert batch.in_flight == 0

    asyncio.run(scenario())


def test_coalesce_refuses_a_batch_window():
    from mlplatform.serving.batching import AdaptiveBatch

    with pytest.raises(ValueError, match="batch_wait_timeout_s must be 0"):
        AdaptiveBatch(lambda x: x, lambda xs: xs, 4, 0.005, coalesce=True)


def test_concurrent_model_server_calls_are_coalesced_with_each_callers_rows(replica_context):
    """The Ingress's calls to a ModelServer: a request alone is one call with its own rows;
    concurrent requests share calls (at most ``calls_in_flight`` at a time, up to max_batch_size
    requests each), and each caller gets exactly its own rows' scores and the version info."""
    import asyncio

    import numpy as np

    from mlplatform.serving.dispatch import _coalesced

    calls: list[int] = []
    in_flight = {"now": 0, "most": 0}

    async def remote(matrix: np.ndarray) -> dict:
        calls.append(len(matrix))
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        await asyncio.sleep(0.001)     # a call takes time: others arrive meanwhile
        in_flight["now"] -= 1
        return {"scores": matrix[:, 0].tolist(), "model_name": "m", "model_version": "7",
                "threshold": 0.5}

    async def scenario():
        predict = _coalesced(remote, max_batch_size=8, calls_in_flight=3)
        alone = await predict(np.array([[3.0, 0.0], [4.0, 0.0]]))
        assert alone["scores"] == [3.0, 4.0] and calls == [2]
        calls.clear()
        matrices = [np.full((1 + i % 3, 2), float(i)) for i in range(100)]
        outs = await asyncio.gather(*(predict(m) for m in matrices))
        for i, (m, out) in enumerate(zip(matrices, outs, strict=True)):
            assert out["scores"] == [float(i)] * len(m), i
            assert out["model_version"] == "7" and out["threshold"] == 0.5
        assert sum(calls) == sum(len(m) for m in matrices)    # every row scored once
        assert len(calls) <= 100 // 8 + 3 + 1, calls   # coalesced
        assert 2 <= in_flight["most"] <= 3 + 1, in_flight

    asyncio.run(scenario())


def _asgi_call(app, method: str, path: str, root_path: str = "", body: bytes = b""):
    """One HTTP request straight into an ASGI app: (status, response body)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": root_path, "query_string": b"", "server": ("test", 80),
             "client": ("client", 1234), "headers": [(b"content-type", b"application/json")]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_post_predict_goes_straight_to_the_replica_and_the_rest_through_fastapi(monkeypatch):
    """PredictFastPath: POST /predict (below any route prefix) reaches the replica's predict
    without FastAPI's routing (no matched route in its scope); other methods and paths are
    FastAPI's (405, the trailing-slash redirect)."""
    import json
    from types import SimpleNamespace

    from fastapi.responses import JSONResponse
    from ray import serve

    from mlplatform.serving import deployments

    seen: list[tuple] = []

    class Replica:
        async def predict(self, request):
            seen.append((request.scope.get("route"), json.loads(await request.body())))
            return JSONResponse({"scored": True}, status_code=200)

    monkeypatch.setattr(serve, "get_replica_context",
                        lambda: SimpleNamespace(servable_object=Replica()))
    app = deployments.api
    assert _asgi_call(app, "POST", "/predict", body=b'{"amount": 1}') == (200, b'{"scored":true}')
    assert _asgi_call(app, "POST", "/fraud/predict", root_path="/fraud",
                      body=b'{"amount": 2}') == (200, b'{"scored":true}')
    assert seen == [(None, {"amount": 1}), (None, {"amount": 2})]   # FastAPI matched no route
    assert _asgi_call(app, "GET", "/predict")[0] == 405
    assert _asgi_call(app, "POST", "/predict/")[0] == 307
    assert _asgi_call(app, "POST", "/fraud/predictions", root_path="/fraud")[0] == 404
    assert len(seen) == 2


def test_summed_counter_records_once_per_tag_set_per_flush():
    """Per-request counts are summed in-process; the Ray counter gets one record per tag set
    per flush, from the counter's own task, and nothing in between."""
    import asyncio

    from mlplatform.serving.dispatch import SummedCounter

    class Recorder:              # stands in for ray.serve.metrics.Counter: records its calls
        def __init__(self):
            self.calls: list[tuple[float, dict]] = []

        def inc(self, value: float, tags: dict | None = None) -> None:
            self.calls.append((value, tags))

    async def until(condition, timeout_s: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.005)       # poll interval of this condition wait

    async def scenario():
        ray_counter = Recorder()
        counter = SummedCounter(ray_counter, flush_s=0.05)
        a, b = {"arm": "champion", "model_version": "3"}, {"arm": "challenger", "model_version": "4"}
        for _ in range(5):
            counter.inc(1, dict(a))
        counter.inc(3, dict(b))
        assert ray_counter.calls == []                  # nothing recorded per request
        await until(lambda: len(ray_counter.calls) == 2)
        assert sorted(ray_counter.calls, key=lambda c: c[1]["arm"]) == [(3.0, b), (5.0, a)]
        counter.inc(2, dict(a))
        await until(lambda: len(ray_counter.calls) == 3)
        assert ray_counter.calls[-1] == (2.0, a)        # only what came since the last flush
        counter.inc(1, dict(b))
        counter.flush()                                 # e.g. at shutdown: at once
        assert ray_counter.calls[-1] == (1.0, b) and len(ray_counter.calls) == 4
        counter._flusher.cancel()

    asyncio.run(scenario())


def test_an_embedded_model_that_fails_in_the_replica_gets_no_traffic_until_a_reload_loads_it(
        monkeypatch):
    """The build loaded every embedded model (app.check_loads); one that still fails in a
    replica (its store unreachable there) is recorded with its reason, takes no part in
    scoring, and the next reload loads it: the replica heals without a restart."""
    import asyncio

    from mlplatform.serving import served_model
    from mlplatform.serving.dispatch import Dispatcher

    tries: list[str] = []

    class Flaky:
        def __init__(self, registry, ref, *args, **kwargs):
            tries.append(ref)
            if len(tries) == 1:
                raise OSError("artifact store unreachable")
            self.polling = None

        async def predict(self, matrix):
            return {"scores": [0.5] * len(matrix)}

        def start_polling(self, interval_s):
            self.polling = interval_s

        async def reload(self):
            return {"reloaded": False}

    class Handle:
        def options(self, **kwargs):
            return self

    monkeypatch.setattr(served_model, "ServedModel", Flaky)
    dispatcher = Dispatcher(Handle(), {}, Handle())
    dispatcher.embed(object(), ["m@champion"], 32, 0.005, 0)
    assert "m@champion failed to load: OSError: artifact store unreachable" in \
        dispatcher._load_errors["m@champion"]
    assert "m@champion" not in dispatcher._predict
    assert asyncio.run(dispatcher.reload()) == {"m@champion": {"reloaded": False}}
    assert dispatcher._load_errors == {} and tries == ["m@champion", "m@champion"]
    assert "m@champion" in dispatcher._predict
    assert dispatcher._embedded["m@champion"].polling == 0
