"""``mlp submit`` and ``mlp cost`` (top-level commands).

    mlp submit train --project examples/<name> [--model xgboost] [--address http://head:8265]
    mlp cost --since 7d [--by model|job]
"""

from __future__ import annotations

from pathlib import Path

import typer

JobArg = typer.Argument(..., help="A job in jobs/: train, tune, build_features, ci_pipeline.")
SubmitProjectOpt = typer.Option(..., "--project", "-p", help="The project folder (holding "
                                "mlplatform.yaml), e.g. examples/<name>.")
SubmitModelOpt = typer.Option(None, "--model", help="One of the project's models (default: "
                              "its first).")
AddressOpt = typer.Option(None, "--address", help="Ray dashboard URL (default: "
                          "$RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS, then "
                          "http://127.0.0.1:8265, as `ray job submit`).")
FollowOpt = typer.Option(True, "--follow/--no-follow",
                         help="Follow the job's logs and exit with its status.")
RuntimeEnvOpt = typer.Option(None, "--runtime-env-json",
                             help="Extra runtime env as JSON (working_dir defaults to the "
                             "project folder).")
EnvOpt = typer.Option(None, "--env", help="K=V environment variable for the job (repeatable).")
SinceOpt = typer.Option("7d", "--since", help="7d, 24h, 30m or an ISO date (2025-01-31).")
ByOpt = typer.Option(None, "--by", help="model or job (default: both tables).")
PlatformOpt = typer.Option(None, "--platform-config",
                           help="PlatformConfig YAML (default: $MLP_CONFIG).")


def submit(job: str = JobArg, project: Path = SubmitProjectOpt,
           model: str | None = SubmitModelOpt, address: str | None = AddressOpt,
           follow: bool = FollowOpt, runtime_env_json: str | None = RuntimeEnvOpt,
           env: list[str] | None = EnvOpt) -> None:
    """Submit jobs/<job>.py --project <dir> to a Ray cluster (token handled), follow its logs,
    exit with its status (0 succeeded, 1 failed or stopped, 2 bad arguments)."""
    import json

    from mlplatform.cluster.submit import SubmitError, submit_job
    from mlplatform.errors import ConfigError

    try:
        runtime_env = json.loads(runtime_env_json) if runtime_env_json else None
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise ConfigError("--runtime-env-json must be a JSON object")
        env_vars = dict(_key_value(e) for e in env or [])
        code = submit_job(job, project, address, model=model, runtime_env=runtime_env,
                          env=env_vars, follow=follow, echo=typer.echo)
    except (ConfigError, json.JSONDecodeError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except SubmitError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def cost(since: str = SinceOpt, by: str | None = ByOpt,
         platform_config: Path | None = PlatformOpt) -> None:
    """Sum the resources and estimated cost every job logged to MLflow, per model and per job."""
    from mlplatform.cluster.cost_summary import cost_records, format_table, parse_since, summarize
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import ConfigError

    try:
        cutoff = parse_since(since)
        platform = PlatformConfig.load(platform_config)
        if by not in (None, "model", "job"):
            raise ConfigError(f"--by {by!r}: give model or job")
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    records = cost_records(platform, cutoff)
    if not records:
        typer.echo(f"no runs with a recorded cost since {cutoff.astimezone():%Y-%m-%d %H:%M %Z}")
        return
    typer.echo(f"{len(records)} run(s) since {cutoff.astimezone():%Y-%m-%d %H:%M %Z} "
               "(estimated at list prices)")
    for key in [by] if by else ["model", "job"]:
        typer.echo("")
        typer.echo(format_table(*summarize(records, key), key))


def _key_value(text: str) -> tuple[str, str]:
    from mlplatform.errors import ConfigError

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--env {text!r}: give KEY=VALUE")
    return key, value


def register_job_commands(app: typer.Typer) -> None:
    """Add ``submit`` and ``cost`` to the main ``mlp`` app."""
    app.command("submit")(submit)
    app.command("cost")(cost)
