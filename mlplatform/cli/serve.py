"""``mlp serve``: deploy the Serve app from its YAML (validated first) and reload models.

    mlp serve deploy serve_configs/<project>.yaml [--address auto]
    mlp serve reload [--app <name>] [--address auto]

``mlp serve deploy`` makes a relative ``args.project`` absolute (relative to where you run it),
so the cluster builds the app from the same project folder.

``serve deploy`` works too; ``mlp serve deploy`` additionally checks the app args and the
Router's ``user_config`` before anything reaches Serve, so a bad weight changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

serve_app = typer.Typer(help="Serve: deploy the app (validated), reload models after an alias "
                        "moved.", no_args_is_help=True)

ServeConfigArg = typer.Argument(..., exists=True, dir_okay=False,
                                help="Serve YAML (e.g. serve_configs/<project>.yaml).")
AddressOpt = typer.Option("auto", help="Ray cluster address (RAY_AUTH_MODE=token is set "
                          "for you when ~/.ray/auth_token exists).")
AppOpt = typer.Option(None, "--app", help="Serve application name (default: the only one "
                      "running).")


def _connect(address: str) -> None:
    import os

    import ray

    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray.init(address=address, log_to_driver=False)


def _on_cluster(address: str, fn, *args):
    """Connect, run ``fn(*args)``; a RuntimeError (Serve's reason) exits 1 with its message."""
    _connect(address)
    try:
        return fn(*args)
    except RuntimeError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


@serve_app.command("deploy")
def deploy_cmd(config: Path = ServeConfigArg, address: str = AddressOpt) -> None:
    """Validate and deploy a Serve YAML on a running cluster; wait until it is RUNNING."""
    import yaml

    from mlplatform.errors import ConfigError
    from mlplatform.serving.app import absolute_project, check_serve_config, deploy

    try:
        raw = yaml.safe_load(config.read_text()) or {}
        for app in raw.get("applications") or []:
            absolute_project(app, config.resolve().parent)
        check_serve_config(raw)
    except ConfigError as exc:
        typer.secho(f"refused, nothing deployed: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    url = _on_cluster(address, deploy, config)
    typer.secho(f"deployed {config} -> {url}", fg="green")


@serve_app.command("reload")
def reload_cmd(app: str | None = AppOpt, address: str = AddressOpt) -> None:
    """Make every served model (embedded or in its ModelServer) re-resolve its alias now;
    print the arms and loaded versions."""
    from mlplatform.serving.app import reload_models

    def reload_one():
        from ray import serve

        name = app
        if name is None:
            apps = sorted(serve.status().applications)
            if len(apps) != 1:
                raise RuntimeError(f"name the application with --app; running: {apps}")
            name = apps[0]
        return reload_models(name)

    view = _on_cluster(address, reload_one)
    for arm in view["arms"]:
        state = (f"v{arm['model_version']}" if arm.get("ready")
                 else f"NOT READY: {arm.get('error')}")
        typer.echo(f"{arm['name']:<14} {arm['model']:<24} weight {arm['weight']:<6g} {state}")
    if view.get("shadow"):
        typer.echo("shadow         " + json.dumps(view["shadow"]))
