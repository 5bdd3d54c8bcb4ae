"""The ``mlp`` command. Every command is a thin call into a library function."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="mlplatform: the ML lifecycle on one Ray cluster.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
config_app = typer.Typer(help="Show and check the platform configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
features_app = typer.Typer(help="The feature store: build, materialize, validate, show.",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")


def _add_subcommands() -> None:
    """The registry, audit, pipeline and serve commands live in their own modules."""
    from mlplatform.cli_cluster import cluster_app
    from mlplatform.cli_jobs import register_job_commands
    from mlplatform.cli_pipeline import pipeline_app
    from mlplatform.cli_registry import audit_app, registry_app
    from mlplatform.cli_serve import serve_app

    app.add_typer(registry_app, name="registry")
    app.add_typer(audit_app, name="audit")
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(serve_app, name="serve")
    app.add_typer(cluster_app, name="cluster")
    register_job_commands(app)  # `mlp submit`, `mlp cost`


_add_subcommands()

ConfigOpt = typer.Option(None, "--config", "-c", help="PlatformConfig YAML (default: $MLP_CONFIG).")


def _load(config: Path | None):
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import ConfigError

    try:
        return PlatformConfig.load(config)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def version() -> None:
    """Print the versions of mlplatform and the libraries it runs on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    from mlplatform import __version__

    typer.echo(f"mlplatform {__version__}")
    for pkg in ("ray", "mlflow", "xgboost", "torch", "pandas", "pyarrow"):
        try:
            typer.echo(f"  {pkg} {v(pkg)}")
        except PackageNotFoundError:
            typer.echo(f"  {pkg} (not installed)")


@config_app.command("show")
def config_show(config: Path | None = ConfigOpt) -> None:
    """Print the effective configuration (defaults < YAML < MLP_* environment)."""
    cfg = _load(config)
    width = max(len(k) for k in cfg.to_display_dict())
    for key, value in cfg.to_display_dict().items():
        typer.echo(f"{key.ljust(width)}  {value}")


@app.command()
def demo(
    rows: int = typer.Option(100_000, min=1_000, help="Transactions to generate."),
    seed: int = typer.Option(0, help="Data seed."),
    config: Path | None = ConfigOpt,
    keep_running: bool = typer.Option(False, help="Keep the endpoint up until Ctrl-C."),
    port: int | None = typer.Option(None, help="HTTP port (default: serve_configs/fraud.yaml)."),
) -> None:
    """Run the whole lifecycle end to end on embedded defaults and print a summary."""
    from mlplatform.demo import run_demo

    run_demo(_load(config), n_rows=rows, seed=seed, keep_running=keep_running, http_port=port)


@app.command()
def generate(
    rows: int = typer.Option(100_000, min=1, help="Transactions to generate."),
    seed: int = typer.Option(0, help="Data seed."),
    config: Path | None = ConfigOpt,
) -> None:
    """Generate transactions as Parquet under <storage_root>/raw/transactions."""
    from mlplatform.pipelines import generate_data

    typer.echo(f"wrote {generate_data(_load(config), rows, seed)}")


def _store(config: Path | None, repo: Path | None):
    from mlplatform._ray import init_ray
    from mlplatform.errors import MLPlatformError
    from mlplatform.features import FeatureStore

    cfg = _load(config)
    try:
        store = FeatureStore(cfg, repo=repo)
    except MLPlatformError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    init_ray(cfg)
    return store


RepoOpt = typer.Option(None, "--repo", help="Feature definitions YAML (default: "
                       "PlatformConfig.feature_repo, else jobs/configs/features/fraud.yaml).")
ViewsOpt = typer.Option(None, "--view", "-v", help="Feature view (repeatable; default: all).")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1) from None


@features_app.command("build")
def features_build(
    view: list[str] | None = ViewsOpt,
    start: str | None = typer.Option(None, help="First date to recompute (YYYY-MM-DD)."),
    end: str | None = typer.Option(None, help="Date to stop before (YYYY-MM-DD)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the source's contract."),
    config: Path | None = ConfigOpt, repo: Path | None = RepoOpt,
) -> None:
    """Compute feature views with Ray Data into a new offline version."""
    from mlplatform.errors import MLPlatformError

    store = _store(config, repo)
    try:
        built = store.build(view or None, start=start, end=end, validate=not no_validate)
    except MLPlatformError as exc:
        _fail(exc)
    for name, m in built.items():
        typer.echo(f"{name}: version {m.version}, {m.num_rows:,} rows, "
                   f"{len(m.data['partitions'])} date partitions -> {m.path}")


@features_app.command("materialize")
def features_materialize(
    view: list[str] | None = ViewsOpt,
    start: str | None = typer.Option(None, help="Only rows at/after this time (default: the "
                                     "view's watermark, i.e. incremental)."),
    end: str | None = typer.Option(None, help="Only rows before this time (default: all)."),
    config: Path | None = ConfigOpt, repo: Path | None = RepoOpt,
) -> None:
    """Write the latest value per entity into the online store (incremental by default)."""
    from mlplatform.errors import MLPlatformError

    store = _store(config, repo)
    try:
        written = (store.materialize(start, end, view or None) if start
                   else store.materialize_incremental(end, view or None))
    except MLPlatformError as exc:
        _fail(exc)
    for name, n in written.items():
        typer.echo(f"{name}: {n:,} entities written; watermark "
                   f"{store.online.get_watermark(name)}")


DataArg = typer.Argument(None, help="Parquet to check (default: the source).")
ContractOpt = typer.Option(None, help="Contract YAML (default: the source's).")


@features_app.command("validate")
def features_validate(
    path: Path | None = DataArg,
    contract: Path | None = ContractOpt,
    source: str = typer.Option("transactions", help="Source whose data/contract to use."),
    config: Path | None = ConfigOpt, repo: Path | None = RepoOpt,
) -> None:
    """Check data against its contract on Ray Data; exit 1 listing every failed check."""
    from mlplatform.errors import MLPlatformError
    from mlplatform.features import validate

    store = _store(config, repo)
    try:
        report = validate(path or store.source_path(source),
                          contract or store.contract_path(source))
    except MLPlatformError as exc:
        _fail(exc)
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)


@features_app.command("show")
def features_show(
    view: str = typer.Argument(..., help="Feature view name."),
    config: Path | None = ConfigOpt, repo: Path | None = RepoOpt,
) -> None:
    """Print a view's definition, its offline versions and its online state."""
    import json

    from mlplatform.features import FeatureStore

    store = FeatureStore(_load(config), repo=repo)
    try:
        info = store.describe(view)
    except KeyError as exc:
        _fail(exc)
    info["online"] = {"entities": store.online.count(view),
                      "watermark": str(store.online.get_watermark(view))}
    typer.echo(json.dumps(info, indent=2, default=str))




JobOpt = typer.Option(..., "--config", help="Job YAML (jobs/configs/*.yaml).")
PlatformOpt = typer.Option(None, "--platform-config", help="PlatformConfig YAML (default: $MLP_CONFIG).")


def _run_job(load, run, job: Path, platform_config: Path | None):
    """Load a job file (exit 2 if invalid), connect to Ray, run it (exit 1 on failure);
    returns the job spec and what ``run`` returned."""
    from mlplatform._ray import init_ray
    from mlplatform.errors import MLPlatformError

    try:
        spec = load(job)
    except MLPlatformError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    cfg = _load(platform_config)
    try:
        init_ray(cfg)
        return spec, run(spec, cfg, echo=typer.echo)
    except MLPlatformError as exc:
        _fail(exc)


@app.command()
def train(job: Path = JobOpt, platform_config: Path | None = PlatformOpt) -> None:
    """Train (XGBoost or PyTorch, by the job's train.model) on Ray Train, log to MLflow, register.

    The same job `ray job submit ... -- python jobs/train.py --config <yaml>` runs on a cluster.
    """
    from mlplatform.pipelines.train_job import TrainJobConfig, run_train_job

    spec, (result, mv) = _run_job(TrainJobConfig.from_yaml, run_train_job, job, platform_config)
    typer.echo(f"metrics: {', '.join(f'{k}={v:.4f}' for k, v in result.metrics.items())}")
    typer.echo(f"run_id: {result.run_id}")
    typer.echo(f"model_uri: {result.model_uri}")
    typer.echo(f"registered: models:/{mv.name}/{mv.version}"
               + (f" (alias @{spec.registration.alias})" if spec.registration.alias else ""))


ModelUriOpt = typer.Option(..., "--model-uri", help="models:/fraud@champion, models:/fraud/3, "
                           "runs:/<run_id>/model ...")
DataOpt = typer.Option(None, "--data", help="Labelled rows in the training-set layout (Parquet); "
                       "default: <storage_root>/training_sets/fraud.")
JsonOpt = typer.Option(None, "--json", help="Also write the full result as JSON here.")


@app.command()
def evaluate(model_uri: str = ModelUriOpt, data: Path | None = DataOpt,
             config: Path | None = ConfigOpt,
             output: Path | None = JsonOpt) -> None:
    """Evaluate a model: overall metrics, metrics per slice, behavioural checks (exit 1 if one
    fails)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from mlplatform._ray import init_ray
    from mlplatform.errors import MLPlatformError
    from mlplatform.features.training_set import TRAINING_SET_DIR
    from mlplatform.training import evaluate as run_evaluate

    cfg = _load(config)
    data = data or cfg.path(*TRAINING_SET_DIR)
    try:
        init_ray(cfg)
        out = run_evaluate(model_uri, str(data), platform=cfg)
    except MLPlatformError as exc:
        _fail(exc)
    console = Console()
    m, o = out["model"], out["overall"]
    console.print(f"{m['uri']} -> {m['name']} v{m['version']} ({m['kind']}), {out['rows']:,} rows, "
                  f"threshold {out['threshold']:.3f} ({out['threshold_source']})")
    console.print(", ".join(f"{k} {o[k]:.4f}" for k in ("auc_pr", "auc_roc", "log_loss", "precision",
                                                         "recall", "f1")))
    for col, per_value in out["slices"].items():
        t = Table(title=f"by {col}")
        for c in (col, "rows", "positives", "auc_pr", "recall", "flagged_share"):
            t.add_column(c, justify="right")
        for value, s in per_value.items():
            t.add_row(str(value), f"{s['rows']:,}", f"{s['positives']:,}",
                      *(("-" if s.get(k) is None else f"{s[k]:.3f}")
                        for k in ("auc_pr", "recall", "flagged_share")))
        console.print(t)
    for name, check in out["checks"].items():
        console.print(f"check {name}: {'PASS' if check['passed'] else 'FAIL'} "
                      f"{ {k: v for k, v in check.items() if k != 'passed'} }")
    if output:
        output.write_text(json.dumps(out, indent=2, default=str))
    if not out["passed"]:
        raise typer.Exit(1)


@app.command()
def tune(job: Path = JobOpt, platform_config: Path | None = PlatformOpt) -> None:
    """Sweep hyperparameters with Ray Tune (ASHA; every trial an MLflow child run) and log the
    best trial's model. The same job runs on a cluster as `python jobs/tune.py --config <yaml>`."""
    from mlplatform.pipelines.tune_job import TuneJobConfig, run_tune_job, summary

    spec, df = _run_job(TuneJobConfig.from_yaml, run_tune_job, job, platform_config)
    typer.echo("\n".join(summary(df, spec.tune.metric)))


if __name__ == "__main__":
    app()
