"""Shared test helpers (no Ray here: unit tests must not pay for it)."""

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Ray reads RAY_AUTH_MODE once, when it is imported: clients of the token-auth test cluster must
# have it set before any test module imports ray (the Makefile exports it too).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Ray Train's controller checks on its workers every 2 s by default, so each run ends up to 2 s
# after its last worker returns; the suite trains dozens of times. Every cluster the tests start
# (and every Train controller, which Ray Train hands this variable) gets a 0.5 s interval. Users'
# clusters keep Ray's default: nothing in mlplatform sets it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402

from mlplatform._ports import free_port  # noqa: E402, F401  (re-exported for the tests)


@pytest.fixture
def replica_context(monkeypatch):
    """``@serve.batch`` outside a Serve replica (pure batching logic, no Serve running)."""
    from types import SimpleNamespace

    from ray.serve import batching

    # Outside a replica, @serve.batch's queue asks for the replica's max_ongoing_requests (to
    # warn when batches can never fill): answer it as a replica configured so would.
    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(batching.serve, "get_replica_context", lambda: replica)


@contextlib.contextmanager
def haproxy_serve_env(throughput_optimized: bool) -> Iterator[dict[str, str]]:
    """The Serve controller's env for HAProxy (+ the throughput mode) with this test's own
    files (a short /tmp directory: HAProxy's socket paths are limited) and free ports; the
    directory is removed afterwards."""
    from mlplatform.serving.haproxy import haproxy_env

    work = Path(tempfile.mkdtemp(prefix="mh", dir="/tmp"))
    try:
        yield haproxy_env(work, {"stats": free_port(), "metrics": free_port(),
                                 "fallback": free_port()},
                          throughput_optimized=throughput_optimized)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.5,
             ignore: tuple[type[BaseException], ...] = (Exception,)):
    """Poll ``condition`` until it returns a truthy value (returned) or ``timeout_s`` passes.

    Exceptions of the ``ignore`` types count as "not yet"; others propagate at once.
    """
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except ignore as exc:  # the condition may fail until the thing is up
            last_exc = exc
        time.sleep(interval_s)  # allowed: the poll interval of this wait-for-condition helper
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}; last error: {last_exc!r}")
