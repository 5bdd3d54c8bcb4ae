"""The ``mlp`` command. Every command is a thin call into a library function."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="mlplatform: the ML lifecycle on one Ray cluster.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
config_app = typer.Typer(help="Show and check the platform configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

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


@app.command()
def features(config: Path | None = ConfigOpt) -> None:
    """Build features from the raw transactions with Ray Data."""
    from mlplatform._ray import init_ray
    from mlplatform.pipelines import build_spine_features

    cfg = _load(config)
    init_ray(cfg)
    typer.echo(f"wrote {build_spine_features(cfg)}")


if __name__ == "__main__":
    app()
