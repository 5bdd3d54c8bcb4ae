"""``mlp pipeline``: the model CI/CD pipeline from the command line (a thin call into
:class:`mlplatform.pipelines.ci.ModelCIPipeline`).

    mlp pipeline run --project examples/<name> [--model xgboost] [--promote] [--config ci.yaml]

Exit status: 0 every stage passed, 1 a stage failed (the table says which and why), 2 the
project or config is invalid. The same pipeline runs on a cluster as
``ray job submit --working-dir . -- python jobs/ci_pipeline.py --project <dir>``.
"""

from __future__ import annotations

from pathlib import Path

import typer

pipeline_app = typer.Typer(help="Model CI/CD: validate -> features -> train -> evaluate -> "
                           "behavioural tests -> register -> challenger -> promote.",
                           no_args_is_help=True)

CIConfigOpt = typer.Option(None, "--config", help="A CI pipeline YAML (mlplatform.pipelines."
                           "CIConfig keys: project, model, data, train, register, promote, "
                           "gates, actor, reason); the flags below override it.")
PlatformConfigOpt = typer.Option(None, "--platform-config",
                                 help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults).")
_COLOURS = {"ok": "green", "failed": "red", "skipped": "yellow"}


ProjectOpt = typer.Option(None, "--project", "-p", help="The project folder (default: the "
                          "config's, $MLP_PROJECT, else ./mlplatform.yaml).")


@pipeline_app.callback()
def _pipeline() -> None:
    """Model CI/CD pipelines."""
    # A callback keeps `run` a subcommand even while it is the only one.


@pipeline_app.command("run")
def run(project: Path | None = ProjectOpt,
        model: str | None = typer.Option(None, "--model", help="One of the project's models."),
        promote: bool | None = typer.Option(None, "--promote/--no-promote", help="Promote to "
                                            "champion through the project's gates."),
        actor: str | None = typer.Option(None, "--actor", help="Who the audit trail names."),
        reason: str | None = typer.Option(None, "--reason", help="Why, for the audit trail."),
        config: Path | None = CIConfigOpt,
        platform_config: Path | None = PlatformConfigOpt) -> None:
    """Run the model CI pipeline; print each stage's status, seconds and message.

    Exits 1 when a stage failed, 2 when the project or config is invalid.
    """
    from rich.console import Console
    from rich.table import Table

    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.ci import CIConfig, ModelCIPipeline

    try:
        ci = CIConfig.from_yaml(config) if config else CIConfig()
        flags = {"project": project, "model": model, "promote": promote, "actor": actor,
                 "reason": reason}
        ci = ci.model_copy(update={k: v for k, v in flags.items() if v is not None})
        platform = PlatformConfig.load(platform_config)
    except MLPlatformError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        init_ray(platform)
        report = ModelCIPipeline(platform, echo=typer.echo).run(ci)
    except MLPlatformError as exc:     # an invalid gates file or model name, before any work
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    table = Table(title=f"model CI pipeline: {report.model_name}")
    for column, justify in (("stage", "left"), ("status", "left"), ("seconds", "right"),
                            ("message", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for s in report.stages:
        table.add_row(s.name, f"[{_COLOURS[s.status]}]{s.status}[/]", f"{s.seconds:.1f}",
                      s.message)
    Console(width=max(120, Console().width)).print(table)
    if report.run_id:
        typer.echo(f"run_id: {report.run_id}")
    if report.version:
        typer.echo(f"registered: models:/{report.model_name}/{report.version}")
    if not report.ok:
        typer.secho(f"pipeline FAILED at stage {report.failed_stage.name}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"pipeline passed in {report.seconds:.1f}s")
