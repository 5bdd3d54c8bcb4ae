"""Shared test helpers (no Ray here: unit tests must not pay for it)."""

import os
import time
from collections.abc import Callable

# Ray reads RAY_AUTH_MODE once, when it is imported: clients of the token-auth test cluster must
# have it set before any test module imports ray (the Makefile exports it too).
os.environ.setdefault("RAY_AUTH_MODE", "token")

from mlplatform._ports import free_port  # noqa: E402, F401  (re-exported for the tests)


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
