"""``mlp init <dir> --template {feature-store,tabular}``: a new project that trains and serves
as it is (:func:`mlplatform.project.scaffold.scaffold`)."""

from __future__ import annotations

from pathlib import Path

import typer

FolderArg = typer.Argument(..., help="The new project's folder.")


def init(folder: Path = FolderArg,
         template: str = typer.Option("feature-store", "--template", "-t",
                                      help="feature-store or tabular."),
         name: str | None = typer.Option(None, "--name", help="The project's name (default: "
                                         "the folder's)."),
         force: bool = typer.Option(False, "--force", help="Write into a folder that is not "
                                    "empty.")) -> None:
    """Scaffold a project that trains and serves as it is; its README says what to edit."""
    from mlplatform.errors import ConfigError
    from mlplatform.project.scaffold import scaffold

    try:
        written = scaffold(folder, template, name, force)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    for path in written:
        typer.echo(f"  wrote {path}")
    typer.echo(f"project ready: {folder} ({template}). Next: mlp train --project {folder}; "
               f"see {folder / 'README.md'}")
