"""What the service answers for one request row, by the project's task.

- binary: ``score`` (the positive class's probability) and ``decision`` (the project's word for
  the positive class when the score reaches the version's threshold, else for the negative);
- multiclass: ``class`` (the most likely) and ``probabilities`` (``{class: p}``, summing to 1),
  and ``score`` (the chosen class's probability);
- regression: ``value``.

Every answer also names its ``arm``, ``model_name`` and ``model_version``, the request's id
field (when the project declares ``request.id``) and ``unknown_entities``: the entities whose
features the online store did not know (their features were missing at scoring time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: A regression shadow disagrees when its value is this far from the served one (relative).
REGRESSION_DISAGREEMENT = 0.05


class Answers:
    """Builds answers for a project's requests.

    Args:
        id_field: The request field echoed back (``request.id``), or None.
        labels: Binary: the decision words for [negative, positive].
    """

    def __init__(self, id_field: str | None = None,
                 labels: Sequence[str] = ("negative", "positive")):
        self.id_field = id_field
        self.labels = list(labels)

    @classmethod
    def for_project(cls, project) -> Answers:
        return cls(project.request.id, project.task.decision_labels)

    def prediction(self, value: Any, out: Mapping[str, Any]) -> dict[str, Any]:
        """The task's fields for one row's model output ``value`` (``out``: the model call's
        answer: task, threshold, classes)."""
        task = out.get("task") or "binary"
        if task == "multiclass":
            classes = out.get("classes") or list(range(len(value)))
            best = max(range(len(value)), key=value.__getitem__)
            return {"class": classes[best], "score": value[best],
                    "probabilities": {str(c): p for c, p in zip(classes, value, strict=True)}}
        if task == "regression":
            return {"value": value}
        return {"score": value, "decision": self.labels[1 if value >= out["threshold"] else 0]}

    def row(self, record: Mapping[str, Any], value: Any, out: Mapping[str, Any], arm: str,
            unknown: list[str]) -> dict[str, Any]:
        """One request row's whole answer."""
        head = {self.id_field: record.get(self.id_field)} if self.id_field else {}
        return {**head, **self.prediction(value, out), "arm": arm,
                "model_name": out["model_name"], "model_version": out["model_version"],
                "unknown_entities": unknown}


def disagrees(served: Mapping[str, Any], value: Any, out: Mapping[str, Any],
              answers: Answers) -> bool:
    """Whether a shadow model's ``value`` disagrees with the served answer: another decision
    (binary), another class (multiclass), or a value more than
    :data:`REGRESSION_DISAGREEMENT` away, relative (regression)."""
    shadow = answers.prediction(value, out)
    task = out.get("task") or "binary"
    if task == "multiclass":
        return str(shadow["class"]) != str(served.get("class"))
    if task == "regression":
        ref = served.get("value") or 0.0
        return abs(value - ref) > REGRESSION_DISAGREEMENT * max(abs(ref), 1e-12)
    return shadow["decision"] != served.get("decision")


def score_of(value: Any, task: str | None) -> float | None:
    """The number the per-arm score histogram records: the score, the top class's probability,
    or nothing for a regression value (its scale is the project's)."""
    if task == "multiclass":
        return max(value)
    if task == "regression":
        return None
    return value
