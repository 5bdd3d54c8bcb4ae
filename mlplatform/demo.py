"""``mlp demo`` / ``make demo``: a project's whole lifecycle on embedded defaults, in one process.

example data -> Ray Data features -> Ray Train XGBoost -> MLflow run -> registry @champion ->
Ray Serve app (``serve_configs/<project>.yaml``) -> real HTTP requests replaying the newest
rows (the online store holds only what came before them) -> summary -> clean shutdown.
``make demo`` runs it on the example project the Makefile names.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig

#: The share of the data's time range replayed as live traffic (not in the online store).
LIVE_SHARE = 0.05
#: Rows replayed as requests (binary: half of them positive where the data has enough).
LIVE_ROWS = 6


def sample_requests(project, raw_path: Path, since=None, n: int = LIVE_ROWS, seed: int = 0
                    ) -> tuple[Any, list[dict[str, Any]]]:
    """Pick labelled rows (at/after ``since`` when given) to replay as live requests.

    Returns:
        The picked rows (with their labels) and their JSON-ready request bodies (the request
        fields only: the endpoint looks the features up online).
    """
    import pandas as pd

    df = pd.read_parquet(raw_path) if Path(raw_path).suffix != ".csv" else pd.read_csv(raw_path)
    ts = project.data.timestamp
    if since is not None and ts:
        df = df[pd.to_datetime(df[ts], utc=True) >= pd.Timestamp(since)]
    label = project.task.label
    if project.task.type == "binary":
        pos = df[df[label] == project.task.positive_class]
        neg = df[df[label] != project.task.positive_class]
        k = min(n // 2, len(pos))
        picked = pd.concat([pos.sample(k, random_state=seed),
                            neg.sample(min(n - k, len(neg)), random_state=seed)])
    else:
        picked = df.sample(min(n, len(df)), random_state=seed)
    body = picked[[c for c in project.request_fields if c in picked.columns]].copy()
    for name, spec in project.request.fields.items():
        if spec.type == "timestamp" and name in body:
            body[name] = pd.to_datetime(body[name], utc=True).map(lambda t: t.isoformat())
    return picked, to_instances(body)


def to_instances(frame) -> list[dict[str, Any]]:
    """DataFrame rows -> JSON-native dicts (ints stay ints, floats stay floats)."""
    return json.loads(frame.to_json(orient="records"))


def live_from(project, raw_path: Path):
    """Where the replayed traffic starts: the last :data:`LIVE_SHARE` of the data's time range
    (at midnight UTC), or None without a time column."""
    import pyarrow.dataset as pads

    ts = project.data.timestamp
    if not ts or not project.uses_feature_store:
        return None
    col = pads.dataset(str(raw_path), format="parquet").to_table(columns=[ts])[ts]
    import pyarrow.compute as pc

    lo, hi = pc.min(col).as_py(), pc.max(col).as_py()
    import pandas as pd

    return pd.Timestamp(hi - (hi - lo) * LIVE_SHARE).tz_convert("UTC").normalize()


def _show(project, prediction: dict[str, Any]) -> str:
    task = project.task.type
    if task == "binary":
        return f"{prediction['score']:.4f} ({prediction['decision']})"
    if task == "multiclass":
        return f"{prediction['class']} ({prediction['score']:.3f})"
    return f"{prediction['value']:.3f}"


def run_demo(config: PlatformConfig | None = None, project=None, n_rows: int | None = None,
             seed: int | None = None, keep_running: bool = False, http_port: int | None = None,
             verbose: bool = False) -> dict[str, Any]:
    """Run the demo end to end on ``project`` (default: ``platform.project``,
    ``$MLP_PROJECT``, ``./mlplatform.yaml``) and print a
    summary; return the summary as a dict."""
    import requests
    from ray import serve
    from rich.console import Console
    from rich.table import Table

    from mlplatform._logs import setup_output
    from mlplatform._ray import init_ray
    from mlplatform.pipelines import load, run_spine, steps
    from mlplatform.serving import deploy

    console = Console()
    config = config or PlatformConfig.load()
    project = load(project, config)
    started = time.perf_counter()
    steps_n = iter(range(1, 7))
    log = setup_output(config, "demo", verbose)
    console.print(f"Project [bold]{project.name}[/bold] ({project.file}); Ray's and MLflow's "
                  f"logs: {log}")

    def step(label: str) -> None:
        console.rule(f"[bold cyan][{next(steps_n)}/6] {label}")

    serve_config = Path(__file__).resolve().parents[1] / "serve_configs" / f"{project.name}.yaml"
    # The endpoint's bearer token: yours ($MLP_SERVE_TOKEN), or a fresh one for this demo. It is
    # set before Ray starts so the Serve replicas (children of this local Ray) see it.
    generated = not os.environ.get("MLP_SERVE_TOKEN")
    token = os.environ["MLP_SERVE_TOKEN"] = os.environ.get("MLP_SERVE_TOKEN") or secrets.token_hex(16)
    init_ray(config, log_to_driver=verbose)
    # The newest rows are replayed as live traffic: the online store holds everything before
    # them, as it would when they arrive.
    gen = project.data.generate
    step(f"Writing {n_rows or (gen.rows if gen else 0):,} example rows of project "
         f"'{project.name}'")
    raw = steps.ensure_data(config, project, n_rows, seed, force=True, echo=lambda _l: None)
    since = live_from(project, raw)
    spine = run_spine(config, project, on_step=step, online_until=since, generate=False)
    mv = spine.model_version
    ref = f"{mv.name}@champion"
    step(f"Serving models:/{ref} with Ray Serve ({serve_config.name}: the model in the Ingress "
         "replicas)")
    url = deploy(serve_config, args_overrides={"models": [ref], "project": str(project.root),
                                               "platform": config.model_dump(mode="json")},
                 router_config={"arms": [{"name": "champion", "model": ref, "weight": 100}]},
                 http_port=http_port)
    step(f"Sending real HTTP requests to {url}/predict")
    rows, instances = sample_requests(project, spine.raw_path, since, seed=seed or 0)
    predictions = []
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        for (_, row), instance in zip(rows.iterrows(), instances, strict=True):
            resp = http.post(f"{url}/predict", json=instance, timeout=30)
            resp.raise_for_status()
            predictions.append((row, resp.json()))
        number = next((n for n, f in project.request.fields.items()
                       if f.type in ("float", "int") and f.enum is None), None)
        wrong = {number: "lots"} if number else {"not_a_field": 1}
        bad = http.post(f"{url}/predict", json={**instances[0], **wrong}, timeout=30)

    id_field, label = project.request.id, project.task.label
    shown = next((n for n, f in project.request.fields.items()
                  if f.type in ("float", "int") and n != id_field), None)
    table = Table(title=f"Live predictions from {url}/predict")
    for col in (id_field or "row", *([shown] if shown else []), f"true {label}",
                "prediction", "model version"):
        table.add_column(col, justify="left" if col in (id_field, "row") else "right")
    for i, (row, body) in enumerate(predictions):
        table.add_row(str(row[id_field]) if id_field else str(i),
                      *([f"{row[shown]:,.2f}"] if shown else []), str(row[label]),
                      _show(project, body), body["model_version"])
    console.print(table)
    console.print(f"A malformed request gets HTTP {bad.status_code}: {bad.json()['message']}")

    db = config.mlflow_tracking_uri
    summary = {
        "project": project.name,
        "storage_root": str(config.storage_root),
        "mlflow_tracking_uri": db,
        "run_id": spine.train.run_id,
        "metrics": spine.train.metrics,
        "champion": f"{mv.name} version {mv.version}",
        "endpoint": f"{url}/predict",
        "predictions": [{"label": _plain(row[label]), **body} for row, body in predictions],
        "bad_request_status": bad.status_code,
        "log_file": str(log),
        "timings_s": {**{k: round(v, 1) for k, v in spine.timings_s.items()},
                      "total": round(time.perf_counter() - started, 1)},
    }
    console.rule("[bold green]Done")
    console.print(f"Project         : {project.name} ({project.task.type}, label "
                  f"{project.task.label})")
    console.print(f"MLflow database : {db}")
    console.print(f"Champion        : models:/{ref} -> version {mv.version} "
                  f"(run {spine.train.run_id})")
    console.print("Validation      : " + ", ".join(f"{k}={v:.4f}" for k, v in spine.train.metrics.items()))
    console.print(f"Timings (s)     : {summary['timings_s']}")
    console.print(f"Logs            : {log}")
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


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
