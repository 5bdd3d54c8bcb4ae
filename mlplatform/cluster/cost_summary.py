"""``mlp cost``: the cost every job logged on its MLflow run (:mod:`mlplatform.cluster.cost`),
summed per model and per job since a cutoff.

Example:
    >>> from mlplatform.cluster.cost_summary import parse_since, summarize
    >>> groups, total = summarize([], by="model")
    >>> groups, total.runs
    ([], 0)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from mlplatform.cluster.cost import JOB_TAG, MODEL_TAG
from mlplatform.errors import ConfigError

if TYPE_CHECKING:
    from mlplatform.config import PlatformConfig

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.I)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_BY_TYPE = "cost.gpu_hours."


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m`` (before ``now``) or an ISO date/time -> an aware datetime.

    A naive ISO time is local time.

    Raises:
        ConfigError: Neither form.
    """
    now = now or datetime.now(timezone.utc)
    m = _SINCE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r}: give a duration like 7d, 24h, 30m, 2w or an ISO "
                          "date like 2025-01-31 (or 2025-01-31T08:00)") from None
    return when if when.tzinfo else when.astimezone()


@dataclass(frozen=True)
class CostRecord:
    """One job run's cost, as logged."""

    run_id: str
    job: str
    model: str
    start: datetime
    wall_s: float
    cpu_hours: float
    gpu_hours: float
    gpu_type: str
    usd: float
    #: ``(type, GPU-hours)`` when the run logged them per type (``cost.gpu_hours.<type>``)
    gpu_by_type: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_run(cls, run: Any) -> CostRecord:
        """From an MLflow ``Run`` (``info.run_id``, ``info.start_time`` ms, ``data``)."""
        m, t = run.data.metrics, run.data.tags
        by_type = tuple(sorted((k[len(_BY_TYPE):], v) for k, v in m.items()
                               if k.startswith(_BY_TYPE) and v))
        return cls(run.info.run_id, t.get(JOB_TAG, "-"), t.get(MODEL_TAG, "-"),
                   datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc),
                   m.get("cost.wall_s", 0.0), m.get("cost.cpu_hours", 0.0),
                   m.get("cost.gpu_hours", 0.0), t.get("cost.gpu_type", "none"),
                   m.get("cost.usd_estimate", 0.0), by_type)

    def gpu_hours_by_type(self) -> dict[str, float]:
        """GPU-hours per accelerator type (a run on several types logged each)."""
        if self.gpu_by_type:
            return dict(self.gpu_by_type)
        return {self.gpu_type: self.gpu_hours} if self.gpu_hours else {}


@dataclass
class CostSummary:
    """Totals of a group of runs."""

    key: str
    runs: int = 0
    wall_s: float = 0.0
    cpu_hours: float = 0.0
    gpu_hours: dict[str, float] = field(default_factory=dict)
    usd: float = 0.0

    def add(self, r: CostRecord) -> None:
        self.runs += 1
        self.wall_s += r.wall_s
        self.cpu_hours += r.cpu_hours
        self.usd += r.usd
        for kind, hours in r.gpu_hours_by_type().items():
            self.gpu_hours[kind] = self.gpu_hours.get(kind, 0.0) + hours


def summarize(records: Iterable[CostRecord], by: Literal["model", "job"]
              ) -> tuple[list[CostSummary], CostSummary]:
    """Group by ``model`` or ``job``: the groups (costliest first) and the total."""
    if by not in ("model", "job"):
        raise ConfigError(f"--by {by!r}: give model or job")
    groups: dict[str, CostSummary] = {}
    total = CostSummary("total")
    for r in records:
        key = getattr(r, by)
        groups.setdefault(key, CostSummary(key)).add(r)
        total.add(r)
    return sorted(groups.values(), key=lambda s: (-s.usd, -s.cpu_hours, s.key)), total


def format_table(groups: list[CostSummary], total: CostSummary, by: str) -> str:
    """An aligned text table with a total line."""
    header = [by, "runs", "wall h", "CPU-h", "GPU-h", "est. USD"]
    rows = [[s.key, str(s.runs), f"{s.wall_s / 3600:.3f}", f"{s.cpu_hours:.4f}",
             ", ".join(f"{t} {h:.4f}" for t, h in sorted(s.gpu_hours.items())) or "0",
             f"{s.usd:.4f}"] for s in [*groups, total]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def cost_records(platform: PlatformConfig, since: datetime) -> list[CostRecord]:
    """Every run of every experiment that started at or after ``since`` and logged a cost."""
    from mlplatform import _mlflow

    client = _mlflow.client(platform)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    query = (f"metrics.`cost.usd_estimate` >= 0 and "
             f"attributes.start_time >= {int(since.timestamp() * 1000)}")
    return [CostRecord.from_run(r) for r in client.search_runs(ids, query, max_results=50_000)]
