"""``mlp version`` and ``mlp config show``."""

from __future__ import annotations

from pathlib import Path

import typer

from mlplatform.cli._common import ConfigOpt, load_config

config_app = typer.Typer(help="Show and check the platform configuration.", no_args_is_help=True)


def version() -> None:
    """Print the versions of mlplatform and the libraries it runs on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    from mlplatform import __version__

    typer.echo(f"mlplatform {__version__}")
    for pkg in ("ray", "mlflow", "xgboost", "torch", "onnxruntime", "pandas", "pyarrow"):
        try:
            typer.echo(f"  {pkg} {v(pkg)}")
        except PackageNotFoundError:
            typer.echo(f"  {pkg} (not installed)")


@config_app.command("show")
def config_show(config: Path | None = ConfigOpt) -> None:
    """Print the effective configuration (defaults < YAML < MLP_* environment)."""
    cfg = load_config(config)
    width = max(len(k) for k in cfg.to_display_dict())
    for key, value in cfg.to_display_dict().items():
        typer.echo(f"{key.ljust(width)}  {value}")
