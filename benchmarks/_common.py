"""What every benchmark records next to its figures: the machine and the code measured."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path


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
    """The commit measured, and whether mlplatform/ had uncommitted changes (the code moves).
    Call it at start: the code this process imported."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "mlplatform_dirty": bool(git("status", "--porcelain", "--", "../mlplatform"))}
