"""The pydantic model of one scoring request, generated from a project's ``request`` section.

Strict types: a JSON string is not a number, ``true`` is not ``1``, NaN and Infinity are
refused, unknown fields are refused, and a value outside an ``enum`` or a ``min``/``max`` is an
error naming the field. Serving answers such requests 422; batch scoring quarantines such rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model

from mlplatform.project.schema import RequestField, RequestSpec


def _json_number(value: Any) -> Any:
    # Lax mode would coerce "1.5" and true into numbers; a client sending those has a bug.
    if isinstance(value, (str, bool)):
        raise ValueError(f"expected a JSON number, got {type(value).__name__}")
    return value


_Number = BeforeValidator(_json_number)


def request_model(spec: RequestSpec, name: str = "Request") -> type[BaseModel]:
    """The pydantic model of one request: a field per ``spec.fields``, validated strictly."""
    fields = {field: _annotation(f) for field, f in spec.fields.items()}
    return create_model(name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
                        **fields)


def _annotation(f: RequestField) -> tuple[Any, Any]:
    bounds = {k: v for k, v in (("ge", f.min), ("le", f.max)) if v is not None}
    if f.enum is not None:
        tp: Any = Literal[tuple(f.enum)]  # type: ignore[valid-type]
        if f.type == "float":
            tp = Annotated[tp, _Number]
    elif f.type == "string":
        tp = Annotated[str, Strict(), Field(min_length=1, max_length=f.max_length)]
    elif f.type == "int":
        tp = Annotated[int, Strict(), Field(**bounds)]
    elif f.type == "float":
        tp = Annotated[float, _Number, Field(**bounds)]
    elif f.type == "bool":
        tp = Annotated[bool, Strict()]
    else:
        tp = datetime
    description = f.description or None
    if f.required:
        return tp, Field(..., description=description)
    return tp | None, Field(default=None, description=description)
