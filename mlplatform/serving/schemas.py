"""Request validation: one instance of the project's request schema per row (pydantic, strict
types; the model comes from :func:`mlplatform.project.request_model`).

A request body is either one instance (a JSON object) or ``{"instances": [ {...}, ... ]}``.
Every problem is reported (not just the first), each naming its field, e.g.
``instances[3].amount``; such requests get a 4xx JSON answer, never a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class FieldError:
    """One problem with a request, named by its field path."""

    field: str
    message: str
    type: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "type": self.type}


class RequestRejected(Exception):
    """A request the service refuses; carries the HTTP status and the field errors."""

    def __init__(self, status: int, message: str, errors: list[FieldError] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or []

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, to return across a Serve handle call."""
        return {"status": self.status, "message": self.message,
                "errors": [e.to_dict() for e in self.errors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRejected:
        return cls(data["status"], data["message"], [FieldError(**e) for e in data["errors"]])

    def body(self, request_id: str) -> dict[str, Any]:
        return {"error": "invalid_request" if self.status == 422 else "request_rejected",
                "message": self.message, "errors": [e.to_dict() for e in self.errors],
                "request_id": request_id}


def parse_body(raw: bytes, max_items: int, max_body_bytes: int) -> tuple[list[Any], bool]:
    """Decode a request body into a list of raw instances.

    Returns:
        (instances, single): ``single`` is True when the body was one bare instance.

    Raises:
        RequestRejected: 413 for an oversized body, 422 for malformed JSON or a wrong shape.
    """
    if len(raw) > max_body_bytes:
        raise RequestRejected(413, f"request body is {len(raw)} bytes; the limit is "
                                   f"{max_body_bytes}. Send fewer instances per request.")
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRejected(422, "request body is not valid JSON",
                              [FieldError("body", str(exc), "json_invalid")]) from None
    if not isinstance(payload, dict):
        raise RequestRejected(422, "request body must be a JSON object", [FieldError(
            "body", f"expected an object of features or {{\"instances\": [...]}}, got "
                    f"{type(payload).__name__}", "type_error")])
    if "instances" not in payload:
        return [payload], True
    instances = payload["instances"]
    if set(payload) != {"instances"}:
        extra = sorted(set(payload) - {"instances"})
        raise RequestRejected(422, "unexpected top-level keys next to 'instances'",
                              [FieldError(k, "extra top-level key; put features inside instances",
                                          "extra_forbidden") for k in extra])
    if not isinstance(instances, list) or not instances:
        raise RequestRejected(422, "'instances' must be a non-empty list",
                              [FieldError("instances", "expected a non-empty list", "type_error")])
    if len(instances) > max_items:
        raise RequestRejected(422, f"too many instances: {len(instances)} > {max_items}",
                              [FieldError("instances", f"at most {max_items} items per request",
                                          "too_long")])
    return instances, False


def validate_instances(model: type[BaseModel], instances: list[Any],
                       single: bool) -> list[dict[str, Any]]:
    """Validate every instance; return them as plain dicts (fields of ``model``).

    Raises:
        RequestRejected: 422 listing every invalid field of every instance.
    """
    rows, errors = [], []
    for i, item in enumerate(instances):
        prefix = "" if single else f"instances[{i}]."
        if not isinstance(item, dict):
            errors.append(FieldError(prefix.rstrip(".") or "body", "expected an object", "type_error"))
            continue
        try:
            obj = model.model_validate(item)
        except ValidationError as exc:
            for e in exc.errors():
                loc = ".".join(str(p) for p in e["loc"])
                errors.append(FieldError(f"{prefix}{loc}", e["msg"], e["type"]))
            continue
        rows.append(obj.model_dump())
    if errors:
        names = sorted({e.field for e in errors})
        raise RequestRejected(422, f"invalid field(s): {', '.join(names[:10])}"
                                   + (" ..." if len(names) > 10 else ""), errors)
    return rows


def _reject_constant(name: str) -> float:
    # json.loads would turn NaN/Infinity into floats; the model must never see them.
    raise ValueError(f"{name} is not allowed in requests")

