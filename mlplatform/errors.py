"""The project's own exception types, and the one formatter of pydantic validation errors.

Every message names the offending field, file or version and says how to fix it.
"""

from __future__ import annotations

import types
import typing
from typing import Any


class MLPlatformError(Exception):
    """Base class of every error mlplatform raises on purpose."""


class ConfigError(MLPlatformError, ValueError):
    """A configuration file, argument or ``MLP_*`` variable is invalid."""


class DataValidationError(MLPlatformError, ValueError):
    """A dataset does not meet what the step that reads it requires."""


class ModelNotFound(MLPlatformError, LookupError):
    """A model name, version or alias does not exist in the registry."""


class ModelRefused(ModelNotFound):
    """A model the platform does not load: a pickle, or a format it does not know. The message
    says how to convert it (e.g. to ONNX)."""


class TrainingError(MLPlatformError, RuntimeError):
    """Distributed training failed or produced no model."""


class RegistryError(MLPlatformError, RuntimeError):
    """A registry action cannot be done as asked (e.g. a rollback with no previous holder)."""


class PromotionRefused(RegistryError):
    """A promotion failed at least one gate; nothing changed. ``decision`` has every gate."""

    def __init__(self, message: str, decision=None):
        super().__init__(message)
        self.decision = decision


class ProjectError(ConfigError):
    """A project file (``mlplatform.yaml``) or the code it names is invalid."""


def validation_lines(exc: Any, model: type | None = None, prefix: str = "") -> list[str]:
    """One line per problem of a pydantic ``ValidationError``, each naming its key.

    Unknown keys list the keys allowed at that place (when ``model``, the pydantic model that
    was validated, is given); missing keys and bad values say so with the value received.

    Args:
        exc: The ``pydantic.ValidationError``.
        model: The model class that raised it (to list allowed keys).
        prefix: Prepended to every key (``"models.xgboost."``).
    """
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = prefix + (".".join(str(p) for p in loc) or "<root>")
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) if model is not None else []
            lines.append(f"unknown key '{key}'" + (f"; allowed there: {', '.join(allowed)}"
                                                    if allowed else ""))
        elif err["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            got = repr(err.get("input"))
            lines.append(f"invalid value for '{key}': {msg}; got {got[:120]}")
    return lines


def config_error(where: str, exc: Any, model: type | None = None, prefix: str = "",
                 cls: type[ConfigError] = ConfigError) -> ConfigError:
    """A :class:`ConfigError` (or ``cls``) listing every problem of ``exc`` under a header
    naming ``where`` (e.g. ``"project file examples/my_project/mlplatform.yaml"``)."""
    lines = validation_lines(exc, model, prefix)
    return cls(f"invalid {where}:\n  - " + "\n  - ".join(lines))


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """The field names of the pydantic model found at ``loc`` inside ``model`` (lists and
    mappings are stepped through: their index or key is skipped)."""
    current, parts = model, list(loc)
    while parts:
        fields = getattr(current, "model_fields", None)
        part = parts.pop(0)
        if fields is None or part not in fields:
            return []
        current = _model_in(fields[part].annotation, parts)
    return list(getattr(current, "model_fields", {}))


def _model_in(tp: Any, parts: list) -> Any:
    """The pydantic model inside an annotation (``X | None``, ``list[X]``, ``dict[str, X]``,
    ``Annotated[X, ...]``), popping the list index or mapping key from ``parts``."""
    while not hasattr(tp, "model_fields"):
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if origin is typing.Annotated:
            tp = args[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in args if hasattr(a, "model_fields")]
            if not models:
                return None
            tp = models[0]
        elif origin is not None and args:
            if parts:
                parts.pop(0)
            tp = args[-1]
        else:
            return None
    return tp
