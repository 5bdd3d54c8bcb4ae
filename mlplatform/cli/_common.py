"""What the ``mlp`` command groups share: the options every command takes and the one way to
turn an error into a red line and an exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

ConfigOpt = typer.Option(None, "--config", "-c", help="PlatformConfig YAML (default: $MLP_CONFIG).")
PlatformOpt = typer.Option(None, "--platform-config",
                           help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults).")
ProjectOpt = typer.Option(None, "--project", "-p", help="The project folder (holding "
                          "mlplatform.yaml). Default: $MLP_PROJECT, else ./mlplatform.yaml.")
ModelOpt = typer.Option(None, "--model", help="One of the project's `models` (default: its "
                        "first).")


def load_config(config: Path | None, project: Path | None = None):
    """The platform config (defaults < YAML < MLP_* < ``--project``); exit 2 if invalid."""
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import ConfigError

    try:
        return PlatformConfig.load(config, overrides={"project": project} if project else None)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def load_project(project: Path | None, platform: Any = None):
    """The project, loaded and checked (:func:`mlplatform.pipelines.load`); exit 2 naming the
    file and key if it is invalid."""
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines import load

    try:
        return load(project, platform)
    except MLPlatformError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def fail(exc: Exception, code: int = 1) -> None:
    """Print ``exc`` in red on stderr and exit ``code``."""
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code) from None
