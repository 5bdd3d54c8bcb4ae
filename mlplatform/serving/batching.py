"""Adaptive ``@serve.batch``: a call alone is served at once, concurrent calls together.

Both per-request steps of the fraud app that have a fixed cost per call use it: the feature
lookup in the Ingress (one online-store read and one model-inputs transform for every request
that arrived together) and the model (one XGBoost or torch call per batch, in a ModelServer or
embedded in the Ingress). Under load this is what keeps a replica's CPU per request low; a lone
request never waits for a batch window.
"""

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ray import serve

In = TypeVar("In")
Out = TypeVar("Out")


class _Failed:
    """One item's exception, carried through ``@serve.batch`` (which would fail every caller
    of the batch with it) and raised to that item's caller only."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class AdaptiveBatch(Generic[In, Out]):
    """Call ``many([x, ...])`` once for concurrent calls, ``one(x)`` for a call alone.

    A call first yields one turn of the event loop, so that requests that arrived together all
    count themselves; the one that then finds no other in flight calls ``one`` directly, the
    others go through ``@serve.batch`` (``max_batch_size`` calls, waiting at most
    ``batch_wait_timeout_s`` for more; 0: only the calls already queued). ``many`` must return
    one result per item, in order.

    If ``many`` raises, every item is retried alone with ``one``: one bad item fails its own
    caller and nobody else's.

    Each instance keeps its own queue (``@serve.batch`` on a method would keep one per class,
    so two models in one process would share batches).
    """

    def __init__(self, one: Callable[[In], Out | Awaitable[Out]],
                 many: Callable[[Sequence[In]], Sequence[Out] | Awaitable[Sequence[Out]]],
                 max_batch_size: int, batch_wait_timeout_s: float,
                 max_concurrent_batches: int = 1):
        self._one, self._many = one, many

        async def run(items: list[In]) -> list[Out | _Failed]:
            return await self._run(items)

        # @serve.batch reads its function's signature on every call (inspect.signature: ~5-10
        # us for a bound method, twice per request in the Ingress); a plain function carrying
        # its signature answers that at once.
        run.__signature__ = inspect.signature(run)
        self._batched = serve.batch(max_batch_size=max_batch_size,
                                    batch_wait_timeout_s=batch_wait_timeout_s,
                                    max_concurrent_batches=max_concurrent_batches)(run)
        self.in_flight = 0

    async def __call__(self, item: In) -> Out:
        self.in_flight += 1
        try:
            await asyncio.sleep(0)   # let the requests that arrived with this one count in
            if self.in_flight == 1:
                return await _result(self._one(item))
            out = await self._batched(item)
        finally:
            self.in_flight -= 1
        if isinstance(out, _Failed):
            raise out.exc
        return out

    async def _run(self, items: list[In]) -> list[Out | _Failed]:
        try:
            out = list(await _result(self._many(items)))
        except Exception:
            if len(items) == 1:
                raise
            return list(await asyncio.gather(*(self._alone(x) for x in items)))
        if len(out) != len(items):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(items)} "
                               "items")
        return out

    async def _alone(self, item: In) -> Out | _Failed:
        try:
            return await _result(self._one(item))
        except Exception as exc:
            return _Failed(exc)


async def _result(value: Any) -> Any:
    """``value``, awaited if it is awaitable (``one``/``many`` may be sync or async)."""
    return await value if inspect.isawaitable(value) else value


def split_rows(rows: Any, sizes: Sequence[int]) -> list[Any]:
    """``rows`` (an array or list) cut into consecutive pieces of ``sizes``."""
    out, start = [], 0
    for n in sizes:
        out.append(rows[start:start + n])
        start += n
    return out
