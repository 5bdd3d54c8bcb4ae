"""Connecting to Ray the same way from the demo, the CLI and job scripts."""

from __future__ import annotations

import logging
import os

from mlplatform.config import PlatformConfig

#: Custom resources of the cluster YAMLs in ``cluster/`` (one scheme on AWS, GCP and the local
#: fake cluster). CPU workers advertise both; the head and GPU workers neither.
#: ``serve_cpu``: CPU kept for Serve replicas, which ask for ``num_cpus: 0`` plus a share of it
#: (:func:`serve_actor_options`), so training and data work, which ask for CPU, never take it.
SERVE_RESOURCE = "serve_cpu"
#: ``cpu_node``: a marker (1000 per CPU worker); Ray Data tasks ask a token share of it
#: (:func:`data_remote_args`) to stay on CPU workers.
CPU_NODE_RESOURCE = "cpu_node"
#: The share of ``PlatformConfig.data_placement_resource`` each Ray Data task asks for: it
#: decides where tasks may run, never how many (their CPU request still does that).
DATA_PLACEMENT_AMOUNT = 0.001

#: Ray Data shuffle strategy of every all-to-all step mlplatform runs (feature views' group-bys,
#: the contracts' uniqueness checks, the training split's aggregates). Ray 2.60's default,
#: ``shuffle_v2`` (hash shuffle), starts a pool of aggregator actors for each keyed group-by:
#: measured on 2 cores, a uniqueness check of 20,000 keys in 16 blocks took 11.7-12.0 s every
#: time with it and 1.2-3.2 s with the sort-based pull shuffle (tasks, no actors); a feature
#: build of 50,000 rows 20.2 s vs 9.2 s (benchmarks/feature_shuffle.py).
DEFAULT_SHUFFLE = "sort_shuffle_pull_based"

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
    if not kwargs["log_to_driver"]:
        # Workers' output goes to the session logs only; so do the driver's own Ray INFO lines.
        kwargs.setdefault("logging_level", logging.WARNING)
    ray.init(address=address, **kwargs)


def with_shuffle(ds, strategy: str = DEFAULT_SHUFFLE):
    """``ds`` with ``strategy`` (a ``ray.data.context.ShuffleStrategy`` value) as its shuffle.

    Set on the dataset's own context, not globally: Ray Data plans a group-by or an aggregate
    with the context of the dataset it is called on, and the caller's other datasets keep
    theirs.
    """
    from ray.data.context import ShuffleStrategy

    ds.context.shuffle_strategy = ShuffleStrategy(strategy)
    return ds


def read_parquet(paths, **kwargs):
    """``ray.data.read_parquet`` through Ray Data's V1 Parquet reader.

    Ray 2.60's default (V2) reader starts a pool of 32 footer-reading actors for every read:
    on a small machine that costs 5-15 s per read, even for a few kilobytes (measured: 60 small
    files, 10.4 s with V2 vs 2.0 s with V1). V1 reads footers in a few tasks instead.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        ctx.use_datasource_v2 = previous


def data_remote_args(config: PlatformConfig) -> dict:
    """``ray_remote_args`` that keep Ray Data tasks where ``config`` wants them.

    With ``data_placement_resource`` set (``cpu_node`` on the clusters of ``cluster/``), every
    task asks for :data:`DATA_PLACEMENT_AMOUNT` of it, so it runs only on nodes that advertise
    it (CPU workers: never the head or a GPU worker). Unset (the laptop default): ``{}``.
    Pass it to reads and per-row operators (``read_parquet(..., **args)``,
    ``map_batches(..., **args)``, ``map_groups(..., **args)``); Ray Data's all-to-all steps
    (repartition, sort, shuffle, aggregate) take no remote args in Ray 2.60 and run on any
    node with a free CPU.

    Example:
        >>> from mlplatform.config import PlatformConfig
        >>> data_remote_args(PlatformConfig(data_placement_resource="cpu_node"))
        {'resources': {'cpu_node': 0.001}}
    """
    if not config.data_placement_resource:
        return {}
    return {"resources": {config.data_placement_resource: DATA_PLACEMENT_AMOUNT}}


def serve_actor_options(serve_cpus: float) -> dict:
    """``ray_actor_options`` of a Serve replica that reserves ``serve_cpus`` of a CPU worker's
    :data:`SERVE_RESOURCE` and no plain CPU, so it runs only on CPU workers. A Serve config
    says the same in YAML: ``ray_actor_options: {num_cpus: 0, resources: {serve_cpu: 0.5}}``.

    Example:
        >>> serve_actor_options(0.5)
        {'num_cpus': 0, 'resources': {'serve_cpu': 0.5}}
    """
    return {"num_cpus": 0, "resources": {SERVE_RESOURCE: serve_cpus}}
