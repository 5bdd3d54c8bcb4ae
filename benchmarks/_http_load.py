"""Closed-loop HTTP load from a separate process, for the serving benchmark.

``concurrency`` aiohttp workers on keep-alive connections send requests back to back until
``requests`` have completed (after ``warmup`` untimed ones); each request's latency is timed
from send to the last byte of the response. The client runs as its own process so that it never
shares an interpreter (or a GIL) with the server under test.

    from _http_load import LoadSpec, measure, wait_ready
    spec = LoadSpec(url="http://127.0.0.1:8000/noop", concurrency=32, requests=1000)
    wait_ready(spec)
    result = measure(spec, on_progress=print)   # {"rps": ..., "p50_ms": ..., "p99_ms": ...}

The child (this file run as a script) reads one JSON ``LoadSpec`` on stdin and writes JSON lines
on stdout: ``{"done": n}`` while it runs, then ``{"result": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Seconds between two progress lines from the child (each line costs the client CPU).
_PROGRESS_EVERY_S = 0.25


@dataclass
class LoadSpec:
    """One measurement: what to request, how many at once, how many."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None                 # JSON-able; POSTed when not None, else GET
    concurrency: int = 1
    requests: int = 1000             # timed
    warmup: int = 100                # sent first, untimed
    timeout_s: float = 30.0

    @property
    def method(self) -> str:
        return "GET" if self.body is None else "POST"

    def encoded(self) -> tuple[bytes | None, dict[str, str]]:
        """The body bytes and the headers to send with them."""
        if self.body is None:
            return None, dict(self.headers)
        return json.dumps(self.body).encode(), {"Content-Type": "application/json",
                                                **self.headers}


def wait_ready(spec: LoadSpec, timeout_s: float = 60.0) -> str:
    """Send ``spec``'s request until it answers 2xx; return the body of that answer.

    Raises:
        TimeoutError: no 2xx within ``timeout_s``; the message has the last status or error.
    """
    data, headers = spec.encoded()
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        req = urllib.request.Request(spec.url, data=data, headers=headers, method=spec.method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        time.sleep(0.1)  # poll interval while the server starts or reloads its routes
    raise TimeoutError(f"{spec.method} {spec.url} not answering 2xx after {timeout_s:.0f}s "
                       f"(last: {last})")


def measure(spec: LoadSpec, on_progress: Callable[[int], None] | None = None) -> dict:
    """Run ``spec`` in a child process; return its summary.

    Returns:
        ``requests`` (timed), ``ok``, ``errors``, ``statuses``, ``wall_s``, ``rps`` (2xx per
        second of wall time), ``p50_ms``, ``p99_ms``, ``mean_ms`` (2xx only), ``concurrency``.

    Raises:
        RuntimeError: the child failed; the message carries its stderr.
    """
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        proc.stdin.write(json.dumps(asdict(spec)))
        proc.stdin.close()
        result = None
        for line in proc.stdout:
            msg = json.loads(line)
            if "done" in msg and on_progress is not None:
                on_progress(msg["done"])
            result = msg.get("result", result)
        proc.wait()
        if proc.returncode != 0 or result is None:
            err.seek(0)
            raise RuntimeError(f"load generator for {spec.url} exited {proc.returncode}: "
                               f"{err.read()[-2000:]}")
    return result


async def _load(spec: LoadSpec) -> dict:
    import aiohttp
    import numpy as np

    data, headers = spec.encoded()
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def phase(n: int, offset: int) -> tuple[list[float], Counter, float]:
            latencies: list[float] = []
            statuses: Counter = Counter()
            left, last_report = n, time.monotonic()

            async def worker() -> None:
                nonlocal left, last_report
                while left > 0:
                    left -= 1
                    t0 = time.perf_counter()
                    try:
                        async with session.request(spec.method, spec.url, data=data,
                                                   headers=headers) as resp:
                            await resp.read()
                            status = resp.status
                    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                        statuses[type(e).__name__] += 1
                        continue
                    statuses[status] += 1
                    if 200 <= status < 300:
                        latencies.append(time.perf_counter() - t0)
                    if time.monotonic() - last_report > _PROGRESS_EVERY_S:
                        last_report = time.monotonic()
                        print(json.dumps({"done": offset + n - left}), flush=True)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
            return latencies, statuses, time.perf_counter() - start

        if spec.warmup:
            await phase(spec.warmup, offset=0)
        latencies, statuses, wall = await phase(spec.requests, offset=spec.warmup)

    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    ok = len(latencies)
    return {"concurrency": spec.concurrency, "requests": spec.requests, "ok": ok,
            "errors": spec.requests - ok, "statuses": {str(k): v for k, v in statuses.items()},
            "wall_s": wall, "rps": ok / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def _child() -> None:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    result = asyncio.run(_load(spec))
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    _child()
