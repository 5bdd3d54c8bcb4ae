"""Adaptive ``@serve.batch``: a call alone is served at once, concurrent calls together.

Both per-request steps of the composed app that have a fixed cost per call use it: the feature
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

    ``coalesce=True`` (with ``batch_wait_timeout_s=0``; the Ingress's feature lookup) batches
    with a plain coalescer (:class:`_Coalescer`) instead of ``@serve.batch``: a synchronous
    ``one``/``many`` that never waits needs none of its window logic, and its per-call machinery
    (signature checks, batch metrics, tasks) cost ~6% of the Ingress's CPU under load. The
    Ingress's ModelServer calls keep ``@serve.batch``: there, starting calls as eagerly as the
    coalescer does made smaller batches, and the ModelServer's CPU per request rose from ~140
    to ~220-350 us (2 cores, HAProxy + throughput mode, c=32).
    """

    def __init__(self, one: Callable[[In], Out | Awaitable[Out]],
                 many: Callable[[Sequence[In]], Sequence[Out] | Awaitable[Sequence[Out]]],
                 max_batch_size: int, batch_wait_timeout_s: float,
                 max_concurrent_batches: int = 1, coalesce: bool = False):
        if coalesce and batch_wait_timeout_s != 0:
            raise ValueError("coalesce=True batches without waiting: batch_wait_timeout_s "
                             f"must be 0, not {batch_wait_timeout_s}")
        self._one, self._many = one, many
        self.in_flight = 0
        self._coalescer, self._batched = None, None
        if coalesce:
            self._coalescer = _Coalescer(self._run, max_batch_size, max_concurrent_batches)
            return

        async def run(items: list[In]) -> list[Out | _Failed]:
            return await self._run(items)

        # @serve.batch reads its function's signature on every call (inspect.signature: ~5-10
        # us for a bound method, twice per request in the Ingress); a plain function carrying
        # its signature answers that at once.
        run.__signature__ = inspect.signature(run)
        self._batched = serve.batch(
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches)(run)

    async def __call__(self, item: In) -> Out:
        self.in_flight += 1
        try:
            if self._coalescer is not None:
                out = await self._coalescer(item)
            else:
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
        if len(items) == 1 and self._coalescer is not None:
            return [await self._alone(items[0])]
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


class _Coalescer:
    """Zero-wait batching: a call is made as soon as a slot is free (at most
    ``max_concurrent`` in flight) with every item queued by then, up to ``max_batch_size``.

    An item that arrives while no call is in flight starts one on the next turn of the event
    loop, so the items that arrived with it go in the same call; items that arrive during a
    call wait for the next free slot. ``run(items)`` returns one result (or :class:`_Failed`)
    per item, in order.
    """

    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], max_batch_size: int,
                 max_concurrent: int):
        self._run, self._max_batch_size, self._max_concurrent = run, max_batch_size, max_concurrent
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._running = 0
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if self._running < self._max_concurrent:
            self._running += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)            # a reference until it is done (asyncio keeps none)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:self._max_batch_size]
                del self._queue[:self._max_batch_size]
                batch = [(x, f) for x, f in batch if not f.done()]   # drop cancelled callers
                if not batch:
                    continue
                try:
                    out = await self._run([x for x, _ in batch])
                except Exception as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                except BaseException:           # cancelled (the replica shuts down)
                    for _, f in batch:
                        f.cancel()
                    raise
                for (_, f), result in zip(batch, out, strict=True):
                    if not f.done():
                        f.set_result(result)
        finally:
            self._running -= 1


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
