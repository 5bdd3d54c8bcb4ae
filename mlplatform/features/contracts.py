"""Data contracts: what a dataset must satisfy (YAML), and the report of checking one.

A :class:`Contract` says which columns a dataset must have, their types, null rules, ranges,
vocabularies and uniqueness, plus row-count and label rules. :func:`load_contract` reads one from
YAML (errors name the file and the key). :mod:`mlplatform.features.validation` checks datasets
against contracts on Ray Data and returns a :class:`ValidationReport`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlplatform.errors import ConfigError, validation_lines

TypeName = Literal["int", "float", "string", "timestamp", "bool"]


# ----------------------------------------------------------------------------- the contract
class ColumnRule(BaseModel):
    """What one column must satisfy. Nulls (and NaN in float columns) count only for null rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: TypeName | None = Field(None, description="Arrow type family the column must have.")
    nullable: bool = Field(True, description="False: any null fails.")
    max_null_share: float | None = Field(None, ge=0, le=1, description="Highest share of nulls.")
    min: float | datetime | None = Field(
        None, description="Inclusive lower bound: a number, or an ISO timestamp for timestamps "
        "(a timestamp without a zone means UTC).")
    max: float | datetime | None = Field(None, description="Inclusive upper bound, as for min.")
    allowed: list[str | int | bool] | None = Field(
        None, min_length=1, description="Allowed values (categories); nulls are not checked here.")
    unique: bool = Field(False, description="No non-null value may occur twice (ids).")

    @field_validator("min", "max", mode="before")
    @classmethod
    def _parse_bound(cls, value: Any) -> Any:
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, (str, date)):
            try:
                return float(value)  # a quoted number
            except (TypeError, ValueError):
                pass
            try:
                ts = pd.Timestamp(value)
            except (ValueError, TypeError):
                raise ValueError(f"{value!r} is neither a number nor an ISO timestamp") from None
            return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).to_pydatetime()
        raise ValueError("a bound must be a number or an ISO timestamp")

    @model_validator(mode="after")
    def _check_bounds(self) -> ColumnRule:
        bounds = [b for b in (self.min, self.max) if b is not None]
        if len({isinstance(b, datetime) for b in bounds}) > 1:
            raise ValueError("min and max must both be numbers or both be timestamps")
        if len(bounds) == 2 and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if bounds and self.type in ("string", "bool"):
            raise ValueError(f"min/max do not apply to {self.type} columns")
        if bounds and self.type is not None and (self.type == "timestamp") != isinstance(bounds[0], datetime):
            kind = "ISO timestamps" if self.type == "timestamp" else "numbers"
            raise ValueError(f"bounds of a {self.type} column must be {kind}")
        return self


class RowCount(BaseModel):
    """Inclusive bounds on the number of rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int | None = Field(None, ge=0, description="Fewest rows allowed.")
    max: int | None = Field(None, ge=0, description="Most rows allowed.")

    @model_validator(mode="after")
    def _check(self) -> RowCount:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class LabelRule(BaseModel):
    """The label column: it must exist and hold only ``values`` (a null label fails too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(min_length=1, description="Name of the label column.")
    values: list[int | str | bool] = Field(min_length=1, description="Allowed label values.")


class Contract(BaseModel):
    """A dataset's contract: every declared column must exist and meet its :class:`ColumnRule`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Contract name, shown in reports and errors.")
    description: str = Field("", description="What data this contract is for.")
    columns: dict[str, ColumnRule] = Field(description="Rules per column name.")
    row_count: RowCount | None = Field(None, description="Bounds on the number of rows.")
    label: LabelRule | None = Field(None, description="The label column and its allowed values.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Contract:
        """Load a contract from a YAML file.

        Raises:
            ConfigError: The file is missing, not YAML, not a mapping, or breaks the schema;
                the message names the file and the offending key.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"contract file {path} does not exist; pass an existing YAML file.")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"contract file {path} is not valid YAML: {exc}") from None
        return _parse(data, f"contract file {path}")


def load_contract(source: str | Path | Mapping[str, Any] | Contract) -> Contract:
    """A :class:`Contract` from itself, a mapping, or a YAML file path.

    Raises:
        ConfigError: The source is invalid (see :meth:`Contract.from_yaml`).
    """
    if isinstance(source, Contract):
        return source
    if isinstance(source, Mapping):
        return _parse(dict(source), "contract mapping")
    if isinstance(source, (str, Path)):
        return Contract.from_yaml(source)
    raise ConfigError(f"a contract must be a Contract, a mapping or a YAML path, got {type(source).__name__}")


def _parse(data: Any, where: str) -> Contract:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(Contract.model_fields)}; "
                          f"got {type(data).__name__}.")
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc, Contract)
        raise ConfigError(f"{where} is not a valid contract:\n  - " + "\n  - ".join(lines)) from None


# ----------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class CheckResult:
    """One rule checked on the whole dataset.

    ``failing_count`` counts rows, except for ``unique`` (rows beyond the first of each
    duplicated value) and ``row_count`` (rows short of min or beyond max).
    """

    check: str
    column: str | None
    passed: bool
    failing_count: int
    examples: list = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """Every check of a contract on one dataset."""

    contract: str
    num_rows: int
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        """A header line, then a table of every failing check with its count and examples."""
        fails = self.failures
        head = (f"contract '{self.contract}' on {self.num_rows:,} rows: "
                + (f"FAILED {len(fails)} of {len(self.checks)} checks" if fails
                   else f"passed all {len(self.checks)} checks"))
        if not fails:
            return head
        width = max(len("column"), *(len(c.column or "-") for c in fails))
        rows = [f"  {'check':<15} {'column':<{width}} {'failing':>9}  detail"]
        rows += [f"  {c.check:<15} {c.column or '-':<{width}} {c.failing_count:>9,}  {c.message}"
                 for c in fails]
        return "\n".join([head, *rows])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for MLflow artifacts and APIs)."""
        return {"contract": self.contract, "num_rows": self.num_rows, "passed": self.passed,
                "checks": [asdict(c) for c in self.checks]}
