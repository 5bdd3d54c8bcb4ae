"""The example projects as the tests use them (no Ray here).

Tests of the platform run on the projects under ``examples/`` exactly as a user's project would
be run: these helpers only load them once per test session.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FRAUD, DELIVERY, WINE = EXAMPLES / "fraud", EXAMPLES / "delivery", EXAMPLES / "wine"


@functools.cache
def project(name: str = "fraud"):
    """An example project, loaded and checked."""
    from mlplatform.pipelines import load

    return load(EXAMPLES / name)


def inputs(name: str = "fraud"):
    """An example project's model-inputs transformation (:class:`ModelInputs`)."""
    from mlplatform.project import model_inputs

    return model_inputs(project(name))


def module(name: str, module_name: str):
    """A module of an example project's folder (imported as the platform imports it)."""
    from mlplatform.project.inputs import _project_package

    project(name)
    return importlib.import_module(f"{_project_package(EXAMPLES / name)}.{module_name}")


def fraud_columns() -> dict[str, list[str]]:
    """The fraud project's column lists: request fields, looked-up features, model inputs."""
    from mlplatform.project import feature_names

    p = project("fraud")
    return {"request": p.request_fields, "features": feature_names(p),
            "inputs": p.input_columns, "label": p.task.label}


FRAUD_LABEL = "is_fraud"
