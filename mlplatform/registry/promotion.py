"""Promotion through gates, rollback and alias history, on top of :class:`ModelRegistry`.

Guarantees (see README "Registry"): a promotion holds the audit log's exclusive lock from
reading the current alias holder to moving the alias and writing the event, so promotions
racing on one ``storage_root`` are serialised: each is judged against the champion the
previous one left, the alias ends at one of them, and the history holds every attempt with its
true outcome. Processes on different machines share the guarantee only if ``storage_root`` is
on a file system with working ``flock`` (NFSv4, not S3); otherwise the MLflow server's
database still makes each alias write atomic (last writer wins) and every attempt is logged
by the machine that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlplatform.errors import DataValidationError, PromotionRefused, RegistryError
from mlplatform.registry.gates import GateConfig, GateInputs, GateResult, evaluate_gates
from mlplatform.registry.registry import ModelRegistry, check_alias

_MOVES = ("alias_set", "promote", "rollback")


@dataclass
class PromotionDecision:
    """The outcome of :meth:`ModelRegistry.promote`: every gate with its numbers."""

    name: str
    version: str
    alias: str
    from_version: str | None
    accepted: bool
    gates: list[GateResult] = field(default_factory=list)
    actor: str | None = None
    reason: str | None = None
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def summary(self) -> str:
        head = (f"promotion of {self.name} v{self.version} to @{self.alias} "
                f"(now v{self.from_version or '-'}): "
                + ("ACCEPTED" if self.accepted else f"REFUSED by {len(self.failed)} gate(s)"))
        return "\n".join([head, *(f"  {g.line()}" for g in self.gates)])


@dataclass(frozen=True)
class AliasMove:
    """One alias move or attempted move, from the audit trail."""

    time: str
    alias: str
    action: str          # alias_set | promote | rollback
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str | None
    outcome: str         # ok | accepted | refused | failed | exists
    seq: int


def promote(reg: ModelRegistry, name: str, version: str, to: str = "champion", gates: Any = None,
            holdout: Any = None, actor: str | None = None, reason: str | None = None,
            project: Any = None) -> PromotionDecision:
    """Evaluate the gates for ``name`` v``version`` and only then move alias ``to`` to it.

    Args:
        reg: The registry.
        name, version: The candidate.
        to: The alias to move (``champion`` by default).
        gates: :class:`GateConfig`, a mapping, a YAML path, or None: the project's gates
            (else the signature gate only).
        holdout: Labelled rows in the training-set layout (DataFrame or Parquet path) that the
            candidate and the champion are both scored on. Default: the candidate run's
            time-split validation rows.
        actor, reason: For the history and the audit trail.
        project: The candidate's :class:`~mlplatform.project.Project` (its gates, evaluation
            contract, slices and behavioural checks). Default: the project its training run
            names.

    Returns:
        The accepted decision (the alias points at the candidate).

    Raises:
        PromotionRefused: A gate failed; the message lists each failed gate with its numbers,
            ``.decision`` has them all. Nothing changed except the audit trail.
    """
    check_alias(to)
    mv = reg.resolve(f"{name}/{version}")
    if project is None:
        from mlplatform.training.evaluation import run_project

        project = run_project(reg.config, mv.run_id)
    elif not hasattr(project, "task"):
        from mlplatform.project import load_project

        project = load_project(project)
    if gates is None and project is not None:
        config = GateConfig.for_project(project)
    else:
        config = GateConfig.load(gates)
        if config.contract is None and project is not None and project.evaluation.contract:
            config = config.model_copy(update={
                "contract": project.path(project.evaluation.contract)})
    with reg.audit.locked():
        current = reg.alias_holder(name, to)
        if current == mv.version:    # nothing to move, but the attempt is history too
            event = reg._record("promote", name, mv.version, alias=to, actor=actor,
                                reason=reason, outcome="exists", locked=True,
                                details={"from_version": current, "to_version": mv.version})
            return PromotionDecision(name, mv.version, to, current, True, [GateResult(
                "already", True, f"@{to} already points at v{current}")], event["actor"], reason)
        try:
            inputs, report = _gate_inputs(reg, mv, current, config, holdout, to, project)
        except Exception as exc:
            reg._record("promote", name, mv.version, alias=to, actor=actor, reason=reason,
                        outcome="failed", details={"from_version": current,
                                                   "to_version": mv.version,
                                                   "error": f"{type(exc).__name__}: {exc}"[:2000]},
                        locked=True)
            raise
        results = evaluate_gates(config, inputs)
        decision = PromotionDecision(name, mv.version, to, current,
                                     all(g.passed for g in results), results, actor, reason)
        details = {"from_version": current, "to_version": mv.version,
                   "gates": [{"name": g.name, "passed": g.passed, "message": g.message}
                             for g in results]}
        if decision.accepted:
            reg._client.set_registered_model_alias(name, to, mv.version)
        event = reg._record("promote", name, mv.version, alias=to, actor=actor, reason=reason,
                            outcome="accepted" if decision.accepted else "refused",
                            details=details, locked=True)
        decision.actor = event["actor"]
    if report is not None:
        from mlplatform.registry.cards import store_evaluation

        store_evaluation(reg.config, name, mv.version, report)
    if not decision.accepted:
        raise PromotionRefused(decision.summary(), decision)
    return decision


def _gate_inputs(reg: ModelRegistry, mv, champion: str | None, config: GateConfig, holdout,
                 alias: str, project: Any = None) -> tuple[GateInputs, dict | None]:
    run_metrics = reg._client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    x = GateInputs(run_metrics=dict(run_metrics), champion_version=champion, alias=alias,
                   approvers=reg.approvals(mv.name, mv.version))
    if config.signature:
        x.inputs = _required_inputs(mv.uri)
        x.champion_inputs = _required_inputs(f"models:/{mv.name}/{champion}") if champion else None
    report = None
    if config.needs_holdout():
        from mlplatform.training.evaluation import evaluate

        frame = default_holdout(reg, mv) if holdout is None else holdout
        report = evaluate(mv.uri, frame, platform=reg.config, project=project,
                          checks=config.behavioural)
        x.report = report
        if config.champion is not None and champion is not None:
            x.champion_report = evaluate(f"models:/{mv.name}/{champion}", frame,
                                         platform=reg.config, project=project, checks=False)
        if config.data_validation:
            from mlplatform.features.validation import validate

            x.holdout_validation = (validate(frame, config.contract) if config.contract
                                    else "no contract")
    return x, report


def _required_inputs(uri: str) -> list[str] | None:
    import mlflow

    sig = mlflow.models.get_model_info(uri).signature
    if sig is None or sig.inputs is None:
        return None
    return [c.name for c in sig.inputs.inputs if getattr(c, "required", True)]


def default_holdout(reg: ModelRegistry, mv):
    """The candidate run's validation rows (its ``features_path`` tag and split params) as a
    DataFrame.

    Raises:
        DataValidationError: The run does not say where its data is; pass ``holdout``.
    """
    from mlplatform.training.data import holdout_rows

    run = reg._client.get_run(mv.run_id) if mv.run_id else None
    path = run.data.tags.get("features_path") if run else None
    params = dict(run.data.params) if run else {}
    if not path or not (params.get("split_cutoff") or params.get("split_u_cutoff")):
        raise DataValidationError(
            f"{mv.uri}: its run records no features_path and split to take a holdout from; "
            "pass holdout= (a DataFrame or Parquet path in the training-set layout)")
    return holdout_rows(path, params)


def history(reg: ModelRegistry, name: str, alias: str | None = None) -> list[AliasMove]:
    """Every alias move and attempted promotion of ``name`` (for ``alias`` or all), oldest
    first, from the audit trail."""
    out = []
    for e in reg.audit.events(model=name):
        if e["action"] not in _MOVES or (alias is not None and e.get("alias") != alias):
            continue
        d = e.get("details") or {}
        out.append(AliasMove(e["time"], e["alias"], e["action"], d.get("from_version"),
                             d.get("to_version", e.get("version")), e["actor"], e.get("reason"),
                             e["outcome"], e["seq"]))
    return out


def _holders(moves: list[AliasMove]) -> list[str]:
    """The stack of holders the moves left: a rollback pops the holder it replaced."""
    stack: list[str] = []
    for m in moves:
        if m.outcome not in ("ok", "accepted", "exists") or m.to_version is None:
            continue
        if m.action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != m.to_version:
            stack.append(m.to_version)
    return stack


def rollback(reg: ModelRegistry, name: str, alias: str = "champion",
             to_version: str | int | None = None, actor: str | None = None,
             reason: str | None = None) -> AliasMove:
    """Move ``alias`` back to the holder before the current one (or to ``to_version``).

    Raises:
        RegistryError: The alias has no previous holder to go back to.
        ModelNotFound: The model, alias or ``to_version`` does not exist.
    """
    check_alias(alias)
    with reg.audit.locked():
        current = reg.alias_holder(name, alias)
        if current is None:
            reg.resolve(f"{name}@{alias}")           # raises ModelNotFound, listing aliases
        if to_version is not None:
            target = reg.resolve(f"{name}/{to_version}").version
        else:
            stack = _holders(history(reg, name, alias))
            if stack and stack[-1] == current:
                stack = stack[:-1]
            if not stack:
                raise RegistryError(
                    f"@{alias} of {name} (v{current}) has no previous holder in the history: "
                    f"name one with to_version (mlp registry rollback {name} --to <version>)")
            target = stack[-1]
        reg._client.set_registered_model_alias(name, alias, target)
        reg._record("rollback", name, target, alias=alias, actor=actor, reason=reason,
                    details={"from_version": current, "to_version": target}, locked=True)
    return history(reg, name, alias)[-1]
