"""``mlp cluster``: check launcher YAMLs, run the fake autoscaling cluster on this machine.

    mlp cluster validate cluster/aws-gpu.yaml
    mlp cluster up-local  [--config cluster/local-fake.yaml] [--state-dir DIR]
    mlp cluster down-local [--state-dir DIR]
"""

from __future__ import annotations

from pathlib import Path

import typer

cluster_app = typer.Typer(help="Clusters: validate launcher YAMLs; a local fake autoscaling "
                          "cluster.", no_args_is_help=True)

YamlArg = typer.Argument(..., exists=True, dir_okay=False, help="Cluster-launcher YAML.")
LocalConfigOpt = typer.Option(Path("cluster/local-fake.yaml"), "--config", exists=True,
                              dir_okay=False, help="Fake-multinode launcher YAML.")
StateDirOpt = typer.Option(None, "--state-dir", file_okay=False,
                           help="Where up-local records the running cluster (default "
                           "~/.mlplatform/local-cluster); down-local stops the one recorded there.")


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
def up_local_cmd(config: Path = LocalConfigOpt, state_dir: Path | None = StateDirOpt) -> None:
    """Start a head node with the fake multinode autoscaler (workers appear on demand); exit 1
    when the YAML is not a fake-multinode config, one is already running, or it did not start."""
    from mlplatform.cluster.local import ClusterError, up_local

    try:
        up_local(config, state_dir=state_dir, echo=typer.echo)
    except ClusterError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@cluster_app.command("down-local")
def down_local_cmd(state_dir: Path | None = StateDirOpt) -> None:
    """Stop the local fake cluster and every fake worker it started (exit 0 if none runs)."""
    from mlplatform.cluster.local import ClusterError, down_local

    try:
        down_local(state_dir, echo=typer.echo)
    except ClusterError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
