"""``mlp features``: a project's feature store (build, materialize, validate, show)."""

from __future__ import annotations

from pathlib import Path

import typer

from mlplatform.cli._common import ConfigOpt, ProjectOpt, fail, load_config, load_project

features_app = typer.Typer(help="The feature store of a project: build, materialize, validate, "
                           "show.", no_args_is_help=True)
ViewsOpt = typer.Option(None, "--view", "-v", help="Feature view (repeatable; default: all).")
DataArg = typer.Argument(None, help="Parquet to check (default: the source).")
ContractOpt = typer.Option(None, help="Contract YAML (default: the source's).")


def _store(config: Path | None, project: Path | None, connect: bool = True):
    from mlplatform._ray import init_ray
    from mlplatform.errors import MLPlatformError
    from mlplatform.features import FeatureStore

    cfg = load_config(config, project)
    loaded = load_project(project, cfg)
    try:
        store = FeatureStore(cfg, loaded)
    except MLPlatformError as exc:
        fail(exc, 2)
    if connect:
        init_ray(cfg)
    return store


@features_app.command("build")
def features_build(
    view: list[str] | None = ViewsOpt,
    start: str | None = typer.Option(None, help="First date to recompute (YYYY-MM-DD)."),
    end: str | None = typer.Option(None, help="Date to stop before (YYYY-MM-DD)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the source's contract."),
    buckets: int | None = typer.Option(None, "--buckets", min=1, help="Hash groups of entities "
                                       "(default: one per 20,000 source rows, 8 to 64)."),
    config: Path | None = ConfigOpt, project: Path | None = ProjectOpt,
) -> None:
    """Compute feature views with Ray Data into a new offline version."""
    from mlplatform.errors import MLPlatformError

    store = _store(config, project)
    try:
        built = store.build(view or None, start=start, end=end, validate=not no_validate,
                            num_buckets=buckets)
    except MLPlatformError as exc:
        fail(exc)
    for name, m in built.items():
        typer.echo(f"{name}: version {m.version}, {m.num_rows:,} rows, "
                   f"{len(m.data['partitions'])} date partitions -> {m.path}")


@features_app.command("materialize")
def features_materialize(
    view: list[str] | None = ViewsOpt,
    start: str | None = typer.Option(None, help="Only rows at/after this time (default: the "
                                     "view's watermark, i.e. incremental)."),
    end: str | None = typer.Option(None, help="Only rows before this time (default: all)."),
    config: Path | None = ConfigOpt, project: Path | None = ProjectOpt,
) -> None:
    """Write the latest value per entity into the online store (incremental by default)."""
    from mlplatform.errors import MLPlatformError

    store = _store(config, project)
    try:
        written = (store.materialize(start, end, view or None) if start
                   else store.materialize_incremental(end, view or None))
    except MLPlatformError as exc:
        fail(exc)
    for name, n in written.items():
        typer.echo(f"{name}: {n:,} entities written; watermark "
                   f"{store.online.get_watermark(name)}")


@features_app.command("validate")
def features_validate(
    path: Path | None = DataArg,
    contract: Path | None = ContractOpt,
    source: str | None = typer.Option(None, help="Source whose data/contract to use (default: "
                                      "the project's labelled events)."),
    config: Path | None = ConfigOpt, project: Path | None = ProjectOpt,
) -> None:
    """Check data against its contract on Ray Data; exit 1 listing every failed check."""
    from mlplatform.errors import MLPlatformError
    from mlplatform.features import validate

    store = _store(config, project)
    source = source or store.default_source
    try:
        report = validate(path or store.source_path(source),
                          contract or store.contract_path(source))
    except MLPlatformError as exc:
        fail(exc)
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)


@features_app.command("show")
def features_show(
    view: str = typer.Argument(..., help="Feature view name."),
    config: Path | None = ConfigOpt, project: Path | None = ProjectOpt,
) -> None:
    """Print a view's definition, its offline versions and its online state."""
    import json

    store = _store(config, project, connect=False)
    try:
        info = store.describe(view)
    except KeyError as exc:
        fail(exc)
    info["online"] = {"entities": store.online.count(view),
                      "watermark": str(store.online.get_watermark(view))}
    typer.echo(json.dumps(info, indent=2, default=str))
