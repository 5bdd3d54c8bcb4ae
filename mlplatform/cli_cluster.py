"""``mlp cluster``: check launcher YAMLs, run the fake autoscaling cluster on this machine.

    mlp cluster validate cluster/aws-gpu.yaml
    mlp cluster up-local  [--config cluster/local-fake.yaml]
    mlp cluster down-local
"""

from __future__ import annotations

from pathlib import Path

import typer

cluster_app = typer.Typer(help="Clusters: validate launcher YAMLs; a local fake autoscaling "
                          "cluster.", no_args_is_help=True)

YamlArg = typer.Argument(..., exists=True, dir_okay=False, help="Cluster-launcher YAML.")
LocalConfigOpt = typer.Option(Path("cluster/local-fake.yaml"), "--config", exists=True,
                              dir_okay=False, help="Fake-multinode launcher YAML.")


@cluster_app.command("validate")
def validate_cmd(config: list[Path] = YamlArg) -> None:
    """Check launcher YAMLs against Ray's schema and mlplatform's rules (exit 1 on problems)."""
    from mlplatform.cluster.validate import validate_cluster_config

    failed = False
    for path in config:
        problems = validate_cluster_config(path)
        if problems:
            failed = True
            typer.secho(f"{path}: {len(problems)} problem(s)", fg="red", err=True)
            for problem in problems:
                typer.echo(f"  - {problem}", err=True)
        else:
            typer.secho(f"{path}: ok", fg="green")
    if failed:
        raise typer.Exit(1)


@cluster_app.command("up-local")
def up_local_cmd(config: Path = LocalConfigOpt) -> None:
    """Start a head node with the fake multinode autoscaler (workers appear on demand)."""
    from mlplatform.cluster.local import up_local

    up_local(config)


@cluster_app.command("down-local")
def down_local_cmd() -> None:
    """Stop the local fake cluster and every fake worker it started."""
    from mlplatform.cluster.local import down_local

    down_local()
