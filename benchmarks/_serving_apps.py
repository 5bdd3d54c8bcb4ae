"""The apps and models that ``serving.py`` measures (uvicorn, one-deployment Serve, composed).

- :func:`uvicorn_app`: one FastAPI app for plain uvicorn (``--factory``);
- :func:`serve_app`: the same routes as a one-replica Serve deployment, each also through
  ``@serve.batch``;
- :func:`train_model`: the synthetic booster (the fraud job's parameters, on random data);
- :func:`make_torch_model`: the torch MLP (the platform's ``TabularNet``, random init, untrained:
  a cost stand-in for a medium-size neural model), saved without pickle;
- :func:`model_call_costs`: each model's call alone, 1 row vs a full batch, in-process;
- :func:`prepare_fraud`: the real registered model and online store (``run_spine`` of the fraud
  example project, ``examples/fraud``), and one transaction: its raw request body for the
  composed app and its 21 model inputs for the rest;
- :func:`router_overhead`: the arm choice (done in the Ingress), timed in-process;
- the servers: :func:`uvicorn_server` (a process) and :func:`serve_instance` (Serve behind its
  default proxy or HAProxy), and what proves which ingress answered (:func:`listener`,
  :func:`haproxy_counts`).

``serving.py`` registers this module with Ray's cloudpickle by value: the Serve replicas get the
deployment class with everything it uses, without importing ``_serving_apps``.
"""

# No `from __future__ import annotations`: the Serve replica re-reads the routes' annotations,
# and a string "Row" it cannot resolve there turns the JSON body into a query parameter (422).
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import timeit
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from mlplatform.serving.haproxy import haproxy_env

HERE = Path(__file__).parent

N_FEATURES = 21
COLUMNS = [f"f{i}" for i in range(N_FEATURES)]
#: The fraud example's booster (examples/fraud/mlplatform.yaml ``models.xgboost.train``: its
#: ``params`` over training.config.DEFAULT_XGB_PARAMS and the binary task's objective, i.e.
#: ``train_config(project, "xgboost").xgb_params()``), without the evaluation metrics (nothing is
#: evaluated here) and min_child_weight (1.0, XGBoost's default).
XGB_PARAMS = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.1,
              "subsample": 0.8, "colsample_bytree": 0.8, "seed": 0}
XGB_ROUNDS = 300
#: One thread per predict call: a 1-row call gains nothing from more, and on a small box the
#: threads would fight the proxy for the cores.
PREDICT_THREADS = 1
#: ServingConfig's @serve.batch defaults (also the composed app's, serve_configs/fraud.yaml).
MAX_BATCH_SIZE, BATCH_WAIT_S = 32, 0.005
#: Per replica: above the highest concurrency measured, so that requests reach the replica
#: (and @serve.batch can fill its batches) rather than queue in the proxy. Same for every row.
MAX_ONGOING_REQUESTS = 64
#: The torch MLP (``TabularNet`` over the 21 columns, all numeric): embedding width (unused: no
#: categorical column), hidden widths, dropout; random init from this seed, never trained.
#: 3 x 3072 (~19 M parameters, ~76 MB of float32 weights): one row's forward pass costs several
#: times a no-op request on every ingress (~4.4 ms on this kind of machine, one thread), so
#: @serve.batch's ceiling there is above its 3x goal; 3 x 1024 (2.1 M, ~0.26 ms per row) cost
#: less than a request's own serving overhead, so no batching could reach 3x (ceilings 2-2.9x).
TORCH_EMBEDDING_DIM, TORCH_HIDDEN, TORCH_DROPOUT, TORCH_SEED = 4, [3072, 3072, 3072], 0.0, 0
#: The spine behind the composed app (registered model + online store), kept small.
SPINE_ROWS, SPINE_SEED, SPINE_ROUNDS = 5000, 3, 300
MODEL_REF = "fraud@champion"
#: The 90/10 split whose arm choice is timed (as in the Router's user_config).
SPLIT = {"arms": [{"name": "champion", "model": "fraud@champion", "weight": 90},
                  {"name": "challenger", "model": "fraud@challenger", "weight": 10}]}


class Row(BaseModel):
    """The body of ``POST /predict``, ``/fraud`` and ``/torch``: one row of model inputs."""

    features: list[float]


class _Scorer:
    """A booster, scoring rows as ``LoadedModel.predict_matrix`` does in the composed app: one
    in-place model call on the rows."""

    def __init__(self, model_path: str, columns: list[str]):
        import xgboost as xgb

        self._booster = xgb.Booster(model_file=model_path)
        self._booster.set_param({"nthread": PREDICT_THREADS})
        self._columns = columns

    def score(self, rows: list[list[float]]) -> list[float]:
        matrix = np.asarray(rows, dtype=np.float64).reshape(-1, len(self._columns))
        return self._booster.inplace_predict(matrix, validate_features=False).tolist()


class _TorchScorer:
    """The torch MLP (a cost stand-in for a medium-size neural model), loaded without pickle
    (``load_torch_model``: ``arch.json`` + ``torch.load(weights_only=True)``), scoring rows in
    one forward call on a float32 tensor of the rows. One intra-op thread in this process, for
    the reason of ``PREDICT_THREADS``."""

    def __init__(self, folder: str):
        import torch

        from mlplatform.models.torch_net import load_torch_model

        torch.set_num_threads(PREDICT_THREADS)
        self._net = load_torch_model(folder).net
        self._columns = len(self._net.arch.feature_columns)

    def score(self, rows: list[list[float]]) -> list[float]:
        import torch

        x = torch.from_numpy(np.asarray(rows, dtype=np.float32).reshape(-1, self._columns))
        with torch.inference_mode():
            return torch.sigmoid(self._net(x)).tolist()


def uvicorn_app():
    """The app of the ``uvicorn`` rows: ``uvicorn --factory _serving_apps:uvicorn_app``, with
    the model files in ``MLP_BENCH_MODEL`` / ``MLP_BENCH_FRAUD_MODEL``, the fraud model's input
    names (JSON) in ``MLP_BENCH_FRAUD_COLUMNS`` and the torch MLP's folder in
    ``MLP_BENCH_TORCH_MODEL``."""
    from fastapi import FastAPI

    api = FastAPI()
    synthetic = _Scorer(os.environ["MLP_BENCH_MODEL"], COLUMNS)
    fraud = _Scorer(os.environ["MLP_BENCH_FRAUD_MODEL"],
                    json.loads(os.environ["MLP_BENCH_FRAUD_COLUMNS"]))
    mlp = _TorchScorer(os.environ["MLP_BENCH_TORCH_MODEL"])

    @api.get("/noop")
    async def noop() -> dict:
        return {"ok": True}

    @api.post("/predict")
    async def predict(row: Row) -> dict:
        return {"score": synthetic.score([row.features])[0]}

    @api.post("/fraud")
    async def score_fraud(row: Row) -> dict:
        return {"score": fraud.score([row.features])[0]}

    @api.post("/torch")
    async def score_torch(row: Row) -> dict:
        return {"score": mlp.score([row.features])[0]}

    return api


def serve_app(model_path: str, fraud_path: str, fraud_columns: list[str], torch_folder: str,
              replicas: int = 1):
    """The same app as a Serve deployment (``replicas`` replicas), plus ``/predict-batched``,
    ``/fraud-batched`` and ``/torch-batched``: the same scoring through ``@serve.batch``."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Bench")
    @serve.ingress(api)
    class Bench:
        def __init__(self, model_path: str, fraud_path: str, fraud_columns: list[str],
                     torch_folder: str):
            self._synthetic = _Scorer(model_path, COLUMNS)
            self._fraud = _Scorer(fraud_path, fraud_columns)
            self._torch = _TorchScorer(torch_folder)

        @api.get("/noop")
        async def noop(self) -> dict:
            return {"ok": True}

        @api.post("/predict")
        async def predict(self, row: Row) -> dict:
            return {"score": self._synthetic.score([row.features])[0]}

        @api.post("/fraud")
        async def score_fraud(self, row: Row) -> dict:
            return {"score": self._fraud.score([row.features])[0]}

        @api.post("/torch")
        async def score_torch(self, row: Row) -> dict:
            return {"score": self._torch.score([row.features])[0]}

        @api.post("/predict-batched")
        async def predict_batched(self, row: Row) -> dict:
            return {"score": await self._synthetic_batch(row.features)}

        @api.post("/fraud-batched")
        async def fraud_batched(self, row: Row) -> dict:
            return {"score": await self._fraud_batch(row.features)}

        @api.post("/torch-batched")
        async def torch_batched(self, row: Row) -> dict:
            return {"score": await self._torch_batch(row.features)}

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
        async def _synthetic_batch(self, rows: list[list[float]]) -> list[float]:
            return self._synthetic.score(rows)

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
        async def _fraud_batch(self, rows: list[list[float]]) -> list[float]:
            return self._fraud.score(rows)

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
        async def _torch_batch(self, rows: list[list[float]]) -> list[float]:
            return self._torch.score(rows)

    return Bench.options(num_replicas=replicas, max_ongoing_requests=MAX_ONGOING_REQUESTS).bind(
        model_path, fraud_path, fraud_columns, torch_folder)


def hop_app(replicas: int = 1):
    """One Serve hop and nothing else: ``GET /hop`` on ``HopFront`` (``replicas`` replicas)
    awaits ``HopEcho.predict`` (one replica) with one row of ``N_FEATURES`` floats, the shape of
    the composed app's ModelServer call, over the same transport
    (:func:`mlplatform.serving.dispatch.model_handle`: Serve's gRPC channel), and answers
    ``{"ok": true}``. Neither does any work: the floor of a graph with one hop per request."""
    from fastapi import FastAPI
    from ray import serve

    from mlplatform.serving.dispatch import model_handle

    api = FastAPI()

    @serve.deployment(name="HopEcho")
    class HopEcho:
        async def predict(self, matrix: np.ndarray) -> dict:
            return {"scores": [0.0] * len(matrix)}

    @serve.deployment(name="HopFront")
    @serve.ingress(api)
    class HopFront:
        def __init__(self, echo):
            self._echo = model_handle(echo)
            self._row = np.zeros((1, N_FEATURES))

        @api.get("/hop")
        async def hop(self) -> dict:
            await self._echo.predict.remote(self._row)
            return {"ok": True}

    echo = HopEcho.options(max_ongoing_requests=MAX_ONGOING_REQUESTS).bind()
    return HopFront.options(num_replicas=replicas,
                            max_ongoing_requests=MAX_ONGOING_REQUESTS).bind(echo)


def model_call_costs(model_path: Path, fraud: "FraudTarget", torch_folder: Path,
                     row: list[float], batch: int = MAX_BATCH_SIZE,
                     repeat: int = 30) -> dict[str, dict[str, float]]:
    """Each model's call alone, in this process, as the servers make it (``PREDICT_THREADS``):
    ms per call of 1 row and of ``batch`` rows (median of ``repeat``), and the speed-up per row
    that a full batch gives the model itself (``batch`` x the 1-row call / the batch call): what
    @serve.batch could reach if serving cost nothing. ``row``: the synthetic row (XGBoost and
    torch MLP); the fraud model scores ``fraud.features``."""
    scorers = {"xgb": (_Scorer(str(model_path), COLUMNS), row),
               "fraud": (_Scorer(str(fraud.model_path), fraud.columns), fraud.features),
               "torch": (_TorchScorer(str(torch_folder)), row)}
    out = {}
    for name, (scorer, one) in scorers.items():
        ms = {}
        for n in (1, batch):
            rows = [one] * n
            scorer.score(rows)    # warm-up
            times = sorted(timeit.repeat(lambda f=scorer.score, r=rows: f(r), number=1,
                                         repeat=repeat))
            ms[n] = times[len(times) // 2] * 1000
        out[name] = {"ms_1": round(ms[1], 3), "ms_batch": round(ms[batch], 3), "batch": batch,
                     "speedup": round(batch * ms[1] / ms[batch], 2)}
    return out


def train_model(path: Path) -> list[float]:
    """Train the synthetic booster, save it to ``path``; return the row to score."""
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, N_FEATURES)).astype(np.float32)
    logit = x @ rng.normal(size=N_FEATURES) + x[:, 0] * x[:, 1] - 2
    y = rng.random(len(x)) < 1 / (1 + np.exp(-logit))
    xgb.train({**XGB_PARAMS, "nthread": os.cpu_count()},
              xgb.DMatrix(x, label=y, feature_names=COLUMNS),
              num_boost_round=XGB_ROUNDS).save_model(path)
    return [round(float(v), 4) for v in x[0]]


def make_torch_model(folder: Path) -> int:
    """Build the torch MLP and save it into ``folder`` (``save_torch_model``: state_dict +
    arch.json, no pickle); return its parameter count.

    The platform's ``TabularNet`` over the 21 columns (all numeric: means 0, stds 1), hidden
    layers ``TORCH_HIDDEN``, no dropout, random init (``torch.manual_seed(TORCH_SEED)``), never
    trained: a cost stand-in for a medium-size neural model, whose scores mean nothing.
    """
    import torch

    from mlplatform.models.torch_net import TabularArch, TabularNet, save_torch_model

    arch = TabularArch(task="binary", num_outputs=1,
                       feature_columns=COLUMNS, embedding_dim=TORCH_EMBEDDING_DIM,
                       hidden_sizes=TORCH_HIDDEN, dropout=TORCH_DROPOUT,
                       numeric_means=dict.fromkeys(COLUMNS, 0.0),
                       numeric_stds=dict.fromkeys(COLUMNS, 1.0))
    torch.manual_seed(TORCH_SEED)
    net = TabularNet(arch)
    save_torch_model(folder, net, arch)
    return sum(p.numel() for p in net.parameters())


@dataclass(frozen=True)
class FraudTarget:
    """The registered model, saved as a booster file, and one transaction to score."""

    platform: dict[str, Any]       # PlatformConfig (JSON) for deploy()'s args.platform
    project: str                   # the project folder (absolute) for deploy()'s args.project
    model_path: Path               # the registered version's booster
    columns: list[str]             # its inputs (the project's model_inputs.columns)
    version: str                   # e.g. models:/fraud/1
    instance: dict[str, Any]       # the composed app's request body: one raw transaction
    features: list[float]          # that transaction's model inputs (FeatureLookup's output)
    lookup_ms: float               # FeatureLookup.features for it, in-process (median)
    spine_s: dict[str, float]      # run_spine's steps


def prepare_fraud(work: Path, say) -> FraudTarget:
    """Run the spine of the fraud example into ``work/store`` (needs the connected Ray), load
    ``fraud@champion`` and compute the model inputs of the last transaction as the composed
    app's FeatureLookup does (same online store, same code: the project's features looked up
    online, then its model-inputs function); time that lookup."""
    import pandas as pd
    from _common import fraud_project

    from mlplatform.config import PlatformConfig
    from mlplatform.demo import to_instances
    from mlplatform.pipelines import run_spine
    from mlplatform.project import request_model
    from mlplatform.registry import ModelRegistry, load_model
    from mlplatform.serving.deployments import FeatureLookup
    from mlplatform.serving.schemas import validate_instances
    from mlplatform.training import TrainConfig

    project = fraud_project()
    platform = PlatformConfig(storage_root=work / "store", project=project.root)
    spine = run_spine(platform, project, n_rows=SPINE_ROWS, seed=SPINE_SEED, on_step=say,
                      train_config=TrainConfig(num_boost_round=SPINE_ROUNDS,
                                               early_stopping_rounds=SPINE_ROUNDS))
    loaded = load_model(ModelRegistry(platform), MODEL_REF)
    model_path = work / "fraud.ubj"
    loaded.booster.save_model(model_path)
    raw = pd.read_parquet(spine.raw_path, columns=project.request_fields).tail(1)
    ts = project.request.timestamp
    raw[ts] = raw[ts].map(lambda t: t.isoformat())
    instance = to_instances(raw)[0]
    plat = platform.model_dump(mode="json")
    # The Ingress's request model and validation, then its FeatureLookup (built the same way).
    schema = request_model(project.request, f"{project.name}_request")
    records = validate_instances(schema, [instance], True)
    lookup = FeatureLookup(plat, project)
    matrix = lookup.features(records)["matrix"]
    times = sorted(timeit.repeat(lambda: lookup.features(records), number=1, repeat=50))
    return FraudTarget(plat, str(project.root), model_path, loaded.feature_names,
                       loaded.version.uri, instance, [float(v) for v in matrix[0]],
                       times[len(times) // 2] * 1000,
                       {k: round(v, 1) for k, v in spine.timings_s.items()})


def router_overhead(number: int = 20_000, repeat: int = 5) -> dict[str, float]:
    """Microseconds per ``Splitter.choose()`` (weighted random), ``choose(key)`` (sticky: a
    SHA-256 of the key) and ``RouteTable.arms_for([record])`` (what the Ingress calls per
    request) on the 90/10 split, best of ``repeat`` timeit runs."""
    from mlplatform.serving.routing import RouterConfig, RouteTable, Splitter

    config = RouterConfig.from_user_config({**SPLIT, "sticky_key": "user_id"})
    splitter = Splitter(config, seed=0)
    info = {"model_name": "fraud", "model_version": "1", "threshold": 0.5, "kind": "xgboost"}
    table = RouteTable(RouterConfig.from_user_config(SPLIT),
                       {a["model"]: info for a in SPLIT["arms"]}, seed=0)
    record = [{"user_id": "u-1", "amount": 12.5}]
    keys = [f"u-{i}" for i in range(1000)]

    def sticky() -> None:
        for k in keys:
            splitter.choose(k)

    random_us = min(timeit.repeat(splitter.choose, number=number, repeat=repeat)) / number
    sticky_us = min(timeit.repeat(sticky, number=number // len(keys), repeat=repeat)) / number
    arms_us = min(timeit.repeat(lambda: table.arms_for(record), number=number,
                                repeat=repeat)) / number
    return {"choose_us": random_us * 1e6, "choose_key_us": sticky_us * 1e6,
            "arms_for_us": arms_us * 1e6}


# ------------------------------------------------------------------ the servers ----------
def _free_port() -> int:
    from mlplatform._ports import free_port

    return free_port()


def listener(port: int) -> str:
    """Name of the process listening on ``port`` (the proof of which ingress answers).

    A listener that exits meanwhile is skipped: HAProxy reloads by starting a new process that
    takes over the port, and the old one leaves once its connections are done.
    """
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            with contextlib.suppress(psutil.NoSuchProcess):
                return psutil.Process(c.pid).name()
    return "?"


def haproxy_counts(stats_port: int) -> dict[str, int]:
    """From HAProxy's stats page: requests its HTTP frontend received, and the sessions it sent
    to the replicas' own HTTP servers vs to the fallback Serve proxy."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5) as r:
        rows = list(csv.DictReader(io.StringIO(r.read().decode().lstrip("# "))))
    count = {"frontend": 0, "sessions_to_replicas": 0, "sessions_to_fallback_proxy": 0}
    for row in rows:
        if row["pxname"] == "http_frontend" and row["svname"] == "FRONTEND":
            count["frontend"] += int(row["req_tot"] or 0)
        elif row["svname"].startswith("SERVE_REPLICA"):
            count["sessions_to_replicas"] += int(row["stot"] or 0)
        elif row["svname"].startswith("SERVE_PROXY_ACTOR"):
            count["sessions_to_fallback_proxy"] += int(row["stot"] or 0)
    return count


def app_cpu_cores(app: str, seconds: float = 3.0) -> float:
    """Cores the replicas of Serve application ``app`` use over ``seconds`` (summed over its
    processes; call it while the app gets no requests: its background cost)."""
    import time

    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"])
             if f"ServeReplica:{app}:" in " ".join(p.info["cmdline"] or [])]

    def used() -> dict[int, float]:
        out = {}
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out

    before, start = used(), time.monotonic()
    time.sleep(seconds)   # the sampling window of this measurement
    after = used()        # a process that left meanwhile counts for nothing
    return sum(after[pid] - before[pid] for pid in after if pid in before) / (
        time.monotonic() - start)


def haproxy_replicas_up(stats_port: int) -> int:
    """Replica HTTP servers HAProxy lists as UP (its config follows Serve's replicas)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5) as r:
        rows = list(csv.DictReader(io.StringIO(r.read().decode().lstrip("# "))))
    return sum(row["svname"].startswith("SERVE_REPLICA") and row["status"].startswith("UP")
               for row in rows)


@contextlib.contextmanager
def uvicorn_server(model_path: Path, fraud: FraudTarget, torch_folder: Path,
                   work: Path) -> Iterator[int]:
    """One uvicorn process (its own process group) serving ``uvicorn_app``; yields the port."""
    port = _free_port()
    with open(work / "uvicorn.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "_serving_apps:uvicorn_app", "--factory", "--app-dir",
             str(HERE), "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "MLP_BENCH_MODEL": str(model_path),
                 "MLP_BENCH_FRAUD_MODEL": str(fraud.model_path),
                 "MLP_BENCH_FRAUD_COLUMNS": json.dumps(fraud.columns),
                 "MLP_BENCH_TORCH_MODEL": str(torch_folder)}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def serve_instance(ingress: str, work: Path) -> Iterator[tuple[int, int | None, dict | None]]:
    """Serve on the connected Ray, behind ``ingress``; yields (HTTP port, HAProxy stats port,
    the controller's env)."""
    from ray import serve

    port, stats, env = _free_port(), None, None
    if ingress.startswith("serve-haproxy"):
        ports = {"stats": _free_port(), "metrics": _free_port(), "fallback": _free_port()}
        stats, env = ports["stats"], haproxy_env(
            work, ports, throughput_optimized=ingress.endswith("-tput"))
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": env}} if env else None)
    try:
        yield port, stats, env
    finally:
        serve.shutdown()


def kill_strays(work: Path) -> list[int]:
    """HAProxy processes still running on this run's config after Ray is down (should be none)."""
    import psutil

    strays = [p for p in psutil.process_iter(["name", "cmdline"])
              if p.info["name"] == "haproxy" and str(work) in " ".join(p.info["cmdline"] or [])]
    for p in strays:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return [p.pid for p in strays]
