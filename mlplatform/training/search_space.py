"""Sweep search spaces written as plain YAML/dicts, checked and turned into Ray Tune domains.

A search space maps a dotted :class:`~mlplatform.training.TrainConfig` key to one sampler::

    params.max_depth: {randint: [3, 9]}        # XGBoost booster parameter, 3..8
    params.eta: {loguniform: [0.01, 0.3]}
    torch.hidden_sizes: {choice: [[64], [128, 64]]}
    num_boost_round: {choice: [100, 200]}
    params.tree_method: hist                   # a plain scalar: fixed for every trial

Samplers (arguments as a list; ``randint``/``lograndint`` exclude the upper bound, the ``q``
forms include it, as in Ray Tune): ``uniform [lo, hi]``, ``quniform [lo, hi, q]``,
``loguniform [lo, hi]``, ``qloguniform [lo, hi, q]``, ``randint [lo, hi]``,
``qrandint [lo, hi, q]``, ``lograndint [lo, hi]``, ``qlograndint [lo, hi, q]``,
``randn [mean, sd]``, ``qrandn [mean, sd, q]``, ``choice [v, ...]``, ``grid_search [v, ...]``.

Every value a trial can get at the edges of its range (and every choice) is applied to the
config and validated before any trial starts, so a bad bound fails at once, naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from mlplatform.errors import ConfigError, validation_lines
from mlplatform.training.config import TorchParams, TrainConfig

#: Sampler name -> number of numeric arguments (None: a non-empty list of values).
SAMPLERS: dict[str, int | None] = {
    "uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3,
    "randint": 2, "qrandint": 3, "lograndint": 2, "qlograndint": 3,
    "randn": 2, "qrandn": 3, "choice": None, "grid_search": None,
}
#: Top-level TrainConfig fields a sweep may vary (the data and its split stay fixed: the data
#: is read once for all trials).
TUNABLE_FIELDS = ("num_boost_round", "early_stopping_rounds")
_INTEGER = {"randint", "qrandint", "lograndint", "qlograndint"}
_LOG = {"loguniform", "qloguniform", "lograndint", "qlograndint"}


def to_tune_space(search_space: Mapping[str, Any], config: TrainConfig,
                  check: Callable[[TrainConfig], None] | None = None) -> dict[str, Any]:
    """Translate a plain search space into a Ray Tune ``param_space`` (same dotted keys).

    Args:
        search_space: Dotted config key -> ``{sampler: [args]}`` or a fixed scalar.
        config: The base config every trial starts from.
        check: Extra check of a config at a range edge (e.g. a 1-round XGBoost fit); raises
            ``ValueError`` to reject it.

    Returns:
        Key -> Ray Tune domain (or the fixed value).

    Raises:
        ConfigError: An unknown key or sampler, bad arguments, or a range edge the config (or
            ``check``) rejects. The message names the key.
    """
    from ray import tune

    if not isinstance(search_space, Mapping) or not search_space:
        raise ConfigError("the search space must be a non-empty mapping of config keys to "
                          "samplers, e.g. {'params.max_depth': {'randint': [3, 9]}}.")
    space: dict[str, Any] = {}
    for key, spec in search_space.items():
        _check_key(key, config)
        sampler, args = _parse(key, spec)
        for value in _probe_values(sampler, args):
            _check_value(key, value, config, check)
        if sampler is None:
            space[key] = args
        elif sampler in ("choice", "grid_search"):
            space[key] = getattr(tune, sampler)(args)
        else:
            space[key] = getattr(tune, sampler)(*args)
    return space


def largest_value(search_space: Mapping[str, Any], key: str, default: Any) -> Any:
    """The largest value ``key`` can take in a (valid) search space, ``default`` if not in it."""
    if key not in search_space:
        return default
    return max(edge_values(*_parse(key, search_space[key])))


def edge_values(sampler: str | None, args: Any) -> list[Any]:
    """The values at the edges of a sampler's range (every value of a list sampler)."""
    if sampler is None:
        return [args]
    if sampler in ("choice", "grid_search"):
        return list(args)
    if sampler in ("randn", "qrandn"):
        return [args[0]]  # unbounded: the mean is the one value sure to be drawn near
    lo, hi = args[0], args[1]
    if sampler in ("randint", "lograndint"):
        return [lo, hi - 1]
    return [lo, hi]


def _probe_values(sampler: str | None, args: Any) -> list[Any]:
    """Edge values, plus a fractional one for continuous samplers: a float range on an integer
    setting (``num_boost_round: {uniform: [50, 200]}``) must fail here, not in every trial."""
    values = edge_values(sampler, args)
    inner = (3 - math.sqrt(5)) / 2  # irrational: the probe is never a whole number
    if sampler == "uniform":
        values.append(args[0] + (args[1] - args[0]) * inner)
    elif sampler == "loguniform":
        values.append(args[0] * (args[1] / args[0]) ** inner)
    elif sampler == "randn":
        values.append(args[0] + args[1] * inner)
    return values


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """``config`` with dotted keys replaced (``params.eta``, ``torch.dropout``, ``num_boost_round``),
    validated again."""
    data = config.model_dump()
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            data[head] = {**data[head], rest: to_python(value)}
        else:
            data[head] = to_python(value)
    return TrainConfig.model_validate(data)


def _check_key(key: str, config: TrainConfig) -> None:
    head, _, rest = str(key).partition(".")
    allowed = ("params.<XGBoost parameter> (model: xgboost), torch.<"
               f"{'|'.join(TorchParams.model_fields)}> (model: torch), "
               f"{', '.join(TUNABLE_FIELDS)}")
    ok = ((head == "params" and rest and "." not in rest and config.model == "xgboost")
          or (head == "torch" and rest in TorchParams.model_fields and config.model == "torch")
          or (not rest and head in TUNABLE_FIELDS))
    if not ok:
        raise ConfigError(f"search space key '{key}' cannot be tuned for model "
                          f"'{config.model}'. Tunable keys: {allowed}.")


def _parse(key: str, spec: Any) -> tuple[str | None, Any]:
    if isinstance(spec, (str, int, float, bool)) or spec is None:
        return None, spec  # a fixed value
    if isinstance(spec, (list, tuple)):
        raise ConfigError(f"search space key '{key}': got a bare list {list(spec)!r}; write "
                          f"{{choice: {list(spec)!r}}} to sample one of them (or grid_search).")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"search space key '{key}': expected one sampler like "
                          f"{{randint: [3, 9]}} or a fixed scalar, got {spec!r}. "
                          f"Samplers: {', '.join(SAMPLERS)}.")
    (sampler, args), = spec.items()
    if sampler not in SAMPLERS:
        raise ConfigError(f"search space key '{key}': unknown sampler '{sampler}'. "
                          f"Samplers: {', '.join(SAMPLERS)}.")
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"search space key '{key}': {sampler} needs a non-empty list of "
                          f"arguments, got {args!r}.")
    args = list(args)
    arity = SAMPLERS[sampler]
    if arity is None:
        return sampler, args
    usage = f"{sampler} takes [{', '.join(_arg_names(sampler))}]"
    if len(args) != arity or not all(_is_number(a) for a in args):
        raise ConfigError(f"search space key '{key}': {usage}, got {args!r}.")
    if sampler in _INTEGER and not all(float(a).is_integer() for a in args):
        raise ConfigError(f"search space key '{key}': {usage} as integers, got {args!r}.")
    if sampler in ("randn", "qrandn"):
        if args[1] <= 0:
            raise ConfigError(f"search space key '{key}': {usage} with sd > 0, got {args!r}.")
    elif not args[0] < args[1]:
        raise ConfigError(f"search space key '{key}': {usage} with lower < upper, got {args!r}.")
    if sampler in _LOG and args[0] <= 0:
        raise ConfigError(f"search space key '{key}': {usage} with lower > 0 (log scale), "
                          f"got {args!r}.")
    if arity == 3 and args[2] <= 0:
        raise ConfigError(f"search space key '{key}': {usage} with q > 0, got {args!r}.")
    if sampler in _INTEGER:
        args = [int(a) for a in args]
    return sampler, args


def _check_value(key: str, value: Any, config: TrainConfig,
                 check: Callable[[TrainConfig], None] | None) -> None:
    try:
        trial_config = apply_overrides(config, {key: value})
    except ValidationError as exc:
        why = "; ".join(validation_lines(exc, TrainConfig))
        raise ConfigError(f"search space key '{key}': value {value!r} is invalid: {why}.") from None
    if check is not None:
        try:
            check(trial_config)
        except ValueError as exc:
            raise ConfigError(f"search space key '{key}': value {value!r} is rejected: "
                              f"{exc}") from None


def _arg_names(sampler: str) -> list[str]:
    names = ["mean", "sd"] if sampler in ("randn", "qrandn") else ["lower", "upper"]
    return [*names, "q"] if SAMPLERS[sampler] == 3 else names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_python(value: Any) -> Any:
    """numpy scalars (what Tune's samplers return) -> Python scalars, for pydantic and MLflow."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, dict)) else value
