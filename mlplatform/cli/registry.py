"""``mlp registry`` and ``mlp audit``: thin calls into :class:`mlplatform.registry.ModelRegistry`
and :class:`mlplatform.registry.AuditLog`.

Exit status: 0 done, 1 refused or failed (a promotion's failed gates are printed with their
numbers), 2 bad arguments or config.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mlplatform.cli._common import ConfigOpt, ProjectOpt, fail, load_config

registry_app = typer.Typer(help="The model registry: versions, aliases, promotion through gates, "
                           "rollback, history, approvals, model cards.", no_args_is_help=True)
audit_app = typer.Typer(help="The registry's hash-chained audit trail.", no_args_is_help=True)

NameArg = typer.Argument(..., help="Registered model name, e.g. churn.")
VersionArg = typer.Argument(..., help="Model version number.")
AliasOpt = typer.Option("champion", "--alias", help="Alias to move.")
ToOpt = typer.Option("champion", "--to", help="Alias to move to the version.")
GatesOpt = typer.Option(None, "--gates", help="Gates YAML (default: the project's gates).")
HoldoutOpt = typer.Option(None, "--holdout", help="Labelled Parquet (training-set layout) both "
                          "models are scored on (default: the candidate run's validation rows).")
ReasonOpt = typer.Option(None, "--reason", "-m", help="Why (kept in the history and audit trail).")
ActorOpt = typer.Option(None, "--actor", help="Who (default: $MLP_ACTOR or user@host).")
RollbackToOpt = typer.Option(None, "--to", help="Version to go to (default: the previous holder).")
ApproverOpt = typer.Option(..., "--approver", help="Who approves (a person's name).")
NoteOpt = typer.Option(None, "--note", help="What the approver checked.")
DatasetOpt = typer.Option(None, "--data", help="Evaluate on these labelled rows (Parquet) first.")
ModelOpt = typer.Option(None, "--model", help="Only events of this model.")
PromoteProjectOpt = typer.Option(None, "--project", "-p", help="The model's project (its gates, "
                                 "slices and checks; default: the one its training run names).")
OnnxArg = typer.Argument(..., help="The model, exported to ONNX (.onnx).")
LastOpt = typer.Option(20, "--last", "-n", min=1, help="Show the last N events.")


def _registry(config: Path | None):
    from mlplatform.registry import ModelRegistry

    return ModelRegistry(load_config(config))


def _guard(fn, code: int = 1):
    """Run ``fn``; print an mlplatform or argument error in red and exit ``code``."""
    from mlplatform.errors import MLPlatformError

    try:
        return fn()
    except (MLPlatformError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(code if isinstance(exc, MLPlatformError) else 2) from None


def _rows(path: Path | None, option: str):
    """Labelled rows of a Parquet file as a DataFrame (scored in this process, like the default
    holdout), or None; exit 2 when the file is missing."""
    if path is None:
        return None
    if not path.exists():
        typer.secho(f"error: {option} {path} does not exist", fg="red", err=True)
        raise typer.Exit(2)
    import pandas as pd

    return pd.read_parquet(path)


@registry_app.command("list")
def list_models(name: str | None = typer.Argument(None, help="A model: list its versions."),
                config: Path | None = ConfigOpt) -> None:
    """List registered models (with their aliases), or the versions of one model."""
    reg = _registry(config)
    if name is None:
        for m in reg._client.search_registered_models(max_results=1000):
            aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted((m.aliases or {}).items()))
            typer.echo(f"{m.name}  {aliases or '(no aliases)'}")
        return
    for v in _guard(lambda: reg.list_versions(name)):
        metrics = ", ".join(f"{k.removeprefix('metric.')} {float(val):.4f}"
                            for k, val in sorted(v.tags.items())
                            if k.startswith("metric.val_"))[:80]
        typer.echo(f"v{v.version:<4} {' '.join('@' + a for a in v.aliases):<24} "
                   f"{metrics or '-':<40} run {v.run_id}")


@registry_app.command("show")
def show(ref: str = typer.Argument(..., help="churn@champion or churn/3."),
         config: Path | None = ConfigOpt) -> None:
    """Show one version: source, run, aliases and tags (lineage, metrics, audit mirror)."""
    v = _guard(lambda: _registry(config).resolve(ref))
    typer.echo(f"{v.name} v{v.version}  aliases: {', '.join(v.aliases) or '-'}")
    typer.echo(f"source: {v.source}\nrun_id: {v.run_id}")
    for key in sorted(v.tags):
        typer.echo(f"  {key}: {v.tags[key]}")


@registry_app.command("promote")
def promote(name: str = NameArg, version: str = VersionArg, to: str = ToOpt,
            gates: Path | None = GatesOpt, holdout: Path | None = HoldoutOpt,
            reason: str | None = ReasonOpt, actor: str | None = ActorOpt,
            project: Path | None = PromoteProjectOpt,
            config: Path | None = ConfigOpt) -> None:
    """Move an alias (champion) to a version only if every gate passes; print every gate."""
    from mlplatform.errors import PromotionRefused

    reg = _registry(config)
    rows = _rows(holdout, "--holdout")

    def attempt():
        try:
            return reg.promote(name, version, to=to, gates=gates, holdout=rows, actor=actor,
                               reason=reason, project=project)
        except PromotionRefused as exc:   # every gate, with its numbers, on stdout
            typer.secho(exc.decision.summary(), fg="red")
            raise typer.Exit(1) from None

    typer.secho(_guard(attempt).summary(), fg="green")


@registry_app.command("import")
def import_model(model: Path = OnnxArg,
                 project: Path | None = ProjectOpt,
                 name: str | None = typer.Option(None, "--name", help="Registered model name "
                                                 "(default: the project's name)."),
                 alias: str | None = typer.Option(None, "--alias", help="Alias to set (default: "
                                                  "none: promote it through the gates)."),
                 config: Path | None = ConfigOpt) -> None:
    """Bring a model trained elsewhere: score it on the project's validation rows, log it as a
    run of the project and register it. It must be ONNX (skl2onnx, onnxmltools,
    torch.onnx.export): a pickle is refused."""
    from mlplatform._ray import init_ray
    from mlplatform.cli._common import load_project
    from mlplatform.errors import MLPlatformError
    from mlplatform.models.onnx_model import load_graph
    from mlplatform.pipelines.import_job import run_import_job

    if not model.is_file():
        fail(f"{model} does not exist; export your model to a .onnx file first", 2)
    cfg = load_config(config, project)
    loaded = load_project(project, cfg)
    try:
        load_graph(model)       # not ONNX (a pickle): refused before Ray or MLflow start
    except MLPlatformError as exc:
        fail(exc)
    init_ray(cfg)
    try:
        _, mv = run_import_job(loaded, cfg, model, name=name, alias=alias, echo=typer.echo)
    except MLPlatformError as exc:
        fail(exc)
    typer.secho(f"registered: models:/{mv.name}/{mv.version}"
                + (f" (aliases {', '.join('@' + a for a in mv.aliases)})" if mv.aliases else "")
                + f"; next: mlp registry promote {mv.name} {mv.version}", fg="green")


@registry_app.command("rollback")
def rollback(name: str = NameArg, alias: str = AliasOpt, to: str | None = RollbackToOpt,
             reason: str | None = ReasonOpt, actor: str | None = ActorOpt,
             config: Path | None = ConfigOpt) -> None:
    """Move an alias back to its previous holder (from the history) or to --to VERSION."""
    move = _guard(lambda: _registry(config).rollback(name, alias, to_version=to, actor=actor,
                                                     reason=reason))
    typer.echo(f"@{alias} of {name}: v{move.from_version} -> v{move.to_version}")


@registry_app.command("history")
def history(name: str = NameArg, alias: str | None = typer.Option(None, "--alias"),
            config: Path | None = ConfigOpt) -> None:
    """Every alias move and attempted promotion: time, alias, from -> to, actor, outcome, reason."""
    for m in _guard(lambda: _registry(config).history(name, alias)):
        typer.echo(f"{m.time[:19]}  @{m.alias:<11} {m.action:<9} v{m.from_version or '-'} -> "
                   f"v{m.to_version or '-'}  {m.outcome:<8} {m.actor}"
                   + (f"  ({m.reason})" if m.reason else ""))


@registry_app.command("approve")
def approve(name: str = NameArg, version: str = VersionArg, approver: str = ApproverOpt,
            note: str | None = NoteOpt, config: Path | None = ConfigOpt) -> None:
    """Record an approval of a version (the approvals gate counts distinct approvers)."""
    reg = _registry(config)
    _guard(lambda: reg.approve(name, version, approver, note))
    typer.echo(f"approved {name} v{version} by {approver}; approvers now: "
               f"{', '.join(reg.approvals(name, version))}")


@registry_app.command("card")
def card(name: str = NameArg, version: str = VersionArg, data: Path | None = DatasetOpt,
         project: Path | None = PromoteProjectOpt, config: Path | None = ConfigOpt) -> None:
    """Render the model card (Markdown + HTML), log it on the version, and print it."""
    from mlplatform.registry import generate_model_card

    cfg = load_config(config)
    rows = _rows(data, "--data")
    path = _guard(lambda: generate_model_card(name, version, config=cfg, dataset=rows,
                                              project=project))
    typer.echo(Path(path).read_text())
    typer.secho(f"card: {path} (+ {Path(path).with_suffix('.html').name})", fg="green", err=True)


@audit_app.command("show")
def audit_show(model: str | None = ModelOpt, last: int = LastOpt,
               as_json: bool = typer.Option(False, "--json", help="One JSON event per line."),
               config: Path | None = ConfigOpt) -> None:
    """Print the last audit events: seq, time, actor, action, model/version, outcome, reason."""
    reg = _registry(config)
    for e in reg.audit.events(model=model)[-last:]:
        if as_json:
            typer.echo(json.dumps(e, sort_keys=True))
            continue
        what = f"{e['model']}" + (f" v{e['version']}" if e.get("version") else "") \
            + (f" @{e['alias']}" if e.get("alias") else "")
        typer.echo(f"#{e['seq']:<5} {e['time'][:19]}  {e['actor']:<20} {e['action']:<10} "
                   f"{what:<28} {e['outcome']:<8}" + (f" {e['reason']}" if e.get("reason") else ""))


@audit_app.command("verify")
def audit_verify(config: Path | None = ConfigOpt) -> None:
    """Check the hash chain of the audit log; exit 1 naming the first broken line."""
    result = _registry(config).audit.verify()
    if result.ok:
        typer.secho(f"audit log OK: {result.message}", fg="green")
        return
    typer.secho(f"audit log BROKEN: {result.message} ({result.events} events before it verify)",
                fg="red", err=True)
    raise typer.Exit(1)
