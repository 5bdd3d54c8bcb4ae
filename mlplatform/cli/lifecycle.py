"""``mlp demo``, ``mlp generate``, ``mlp train``, ``mlp tune``, ``mlp evaluate``: a project's
lifecycle from one command each. The same jobs run on a cluster with ``ray job submit``
(``jobs/*.py --project <dir>``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mlplatform.cli._common import (
    ConfigOpt,
    ModelOpt,
    PlatformOpt,
    ProjectOpt,
    fail,
    load_config,
    load_project,
)

DataOpt = typer.Option(None, "--data", help="Labelled rows in the training-set layout (Parquet); "
                       "default: the project's training set.")
JsonOpt = typer.Option(None, "--json", help="Also write the full result as JSON here.")


def demo(
    rows: int | None = typer.Option(None, min=1_000, help="Example rows to generate (default: "
                                    "the project's data.generate)."),
    seed: int | None = typer.Option(None, help="Data seed (default: the project's)."),
    config: Path | None = ConfigOpt,
    project: Path | None = ProjectOpt,
    keep_running: bool = typer.Option(False, help="Keep the endpoint up until Ctrl-C."),
    port: int | None = typer.Option(None, help="HTTP port (default: serve_configs/<project>.yaml's)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs here "
                                 "instead of in the log file."),
) -> None:
    """Run a project's whole lifecycle end to end on embedded defaults and print a summary."""
    from mlplatform.demo import run_demo

    cfg = load_config(config, project)
    run_demo(cfg, load_project(project, cfg), n_rows=rows, seed=seed, keep_running=keep_running,
             http_port=port, verbose=verbose)


def generate(
    rows: int | None = typer.Option(None, min=1, help="Rows (default: the project's)."),
    seed: int | None = typer.Option(None, help="Data seed (default: the project's)."),
    config: Path | None = ConfigOpt, project: Path | None = ProjectOpt,
) -> None:
    """Write the project's example data (its data.generate) where the project reads it."""
    from mlplatform.pipelines import ensure_data

    cfg = load_config(config, project)
    loaded = load_project(project, cfg)
    if loaded.data.generate is None:
        fail(f"project {loaded.name} ({loaded.file}) has no data.generate: it brings its own "
             "data", 2)
    typer.echo(f"wrote {ensure_data(cfg, loaded, rows, seed, force=True, echo=typer.echo)}")


def _connected(config: Path | None, project: Path | None):
    from mlplatform._ray import init_ray

    cfg = load_config(config, project)
    loaded = load_project(project, cfg)
    init_ray(cfg)
    return cfg, loaded


def train(project: Path | None = ProjectOpt, model: str | None = ModelOpt,
          platform_config: Path | None = PlatformOpt) -> None:
    """Train one of the project's models on Ray Train, log it to MLflow, register it.

    The same job runs on a cluster: `ray job submit --working-dir . -- python jobs/train.py
    --project <dir>`.
    """
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.train_job import run_train_job

    cfg, loaded = _connected(platform_config, project)
    try:
        result, mv = run_train_job(loaded, cfg, model, echo=typer.echo)
    except MLPlatformError as exc:
        fail(exc)
    typer.echo(f"metrics: {', '.join(f'{k}={v:.4f}' for k, v in result.metrics.items())}")
    typer.echo(f"run_id: {result.run_id}")
    typer.echo(f"model_uri: {result.model_uri}")
    typer.echo(f"registered: models:/{mv.name}/{mv.version}"
               + (f" (aliases {', '.join('@' + a for a in mv.aliases)})" if mv.aliases else ""))


def tune(project: Path | None = ProjectOpt, model: str | None = ModelOpt,
         platform_config: Path | None = PlatformOpt) -> None:
    """Sweep a model's hyperparameters with Ray Tune (its `tune` section; every trial an MLflow
    child run) and log the best trial's model. On a cluster: `python jobs/tune.py`."""
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.tune_job import run_tune_job, summary, tune_section

    cfg, loaded = _connected(platform_config, project)
    try:
        metric = tune_section(loaded, model).metric
        df = run_tune_job(loaded, cfg, model, echo=typer.echo)
    except MLPlatformError as exc:
        fail(exc)
    typer.echo("\n".join(summary(df, metric)))


def evaluate(model_uri: str = typer.Option(..., "--model-uri", help="models:/<name>@champion, "
                                           "models:/<name>/3, runs:/<run_id>/model ..."),
             data: Path | None = DataOpt,
             project: Path | None = ProjectOpt, config: Path | None = ConfigOpt,
             output: Path | None = JsonOpt) -> None:
    """Evaluate a model: overall metrics, metrics per slice, behavioural checks (exit 1 if one
    fails)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from mlplatform.errors import MLPlatformError
    from mlplatform.features.training_set import training_set_dir
    from mlplatform.training import evaluate as run_evaluate

    cfg, loaded = _connected(config, project)
    data = data or training_set_dir(cfg, loaded)
    try:
        out = run_evaluate(model_uri, str(data), platform=cfg, project=loaded)
    except MLPlatformError as exc:
        fail(exc)
    console = Console()
    m, o = out["model"], out["overall"]
    head = (f"{m['uri']} -> {m['name']} v{m['version']} ({m['kind']}, {out['task']}), "
            f"{out['rows']:,} rows")
    if out["task"] == "binary":
        head += f", threshold {out['threshold']:.3f} ({out['threshold_source']})"
    console.print(head)
    shown = {"binary": ("auc_pr", "auc_roc", "log_loss", "precision", "recall", "f1"),
             "multiclass": ("accuracy", "log_loss", "macro_f1", "weighted_f1"),
             "regression": ("rmse", "mae", "r2", "mean_error")}[out["task"]]
    console.print(", ".join(f"{k} {o[k]:.4f}" for k in shown if o.get(k) is not None))
    for col, per_value in out["slices"].items():
        t = Table(title=f"by {col}")
        keys = [k for k in next(iter(per_value.values()), {}) if k != "rows"][:5]
        for c in (col, "rows", *keys):
            t.add_column(c, justify="right")
        for value, s in per_value.items():
            t.add_row(str(value), f"{s['rows']:,}", *(
                "-" if s.get(k) is None else f"{s[k]:.3f}" for k in keys))
        console.print(t)
    for name, check in out["checks"].items():
        console.print(f"check {name}: {'PASS' if check['passed'] else 'FAIL'} "
                      f"{ {k: v for k, v in check.items() if k != 'passed'} }")
    if output:
        output.write_text(json.dumps(out, indent=2, default=str))
    if not out["passed"]:
        raise typer.Exit(1)


def register_lifecycle_commands(app: typer.Typer) -> None:
    """Add demo, generate, train, tune and evaluate to the main ``mlp`` app."""
    for fn in (demo, generate, train, tune, evaluate):
        app.command()(fn)
