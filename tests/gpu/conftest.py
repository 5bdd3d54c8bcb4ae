"""GPU tier: every test here is skipped unless a CUDA GPU is visible (cf. accelerate's require_cuda)."""

import shutil
import subprocess

import pytest


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (nvidia-smi found none)")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)
