"""Declarative feature definitions (Feast-style): sources, entities and feature views.

They are part of a project file (``mlplatform.yaml``: its ``sources``, ``entities`` and
``feature_views`` keys) and are read by the feature store (:mod:`mlplatform.features`). A feature
is defined once and computed by the same code offline (the Ray Data build) and online
(materialized latest values), so training and serving never disagree on its meaning.

Example (the ``examples/`` projects hold full ones)::

    sources: [{name: orders, path: raw/orders, timestamp_field: event_timestamp}]
    entities: [{name: customer, join_keys: [customer_id]}]
    feature_views:
      - name: customer_activity
        entities: [customer]
        source: orders
        ttl: 7d
        transformation: window_aggregates
        features:
          - {name: customer_orders_24h, agg: count, window: 24h}
          - {name: customer_spend_mean_7d, agg: mean, column: total, window: 7d}
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlplatform.errors import ConfigError, config_error

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: Aggregations the built-in ``window_aggregates`` transformation knows, and what they need.
AGGREGATIONS: dict[str, str] = {
    "count": "rows of the entity in the window (t - window, t]",
    "sum": "sum of `column` over the window",
    "mean": "mean of `column` over the window",
    "std": "sample standard deviation (ddof=1) of `column` over the window; null below 2 rows",
    "nunique": "distinct values of `column` over the window",
    "time_since_prev": "seconds since the entity's previous event (null for its first)",
    "event_time": "the event time itself, as epoch seconds (lets serving compute recency)",
    "label_rate": "mean of the 0/1 label `column` over rows in (t - window, t - label_delay), "
                  "i.e. only labels known before the event time",
}
_NEEDS_COLUMN = {"sum", "mean", "std", "nunique", "label_rate"}
_NEEDS_WINDOW = {"count", "sum", "mean", "std", "nunique", "label_rate"}


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``, ``"2w"``, ISO 8601 ``"P7D"`` or seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    m = _DURATION.match(str(value))
    if not m and str(value).startswith(("P", "-P")):   # ISO 8601, as model_dump(mode="json") writes
        from pydantic import TypeAdapter

        return TypeAdapter(timedelta).validate_python(value)
    if not m:
        raise ValueError(f"bad duration {value!r}: use a number and a unit s/m/h/d/w, e.g. '24h'")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Strict):
    """Something features describe, identified by one or more join keys (e.g. customer_id)."""

    name: str = Field(min_length=1, description="Entity name, referenced by feature views.")
    join_keys: list[str] = Field(min_length=1, description="Columns that identify the entity.")
    description: str = ""


class Source(_Strict):
    """Raw events a feature view is computed from (Parquet)."""

    name: str = Field(min_length=1)
    path: str = Field(description="Parquet folder/file; relative paths are under storage_root.")
    timestamp_field: str = Field(default="event_timestamp", description="Event time column.")
    contract: str | None = Field(
        default=None, description="Data contract YAML the source must pass before a build "
        "(relative paths: from the project folder).")


class Feature(_Strict):
    """One feature of a view: its name and how the transformation computes it."""

    name: str = Field(min_length=1, description="Column name (unique across the repo).")
    agg: str = Field(description=f"Aggregation: one of {', '.join(AGGREGATIONS)}.")
    column: str | None = Field(default=None, description="Input column the aggregation reads.")
    window: timedelta | None = Field(default=None, description="Look-back window, e.g. 24h.")
    label_delay: timedelta = Field(
        default=timedelta(0), description="label_rate only: how long after an event its label "
        "becomes known (a label counts only once known strictly before the event time).")
    description: str = ""

    @field_validator("window", "label_delay", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"unknown agg {self.agg!r}; choose one of {sorted(AGGREGATIONS)}")
        if self.agg in _NEEDS_COLUMN and not self.column:
            raise ValueError(f"agg {self.agg!r} needs `column`")
        if self.agg in _NEEDS_WINDOW and (self.window is None or self.window <= timedelta(0)):
            raise ValueError(f"agg {self.agg!r} needs a positive `window`, e.g. '24h'")
        if self.agg not in _NEEDS_WINDOW and self.window is not None:
            raise ValueError(f"agg {self.agg!r} takes no `window`")
        return self

    @property
    def dtype(self) -> Literal["int64", "float64"]:
        """Arrow/pandas type of the values (nulls possible in float features only)."""
        return "int64" if self.agg in ("count", "nunique") else "float64"


class FeatureView(_Strict):
    """Features of one entity (or entity combination), computed from a source, valid for ``ttl``."""

    name: str = Field(min_length=1, description="View name (unique in the repo).")
    entities: list[str] = Field(min_length=1, description="Entity names; their join keys key "
                                "the view.")
    source: str = Field(description="Source name.")
    timestamp_field: str = Field(default="event_timestamp",
                                 description="Time column of the view's rows.")
    ttl: timedelta | None = Field(
        default=None, description="How long a feature row stays valid: a lookup at time t sees "
        "a row with timestamp in (t - ttl, t]. None: forever.")
    transformation: str = Field(
        default="window_aggregates", description="'window_aggregates' (built in) or "
        "'package.module:function' with the signature of aggregates.window_aggregates.")
    features: list[Feature] = Field(min_length=1)
    description: str = ""

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _check(self) -> FeatureView:
        if self.transformation != "window_aggregates" and ":" not in self.transformation:
            raise ValueError(f"unknown transformation {self.transformation!r}: use the built-in "
                             "'window_aggregates' or 'package.module:function' (same signature)")
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature name(s) {dup}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def lookback(self) -> timedelta:
        """How much history before a row its features read (largest window)."""
        return max((f.window for f in self.features if f.window), default=timedelta(0))


class FeatureRepo(_Strict):
    """All definitions of a project: sources, entities and feature views."""

    project: str = Field(default="default", min_length=1)
    sources: list[Source] = Field(min_length=1)
    entities: list[Entity] = Field(min_length=1)
    feature_views: list[FeatureView] = Field(min_length=1)
    base_dir: Path | None = Field(default=None, description="Folder of the YAML (set by load).")

    @model_validator(mode="after")
    def _check(self) -> FeatureRepo:
        ents, srcs = {e.name for e in self.entities}, {s.name for s in self.sources}
        seen: dict[str, str] = {}
        for v in self.feature_views:
            missing = [e for e in v.entities if e not in ents]
            if missing:
                raise ValueError(f"feature view {v.name!r} names unknown entit(ies) {missing}; "
                                 f"declared: {sorted(ents)}")
            if v.source not in srcs:
                raise ValueError(f"feature view {v.name!r} names unknown source {v.source!r}; "
                                 f"declared: {sorted(srcs)}")
            for f in v.features:
                if f.name in seen:
                    raise ValueError(f"feature {f.name!r} is defined in views {seen[f.name]!r} and "
                                     f"{v.name!r}; feature names must be unique in a repo")
                seen[f.name] = v.name
        names = [v.name for v in self.feature_views]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature view names in {names}")
        return self

    def view(self, name: str) -> FeatureView:
        for v in self.feature_views:
            if v.name == name:
                return v
        raise KeyError(f"no feature view {name!r}; defined: {[v.name for v in self.feature_views]}")

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    def join_keys(self, view: FeatureView | str) -> list[str]:
        """The view's key columns, in entity order."""
        v = self.view(view) if isinstance(view, str) else view
        by_name = {e.name: e for e in self.entities}
        return [k for e in v.entities for k in by_name[e].join_keys]

    def resolve(self, refs: list[str] | None) -> dict[str, list[str]]:
        """Feature references -> {view: [feature, ...]} in first-seen order.

        A reference is ``"view:feature"``, ``"view"`` (all of its features) or a bare feature
        name (names are unique in a repo). None means every feature of every view.
        """
        if refs is None:
            return {v.name: v.feature_names for v in self.feature_views}
        owner = {f: v.name for v in self.feature_views for f in v.feature_names}
        views = {v.name for v in self.feature_views}
        out: dict[str, list[str]] = {}
        for ref in refs:
            if ":" in ref:
                vname, fname = ref.split(":", 1)
                if fname not in self.view(vname).feature_names:
                    raise KeyError(f"feature view {vname!r} has no feature {fname!r}; it has "
                                   f"{self.view(vname).feature_names}")
                pairs = [(vname, fname)]
            elif ref in views:
                pairs = [(ref, f) for f in self.view(ref).feature_names]
            elif ref in owner:
                pairs = [(owner[ref], ref)]
            else:
                raise KeyError(f"unknown feature reference {ref!r}: use 'view:feature', a view "
                               f"name ({sorted(views)}) or a feature name")
            for vname, fname in pairs:
                if fname not in out.setdefault(vname, []):
                    out[vname].append(fname)
        return out

    def definition_hash(self, view: str) -> str:
        """sha256 of the view's definition (with its source and entities): changes iff it does."""
        v = self.view(view)
        body = {"view": v.model_dump(mode="json"),
                "entities": [e.model_dump(mode="json") for e in self.entities if e.name in v.entities],
                "source": self.source(v.source).model_dump(mode="json", exclude={"contract"})}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def load_repo(source: str | Path | Mapping[str, Any] | FeatureRepo) -> FeatureRepo:
    """Feature definitions from a YAML file (a project file or one holding only ``sources``,
    ``entities`` and ``feature_views``), a mapping, or a :class:`FeatureRepo`.

    Raises:
        ConfigError: The file is missing, or a definition is invalid (the message names it).
    """
    if isinstance(source, FeatureRepo):
        return source
    where = "feature definitions"
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"feature definitions file {path} does not exist; pass the path of "
                              "a project file (mlplatform.yaml) or of a definitions YAML")
        where = f"feature definitions {path}"
        data = yaml.safe_load(path.read_text()) or {}
        data = {k: v for k, v in data.items() if k in FeatureRepo.model_fields}
        data.setdefault("base_dir", path.resolve().parent)
    try:
        return FeatureRepo(**data)
    except ValidationError as exc:
        raise config_error(where, exc, FeatureRepo) from None
