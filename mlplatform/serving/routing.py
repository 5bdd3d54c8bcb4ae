"""Traffic splitting for the Router deployment: the config it reads from its Serve
``user_config`` and the arm choice (weighted, sticky by key, shadow sampling).

Pure logic, no Ray: the Router deployment (issue #6) holds one :class:`Splitter` per config and
swaps it atomically when ``serve deploy`` sends a new ``user_config``; a config that fails
validation raises :class:`~mlplatform.errors.ConfigError` and the running Splitter stays.

Example:
    >>> cfg = RouterConfig.from_user_config({"arms": [
    ...     {"name": "champion", "model": "churn@champion", "weight": 90},
    ...     {"name": "challenger", "model": "churn@challenger", "weight": 10}],
    ...     "sticky_key": "customer_id"})
    >>> Splitter(cfg).choose("u-42") in ("champion", "challenger")
    True
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    ValidationError,
    confloat,
    model_validator,
)

from mlplatform.errors import ConfigError, validation_lines
from mlplatform.registry.registry import parse_model_ref


class ArmSpec(BaseModel):
    """One arm: a name (shown in responses and metrics), a registry reference, a weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$", description="Arm name.")
    model: str = Field(description="churn@champion, churn@challenger or churn/3.")
    weight: NonNegativeFloat = Field(description="Relative share of traffic (0: none).")

    @model_validator(mode="after")
    def _model_ref(self) -> ArmSpec:
        parse_model_ref(self.model)   # ValueError naming the reference and the forms
        return self


class ShadowSpec(BaseModel):
    """A model that gets copies of a sample of requests; its answers are discarded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(description="Registry reference of the shadow model.")
    sample: confloat(ge=0.0, le=1.0) = Field(description="Share of requests copied (0-1).")

    @model_validator(mode="after")
    def _model_ref(self) -> ShadowSpec:
        parse_model_ref(self.model)
        return self


class RouterConfig(BaseModel):
    """The Router's ``user_config`` in a Serve YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arms: list[ArmSpec] = Field(min_length=1, description="Arms and their weights.")
    sticky_key: str | None = Field(default=None, description="Request field whose value picks "
                                   "the arm by hash: same value, same arm while weights hold.")
    shadow: ShadowSpec | None = Field(default=None, description="Optional shadow model.")

    @model_validator(mode="after")
    def _arms(self) -> RouterConfig:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {dupes}")
        if not any(a.weight > 0 for a in self.arms):
            raise ValueError(f"at least one arm needs a positive weight; weights: "
                             f"{ {a.name: a.weight for a in self.arms} }")
        return self

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, Any] | None) -> RouterConfig:
        """Validate a ``user_config`` mapping.

        Raises:
            ConfigError: Naming every bad key and how to fix it; nothing else changes.
        """
        if not isinstance(user_config, Mapping):
            raise ConfigError(f"router user_config must be a mapping with 'arms', got "
                              f"{type(user_config).__name__}")
        try:
            return cls(**user_config)
        except (ValidationError, ValueError) as exc:
            details = ("; ".join(validation_lines(exc, cls)) if isinstance(exc, ValidationError)
                       else str(exc))
            raise ConfigError(f"invalid router user_config: {details}. Example: arms: "
                              "[{name: champion, model: churn@champion, weight: 90}, "
                              "{name: challenger, model: churn@challenger, weight: 10}]"
                              ) from None

    @property
    def weights(self) -> dict[str, float]:
        return {a.name: a.weight for a in self.arms}


def _unit(value: str, salt: str) -> float:
    """A stable number in [0, 1) for ``value`` (same on every replica and process)."""
    digest = hashlib.sha256(f"{salt}\x00{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


class Splitter:
    """Chooses an arm per request from a :class:`RouterConfig`.

    Without a sticky key the choice is random with the configured weights; with one it is a
    hash of the key's value, so the same value lands on the same arm for as long as the weights
    stay the same (and moves as little as a change of weights allows: arms keep their order).
    Zero-weight arms are never chosen.

    Args:
        config: The validated config.
        seed: Seed of the random choices (tests); None: from the OS.
    """

    def __init__(self, config: RouterConfig, seed: int | None = None):
        self.config = config
        live = [a for a in config.arms if a.weight > 0]
        total = sum(a.weight for a in live)
        self._names = [a.name for a in live]
        self._bounds, acc = [], 0.0
        for arm in live:
            acc += arm.weight / total
            self._bounds.append(acc)
        self._bounds[-1] = 1.0         # no gap at the top from float rounding
        self._rng = random.Random(seed)

    def choose(self, key: str | None = None) -> str:
        """The arm for one request (``key``: the sticky field's value, if configured)."""
        u = _unit(str(key), "arm") if key is not None else self._rng.random()
        return self._names[min(bisect_right(self._bounds, u), len(self._names) - 1)]

    def shadowed(self, request_id: str | None = None) -> bool:
        """Whether a copy of this request goes to the shadow model (by hash of the request id
        when given, so a retried request decides the same way)."""
        shadow = self.config.shadow
        if shadow is None or shadow.sample <= 0:
            return False
        u = _unit(request_id, "shadow") if request_id is not None else self._rng.random()
        return u < shadow.sample


class ArmUnavailable(Exception):
    """No arm can take the request (none ready, or the pinned one is not)."""


class UnknownArm(KeyError):
    """A request pinned an arm that the config does not have."""


class RouteTable:
    """What the data plane routes with: a config plus the models that answered a probe.

    The Router deployment (control plane) publishes one as plain data (:meth:`to_dict`); each
    Ingress replica rebuilds it (:meth:`from_dict`) and chooses arms with it locally, so the
    Router is not on the request path. An arm gets traffic only while its model is ready.

    Args:
        config: The validated routing config.
        ready: Model reference -> what its ModelServer answered (version, threshold, ...).
        errors: Model reference -> why it is not ready.
        version: Bumped by the Router on every change (config, readiness, loaded version).
        config_error: Why the last ``user_config`` was refused (the running one stays), if so.
        served: Every model reference the application serves.
    """

    def __init__(self, config: RouterConfig, ready: Mapping[str, dict[str, Any]] | None = None,
                 errors: Mapping[str, str] | None = None, version: int = 0,
                 config_error: str | None = None, served: list[str] | None = None,
                 seed: int | None = None):
        self.config, self.version, self.config_error = config, version, config_error
        self.ready, self.errors = dict(ready or {}), dict(errors or {})
        self.served = list(served or [])
        self._arms = {a.name: a for a in config.arms}
        live = [a for a in config.arms if a.model in self.ready and a.weight > 0]
        self.splitter = (Splitter(RouterConfig(arms=live, sticky_key=config.sticky_key,
                                               shadow=config.shadow), seed=seed)
                         if live else None)

    # ------------------------------------------------------------------ choosing ----------
    def arms_for(self, records: list[Mapping[str, Any]], pin: str | None = None) -> list[ArmSpec]:
        """The arm of each record: one choice per request, or per record by the sticky key.

        Raises:
            UnknownArm: ``pin`` names no arm of the config.
            ArmUnavailable: No arm is ready (or the pinned one is not).
        """
        if pin is not None:
            if pin not in self._arms:
                raise UnknownArm(pin)
            if self._arms[pin].model not in self.ready:
                raise ArmUnavailable(f"arm '{pin}' is not ready: "
                                     f"{self.errors.get(self._arms[pin].model, 'probing')}")
            return [self._arms[pin]] * len(records)
        if self.splitter is None:
            raise ArmUnavailable("no arm is ready to serve: " + ("; ".join(
                f"{k}: {v}" for k, v in self.errors.items()) or "models are loading"))
        key = self.config.sticky_key
        if key is None:
            return [self._arms[self.splitter.choose()]] * len(records)
        return [self._arms[self.splitter.choose(None if r.get(key) is None else str(r.get(key)))]
                for r in records]

    def shadow_model(self, request_id: str) -> str | None:
        """The shadow model that gets a copy of this request, if any (and it is ready)."""
        shadow = self.config.shadow
        if (self.splitter is None or shadow is None or shadow.model not in self.ready
                or not self.splitter.shadowed(request_id)):
            return None
        return shadow.model

    # ------------------------------------------------------------------ publishing --------
    def view(self) -> dict[str, Any]:
        """Arms with weights, models, loaded versions and readiness (``GET /models``)."""
        def state(ref: str) -> dict[str, Any]:
            info = self.ready.get(ref)
            if info is None:
                return {"ready": False, "error": self.errors.get(ref, "probing")}
            return {"ready": True, "model_name": info["model_name"],
                    "model_version": info["model_version"], "threshold": info["threshold"],
                    "kind": info["kind"]}

        cfg = self.config
        return {"arms": [{"name": a.name, "model": a.model, "weight": a.weight, **state(a.model)}
                         for a in cfg.arms],
                "sticky_key": cfg.sticky_key,
                "shadow": None if cfg.shadow is None else {
                    "model": cfg.shadow.model, "sample": cfg.shadow.sample,
                    **state(cfg.shadow.model)},
                "served_models": sorted(self.served),
                "config_error": self.config_error,
                "routing_version": self.version,
                "inputs": next(iter(self.ready.values()), {}).get("inputs")}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a Serve handle call (rebuilt with :meth:`from_dict`)."""
        return {"config": self.config.model_dump(mode="json"), "ready": self.ready,
                "errors": self.errors, "version": self.version,
                "config_error": self.config_error, "served": self.served}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouteTable:
        return cls(RouterConfig(**data["config"]), data["ready"], data["errors"],
                   data["version"], data["config_error"], data["served"])
