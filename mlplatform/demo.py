"""``mlp demo`` / ``make demo``: the whole lifecycle on embedded defaults, in one process.

generate data -> Ray Data features -> Ray Train XGBoost -> MLflow run -> registry @champion ->
Ray Serve app (serve_configs/fraud.yaml) -> real HTTP requests -> summary -> clean shutdown.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig


@dataclass(frozen=True)
class DemoPrediction:
    transaction_id: str
    amount: float
    is_fraud: int
    score: float
    model_version: str
    request_id: str


def sample_instances(raw_path: Path, since, n_fraud: int = 3, n_legit: int = 3,
                     seed: int = 0) -> tuple[Any, list[dict[str, Any]]]:
    """Pick raw transactions at/after ``since`` (not yet in the online store) to replay live.

    Returns:
        The picked rows (with labels) and their JSON-ready request bodies (raw fields only:
        the endpoint looks the features up online).
    """
    import pandas as pd

    from mlplatform.features import LABEL_COLUMN, REQUEST_COLUMNS
    from mlplatform.features.offline import as_utc

    df = pd.read_parquet(raw_path)
    recent = df[df["event_timestamp"] >= as_utc(since)]
    picked = pd.concat([
        recent[recent[LABEL_COLUMN] == 1].sample(min(n_fraud, int(recent[LABEL_COLUMN].sum())),
                                                 random_state=seed),
        recent[recent[LABEL_COLUMN] == 0].sample(n_legit, random_state=seed),
    ])
    body = picked[REQUEST_COLUMNS].copy()
    body["event_timestamp"] = body["event_timestamp"].map(lambda t: t.isoformat())
    return picked, to_instances(body)


def to_instances(frame) -> list[dict[str, Any]]:
    """DataFrame rows -> JSON-native dicts (ints stay ints, floats stay floats)."""
    return json.loads(frame.to_json(orient="records"))


def run_demo(config: PlatformConfig | None = None, n_rows: int = 100_000, seed: int = 0,
             keep_running: bool = False, http_port: int | None = None) -> dict[str, Any]:
    """Run the demo end to end and print a summary; return the summary as a dict."""
    import requests
    from ray import serve
    from rich.console import Console
    from rich.table import Table

    from mlplatform._ray import init_ray
    from mlplatform.pipelines import run_spine
    from mlplatform.serving import deploy

    console = Console()
    config = config or PlatformConfig.load()
    started = time.perf_counter()
    steps = iter(range(1, 7))

    def step(label: str) -> None:
        console.rule(f"[bold cyan][{next(steps)}/6] {label}")

    # The endpoint's bearer token: yours ($MLP_SERVE_TOKEN), or a fresh one for this demo. It is
    # set before Ray starts so the Serve replicas (children of this local Ray) see it.
    generated = not os.environ.get("MLP_SERVE_TOKEN")
    token = os.environ["MLP_SERVE_TOKEN"] = os.environ.get("MLP_SERVE_TOKEN") or secrets.token_hex(16)
    init_ray(config)
    # The last 3 days (of the generator's 2026-01-01 + 60 days) are replayed as live traffic:
    # the online store holds everything before them, as it would when they arrive.
    live_from = "2026-02-27"
    spine = run_spine(config, n_rows=n_rows, seed=seed, on_step=step, online_until=live_from)
    mv = spine.model_version

    step(f"Serving models:/{mv.name}@champion with Ray Serve (serve_configs/fraud.yaml: "
         "the model in the Ingress replicas)")
    url = deploy(args_overrides={"models": [f"{mv.name}@champion"],
                                 "platform": config.model_dump(mode="json")},
                 router_config={"arms": [{"name": "champion", "model": f"{mv.name}@champion",
                                          "weight": 100}]},
                 http_port=http_port)
    step(f"Sending real HTTP requests to {url}/predict")
    rows, instances = sample_instances(spine.raw_path, live_from, seed=seed)
    predictions = []
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        for (_, row), instance in zip(rows.iterrows(), instances, strict=True):
            resp = http.post(f"{url}/predict", json=instance, timeout=30)
            resp.raise_for_status()
            body = resp.json()
            predictions.append(DemoPrediction(row["transaction_id"], float(row["amount"]),
                                              int(row["is_fraud"]), body["score"],
                                              body["model_version"], body["request_id"]))
        bad = http.post(f"{url}/predict", json={**instances[0], "amount": "lots"}, timeout=30)

    table = Table(title=f"Live predictions from {url}/predict")
    for col in ("transaction", "amount", "true label", "fraud score", "model version"):
        table.add_column(col, justify="right" if col != "transaction" else "left")
    for p in predictions:
        table.add_row(p.transaction_id, f"{p.amount:,.2f}", "FRAUD" if p.is_fraud else "legit",
                      f"{p.score:.4f}", p.model_version)
    console.print(table)
    console.print(f"A malformed request gets HTTP {bad.status_code}: {bad.json()['message']}")

    db = config.mlflow_tracking_uri
    summary = {
        "storage_root": str(config.storage_root),
        "mlflow_tracking_uri": db,
        "run_id": spine.train.run_id,
        "metrics": spine.train.metrics,
        "champion": f"{mv.name} version {mv.version}",
        "endpoint": f"{url}/predict",
        "predictions": [p.__dict__ for p in predictions],
        "bad_request_status": bad.status_code,
        "timings_s": {**{k: round(v, 1) for k, v in spine.timings_s.items()},
                      "total": round(time.perf_counter() - started, 1)},
    }
    console.rule("[bold green]Done")
    console.print(f"MLflow database : {db}")
    console.print(f"Champion        : models:/{mv.name}@champion -> version {mv.version} "
                  f"(run {spine.train.run_id})")
    console.print("Validation      : " + ", ".join(f"{k}={v:.4f}" for k, v in spine.train.metrics.items()))
    console.print(f"Timings (s)     : {summary['timings_s']}")
    console.print(f"MLflow UI       : .venv/bin/mlflow ui --backend-store-uri {db} --port 5000")
    console.print("Ray dashboard   : http://127.0.0.1:8265 while Ray runs "
                  "(for a lasting cluster: `ray start --head`, then `ray dashboard` on a remote one)")
    if keep_running:
        console.print(f"[bold]Serving at {url}/predict - press Ctrl-C to stop.[/bold] Send "
                      "'Authorization: Bearer $MLP_SERVE_TOKEN'"
                      + (f" (this demo's token: {token})" if generated else ""))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    serve.shutdown()
    console.print("Serve shut down cleanly.")
    return summary
