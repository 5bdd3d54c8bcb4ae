"""Promotion gates: what a model version must pass before an alias (``champion``) moves to it.

A project's ``gates`` (inline in ``mlplatform.yaml`` or a YAML file beside it); every gate
reports its numbers so a refusal says exactly what failed by how much. The gates that score
data (champion comparison, behavioural checks, data validation, fairness) all use one holdout,
and the champion is scored on the same rows as the challenger. Each metric knows which way is
better (AUC-PR up, RMSE and log loss down: ``mlplatform.training.metrics_tasks``), so the same
gates work for binary, multiclass and regression models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from mlplatform.errors import ConfigError, config_error


def _better(metric: str) -> bool:
    from mlplatform.training.metrics_tasks import higher_is_better

    return higher_is_better(metric)


class ChampionGate(BaseModel):
    """No worse than the current champion, on the same holdout, by more than ``tolerance``."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(default="auc_pr", description="Holdout metric of evaluate()['overall']"
                        ": auc_pr, recall, f1 (binary), accuracy, log_loss, macro_f1 "
                        "(multiclass), rmse, mae, r2 (regression). Its direction (higher or "
                        "lower is better) is known.")
    tolerance: NonNegativeFloat = Field(default=0.01, description="Allowed absolute "
                                        "worsening (a drop, or a rise of a lower-is-better "
                                        "metric).")


class ApprovalGate(BaseModel):
    """Recorded approvals (``mlp registry approve``) from distinct approvers."""

    model_config = ConfigDict(extra="forbid")
    required: NonNegativeInt = Field(default=0, description="Distinct approvers needed.")
    aliases: list[str] = Field(default_factory=lambda: ["champion"],
                               description="Aliases whose moves need the approvals.")


class FairnessGate(BaseModel):
    """Bound the gap of a metric across the values of a slice column (e.g. recall by country)."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(default="recall", description="Slice metric: recall, precision, "
                        "auc_pr, auc_roc, f1, flagged_share (binary), accuracy, macro_f1 "
                        "(multiclass), rmse, mae (regression).")
    slice: str = Field(description="A request field of the project's evaluation.slices.")
    max_gap: NonNegativeFloat = Field(description="Largest allowed max - min across slices.")
    min_rows: NonNegativeInt = Field(default=100, description="Ignore smaller slices.")
    min_positives: NonNegativeInt = Field(default=5, description="Ignore slices with fewer "
                                          "positives (recall is noise there).")


class GateConfig(BaseModel):
    """The gates of one promotion. Unset gates do not run."""

    model_config = ConfigDict(extra="forbid")
    min_metrics: dict[str, float] = Field(
        default_factory=dict, description="Metric -> minimum, for higher-is-better metrics: "
        "holdout metrics (auc_pr, recall, accuracy, r2, ...) or the training run's (val_*).")
    max_metrics: dict[str, float] = Field(
        default_factory=dict, description="Metric -> maximum, for lower-is-better metrics: "
        "holdout metrics (rmse, mae, log_loss, ...) or the training run's (val_rmse, ...).")
    champion: ChampionGate | None = Field(default=None, description="Compare with the champion.")
    behavioural: bool = Field(default=False, description="Invariance and directional checks "
                              "pass on the holdout.")
    data_validation: bool = Field(default=False, description="The holdout passes `contract`.")
    contract: Path | None = Field(default=None, description="Data contract of the holdout "
                                  "(default: the project's evaluation.contract).")
    signature: bool = Field(default=True, description="Same required inputs as the champion.")
    approvals: ApprovalGate = Field(default_factory=ApprovalGate)
    fairness: list[FairnessGate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _directions(self) -> GateConfig:
        for key, wanted in (("min_metrics", True), ("max_metrics", False)):
            for metric in getattr(self, key):
                try:
                    better = _better(metric)
                except ValueError:
                    continue        # an unknown metric is reported by its gate, with its value
                if better != wanted:
                    other = "max_metrics" if wanted else "min_metrics"
                    raise ValueError(f"{key}.{metric}: {metric} is "
                                     f"{'lower' if wanted else 'higher'}-is-better; bound it "
                                     f"under {other}")
        if self.champion is not None:
            try:
                _better(self.champion.metric)
            except ValueError as exc:
                raise ValueError(f"champion.metric: {exc}") from None
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> GateConfig:
        """Load a gates file (its relative ``contract`` is next to it); errors name the file
        and every bad key."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"gates file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        gates = dict(data.get("gates", data))
        if gates.get("contract") and not Path(gates["contract"]).is_absolute():
            gates["contract"] = str(path.resolve().parent / gates["contract"])
        return cls.load(gates, source=f"gates file {path}")

    @classmethod
    def load(cls, gates: GateConfig | Mapping | str | Path | None, source: str = "gates"
             ) -> GateConfig:
        """A GateConfig from itself, a mapping, a YAML path, or None (only the signature gate)."""
        if isinstance(gates, GateConfig):
            return gates
        if isinstance(gates, (str, Path)):
            return cls.from_yaml(gates)
        if gates is None:
            return cls()
        try:
            return cls(**gates)
        except ValidationError as exc:
            raise config_error(source, exc, cls) from None

    @classmethod
    def for_project(cls, project) -> GateConfig:
        """The project's gates (inline, or its gates file relative to the project folder),
        with its evaluation contract unless the gates name another; only the signature gate
        when the project declares none."""
        gates = project.gates
        if isinstance(gates, str):
            config = cls.from_yaml(project.path(gates))
        else:
            config = cls.load(gates, source=f"gates of project file {project.file}")
        if config.contract is None and project.evaluation.contract:
            config = config.model_copy(update={
                "contract": project.path(project.evaluation.contract)})
        return config

    def needs_holdout(self) -> bool:
        return bool(self.champion or self.behavioural or self.data_validation or self.fairness
                    or any(not k.startswith("val_") for k in [*self.min_metrics,
                                                              *self.max_metrics]))


@dataclass
class GateResult:
    """One gate's verdict and the numbers behind it."""

    name: str
    passed: bool
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.message}"


@dataclass
class GateInputs:
    """What the gates judge: the candidate's holdout report and run metrics, the champion's."""

    run_metrics: dict[str, float]
    report: dict[str, Any] | None = None           # evaluate() of the candidate on the holdout
    champion_version: str | None = None
    champion_report: dict[str, Any] | None = None  # evaluate() of the champion, same holdout
    inputs: list[str] | None = None                # required signature inputs
    champion_inputs: list[str] | None = None
    approvers: list[str] = field(default_factory=list)
    holdout_validation: Any = None                 # ValidationReport of the holdout
    alias: str = "champion"


def evaluate_gates(gates: GateConfig, x: GateInputs) -> list[GateResult]:
    """Run every configured gate; returns one result per gate (passing ones too)."""
    checks: list[Callable[[], GateResult]] = []
    for metric, minimum in gates.min_metrics.items():
        checks.append(lambda m=metric, lo=minimum: _bound(x, m, lo, "min"))
    for metric, maximum in gates.max_metrics.items():
        checks.append(lambda m=metric, hi=maximum: _bound(x, m, hi, "max"))
    if gates.champion is not None:
        checks.append(lambda: _champion(x, gates.champion))
    if gates.behavioural:
        checks.append(lambda: _behavioural(x))
    if gates.data_validation:
        checks.append(lambda: _data_validation(x))
    if gates.signature:
        checks.append(lambda: _signature(x))
    if gates.approvals.required and x.alias in gates.approvals.aliases:
        checks.append(lambda: _approvals(x, gates.approvals.required))
    for spec in gates.fairness:
        checks.append(lambda s=spec: _fairness(x, s))
    return [check() for check in checks]


def _bound(x: GateInputs, metric: str, bound: float, kind: str) -> GateResult:
    overall = (x.report or {}).get("overall", {})
    value = overall.get(metric, x.run_metrics.get(metric))
    where = "holdout" if metric in overall else "training run"
    name = f"{kind}_metric:{metric}"
    if value is None:
        known = sorted({*(k for k, v in overall.items() if isinstance(v, (int, float))),
                        *x.run_metrics})
        return GateResult(name, False, f"metric {metric!r} is not known; known: {known}",
                          {"metric": metric, "minimum" if kind == "min" else "maximum": bound})
    ok = value >= bound if kind == "min" else value <= bound
    sign = (">=" if ok else "<") if kind == "min" else ("<=" if ok else ">")
    return GateResult(name, ok, f"{metric} = {value:.4f} on the {where} {sign} "
                      f"{'minimum' if kind == 'min' else 'maximum'} {bound:.4f}",
                      {"value": value, "minimum" if kind == "min" else "maximum": bound})


def _champion(x: GateInputs, spec: ChampionGate) -> GateResult:
    name = f"no_worse_than_champion:{spec.metric}"
    if x.champion_version is None:
        return GateResult(name, True, "no current champion: nothing to compare with")
    new = (x.report or {}).get("overall", {}).get(spec.metric)
    old = (x.champion_report or {}).get("overall", {}).get(spec.metric)
    if new is None or old is None:
        return GateResult(name, False, f"{spec.metric} is missing from the holdout evaluation")
    higher = _better(spec.metric)
    drop = (old - new) if higher else (new - old)   # how much worse the candidate is
    ok = drop <= spec.tolerance
    return GateResult(
        name, ok, f"candidate {spec.metric} {new:.4f} vs champion v{x.champion_version} "
        f"{old:.4f} on the same {x.report['rows']} holdout rows "
        f"({'higher' if higher else 'lower'} is better): "
        f"{'worse by' if drop > 0 else 'better by'} {abs(drop):.4f} "
        f"({'within' if ok else 'beyond'} tolerance {spec.tolerance:.4f})",
        {"candidate": new, "champion": old, "champion_version": x.champion_version,
         "drop": drop, "tolerance": spec.tolerance, "higher_is_better": higher})


def _behavioural(x: GateInputs) -> GateResult:
    checks = (x.report or {}).get("checks", {})
    if not checks:
        return GateResult("behavioural", False, "no behavioural checks ran on the holdout")
    failed = {k: v for k, v in checks.items() if not v.get("passed")}
    parts = [f"{k}: {_brief(v)}" for k, v in (failed or checks).items()]
    return GateResult("behavioural", not failed,
                      ("failed " if failed else "passed ") + "; ".join(parts),
                      {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, (list, dict))}
                       for k, v in checks.items()})


def _brief(check: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in check.items() if k != "passed" and not isinstance(v, (list, dict)))


def _data_validation(x: GateInputs) -> GateResult:
    report = x.holdout_validation
    if report == "no contract":
        return GateResult("data_validation", False, "no contract to validate the holdout with: "
                          "set the project's evaluation.contract (or the gates' contract)")
    if report is None:
        return GateResult("data_validation", False, "the holdout was not validated")
    if report.passed:
        return GateResult("data_validation", True, f"the {report.num_rows} holdout rows pass "
                          f"contract '{report.contract}'", {"rows": report.num_rows})
    return GateResult("data_validation", False,
                      f"the holdout breaks contract '{report.contract}': "
                      + "; ".join(f"{c.check} {c.column or ''} ({c.failing_count} rows) "
                                  f"{c.message}".strip() for c in report.failures),
                      {"failures": len(report.failures), "rows": report.num_rows})


def _signature(x: GateInputs) -> GateResult:
    if x.champion_inputs is None:
        return GateResult("signature", True, "no current champion: nothing to compare with")
    if x.inputs is None:
        return GateResult("signature", False, "the candidate has no model signature")
    missing = [c for c in x.champion_inputs if c not in x.inputs]
    extra = [c for c in x.inputs if c not in x.champion_inputs]
    ok = not missing and not extra
    msg = (f"same {len(x.inputs)} required inputs as champion v{x.champion_version}" if ok else
           f"required inputs differ from champion v{x.champion_version}: missing {missing}, "
           f"new {extra} (callers send the champion's inputs)")
    return GateResult("signature", ok, msg, {"missing": missing, "extra": extra})


def _approvals(x: GateInputs, required: int) -> GateResult:
    have = sorted(set(x.approvers))
    ok = len(have) >= required
    return GateResult("approvals", ok, f"{len(have)} of {required} distinct approvals "
                      f"{have or ''} (record one: mlp registry approve)".replace(" ''", ""),
                      {"approvers": have, "required": required})


def _fairness(x: GateInputs, spec: FairnessGate) -> GateResult:
    name = f"fairness:{spec.metric}_by_{spec.slice}"
    slices = (x.report or {}).get("slices", {}).get(spec.slice)
    if slices is None:
        return GateResult(name, False, f"no slices by {spec.slice!r} in the holdout evaluation")
    values = {k: v[spec.metric] for k, v in slices.items()
              if v.get("rows", 0) >= spec.min_rows and v.get("positives", 0) >= spec.min_positives
              and v.get(spec.metric) is not None}
    if len(values) < 2:
        return GateResult(name, True, f"fewer than 2 {spec.slice} slices with "
                          f">= {spec.min_rows} rows and >= {spec.min_positives} positives")
    lo, hi = min(values, key=values.get), max(values, key=values.get)
    gap = values[hi] - values[lo]
    ok = gap <= spec.max_gap
    return GateResult(name, ok, f"{spec.metric} gap {gap:.4f} between {spec.slice} {hi} "
                      f"({values[hi]:.4f}) and {lo} ({values[lo]:.4f}) "
                      f"{'<=' if ok else '>'} {spec.max_gap:.4f}",
                      {"gap": gap, "max_gap": spec.max_gap, "by_slice": values})
