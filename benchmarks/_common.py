"""What every benchmark records next to its figures (the machine and the code measured), and
the project every benchmark runs on: the fraud example (``examples/fraud``)."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from pathlib import Path

#: The fraud example project: its ``mlplatform.yaml`` (features, model inputs, request, models)
#: and its model-inputs code (``fraud_inputs.py``). Every benchmark measures the platform on it.
FRAUD = Path(__file__).resolve().parent.parent / "examples" / "fraud"
FRAUD_FILE = FRAUD / "mlplatform.yaml"


@functools.cache
def fraud_project():
    """The fraud example project, loaded and checked (:func:`mlplatform.pipelines.load`), once
    per process."""
    from mlplatform.pipelines import load

    return load(FRAUD)


def machine() -> dict:
    """Architecture, cores, RAM and the library versions that move the figures."""
    import pandas as pd
    import ray

    mem = Path("/proc/meminfo").read_text()
    total_kib = int(re.search(r"MemTotal:\s+(\d+)", mem).group(1))
    return {"machine": platform.machine(), "cores": os.cpu_count(),
            "ram_gib": round(total_kib / 2**20, 1), "python": platform.python_version(),
            "ray": ray.__version__, "pandas": pd.__version__}


def code_version() -> dict:
    """The commit measured, and whether the code measured had uncommitted changes (the code
    moves): ``mlplatform/``, and the fraud example's files (``examples/fraud/``: its model
    inputs and feature definitions moved there out of ``mlplatform/``). Call it at start: the
    code this process imported."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "mlplatform_dirty": bool(git("status", "--porcelain", "--", "../mlplatform",
                                        "../examples/fraud"))}
