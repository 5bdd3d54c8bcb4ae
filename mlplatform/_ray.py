"""Connecting to Ray the same way from the demo, the CLI and job scripts."""

from __future__ import annotations

import os

from mlplatform.config import PlatformConfig

#: Logical CPUs for a local Ray started by mlplatform on a small machine: more than the cores,
#: so a Serve app, a Train run and Ray Data tasks fit side by side (they mostly wait on I/O).
MIN_LOCAL_CPUS = 8


def init_ray(config: PlatformConfig, **kwargs) -> None:
    """``ray.init`` for ``config.ray_address``, else ``$RAY_ADDRESS``, else a new local Ray.

    A new local Ray gets at least :data:`MIN_LOCAL_CPUS` logical CPUs unless ``num_cpus`` is
    passed. Does nothing if Ray is already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None:
        # "local": always a new in-process Ray. A bare ray.init() would instead join whatever
        # /tmp/ray/ray_current_cluster names, even a cluster that has since stopped.
        address = "local"
        kwargs.setdefault("num_cpus", max(MIN_LOCAL_CPUS, os.cpu_count() or 1))
    kwargs.setdefault("log_to_driver", True)
    ray.init(address=address, **kwargs)
