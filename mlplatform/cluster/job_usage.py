"""What a training job held, measured: the accelerator types its Ray Train workers ran on, and
the whole job's usage (the Ray tasks that built its training set + the training's reservation).

Ray Train reserves ``num_workers x resources_per_worker`` for the run, but which GPU a plain
``GPU: 1`` request gets is the scheduler's and the autoscaler's choice: on a cluster with L4 and
A100 workers (cluster/gcp-gpu.yaml) it may be either, and by the time the job records its cost
the node may be gone (idle timeout, spot reclaim). So the type is read from the nodes the run's
``RayTrainWorker`` actors actually ran on: Ray's state API lists a job's actors, dead ones
included, with their node id. A GPU node advertises ``accelerator_type:<T>`` (Ray's
autodetection, or the cluster YAML's ``resources``) or carries the ``ray.io/accelerator-type``
label, but the GCS forgets a dead node's resources: so while the run lasts the meter notes the
type of every live node every few seconds (and once more as the run returns, before any idle
timeout), and maps the workers' nodes through what it noted.

Example:
    >>> from mlplatform.cluster.job_usage import TrainingMeter
    >>> meter = TrainingMeter({"CPU": 4}, num_workers=2, use_gpu=True)
    >>> with meter:                                        # doctest: +SKIP
    ...     result = train(cfg, platform)
    >>> meter.usage().gpu_type                             # doctest: +SKIP
    'L4'
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

from mlplatform.cluster.cost import (
    ACCELERATOR_PREFIX,
    Usage,
    _connected_ray,
    per_worker,
    scaling_usage,
)

#: The actor class of a Ray Train worker (Train v2 and v1 alike).
TRAIN_WORKER_CLASS = "RayTrainWorker"
#: The node label Ray sets on nodes with a detected accelerator.
ACCELERATOR_LABEL = "ray.io/accelerator-type"
_log = logging.getLogger(__name__)


def combine(parts: Mapping[str, Usage], wall_s: float) -> Usage:
    """One usage for a job made of steps (e.g. ``prep`` then ``train``) over ``wall_s``: the
    CPU-/GPU-seconds add up, GPU-seconds stay apart by type, ``cpus``/``gpus`` are the most any
    step held at once; ``parts`` are kept (logged as ``cost.<name>.*``)."""
    split: dict[str, float] = {}
    for usage in parts.values():
        for kind, seconds in usage.gpu_seconds_by_type().items():
            split[kind] = split.get(kind, 0.0) + seconds
    kinds = sorted(split)
    return Usage(wall_s, sum(u.cpu_s for u in parts.values()), sum(split.values()),
                 "+".join(kinds) or "none", "+".join(u.method for u in parts.values()),
                 max((u.cpus for u in parts.values()), default=0.0),
                 max((u.gpus for u in parts.values()), default=0.0),
                 tuple(split.items()) if len(kinds) > 1 else (), tuple(parts.items()))


def train_workers() -> dict[str, str] | None:
    """Every Ray Train worker actor of the current job, alive or dead: actor id -> node id.
    None when Ray is not connected or its state API does not answer."""
    ray = _connected_ray()
    if ray is None:
        return None
    try:
        from ray.util.state import list_actors

        ctx = ray.get_runtime_context()
        actors = list_actors(address=ctx.gcs_address,
                             filters=[("job_id", "=", ctx.get_job_id()),
                                      ("class_name", "=", TRAIN_WORKER_CLASS)],
                             detail=True, limit=10_000, timeout=30, raise_on_missing_output=False)
    except Exception as exc:   # accounting never fails the job it accounts for
        _log.warning("cost: Ray's state API did not list the Train workers (%s: %s); the GPU "
                     "type is recorded as unknown", type(exc).__name__, str(exc)[:300])
        return None
    return {a.actor_id: a.node_id for a in actors if a.node_id}


def node_accelerators() -> dict[str, str]:
    """Node id -> accelerator type of every node that advertises one (an
    ``accelerator_type:<T>`` resource, else the ``ray.io/accelerator-type`` label): the live
    nodes, and dead ones whose labels the GCS still holds."""
    ray = _connected_ray()
    if ray is None:
        return {}
    try:
        nodes = [(n["NodeID"], n.get("Resources") or {}, n.get("Labels") or {})
                 for n in ray.nodes()]
    except Exception:
        return {}
    out = {}
    for node_id, resources, labels in nodes:
        kinds = sorted(k[len(ACCELERATOR_PREFIX):] for k in resources
                       if k.startswith(ACCELERATOR_PREFIX))
        kind = kinds[0] if kinds else labels.get(ACCELERATOR_LABEL)
        if kind:
            out[node_id] = kind
    return out


class TrainingMeter:
    """Measures one Ray Train run (``with meter: train(...)``): its wall time and, when it asks
    for GPUs without naming the type, the accelerator type of every node its workers ran on.

    Args:
        resources_per_worker: ``ScalingSpec.resources_per_worker``.
        num_workers: ``ScalingSpec.num_workers``.
        use_gpu: ``ScalingSpec.use_gpu``.
        poll_s: How often the live nodes' types are noted while the run lasts.
    """

    def __init__(self, resources_per_worker: Mapping[str, float], num_workers: int,
                 use_gpu: bool, poll_s: float = 5.0):
        self.resources = dict(resources_per_worker)
        self.num_workers, self.use_gpu = num_workers, use_gpu
        self.wall_s = 0.0
        self._poll_s = poll_s
        self._before: set[str] = set()
        self._seen: dict[str, str] = {}       # node id -> accelerator type, while it lived
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None

    @property
    def _needs_gpu_type(self) -> bool:
        each = per_worker(self.resources, self.use_gpu)
        return bool(each.get("GPU")) and not any(k.startswith(ACCELERATOR_PREFIX) for k in each)

    def __enter__(self) -> TrainingMeter:
        if self._needs_gpu_type:
            # Workers of earlier runs of this driver are not this run's.
            self._before = set(train_workers() or {})
            self._note_nodes()
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="mlp-training-meter")
            self._thread.start()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc_info) -> None:
        self.wall_s = time.monotonic() - (self._t0 or time.monotonic())
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._note_nodes()     # the workers' nodes are still up: idle timeouts only start

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._note_nodes()

    def _note_nodes(self) -> None:
        self._seen.update(node_accelerators())    # never raises: {} when Ray does not answer

    def gpu_workers_by_type(self) -> Counter[str]:
        """How many of this run's workers ran on each accelerator type (``unknown``: a node
        that advertised none); empty when the state API did not answer."""
        kinds = {**self._seen, **node_accelerators()}
        return Counter(kinds.get(node, "unknown") for actor, node in (train_workers() or {}).items()
                       if actor not in self._before)

    def usage(self) -> Usage:
        """The run's :class:`~mlplatform.cluster.cost.Usage` (``method=scaling``): the
        reservation for the measured wall time, GPU-hours by the type the workers ran on. An
        ``accelerator_type:<T>`` in the resources pins the type (Ray placed them there)."""
        base = scaling_usage(self.resources, self.num_workers, self.use_gpu, self.wall_s,
                             gpu_type=None if not self._needs_gpu_type else "unknown")
        if not self._needs_gpu_type:
            return base
        counts = self.gpu_workers_by_type()
        if len(counts) == 1:
            return replace(base, gpu_type=next(iter(counts)))
        if not counts:
            return base
        total = sum(counts.values())
        split = tuple((kind, base.gpu_s * n / total) for kind, n in sorted(counts.items()))
        return replace(base, gpu_type="+".join(k for k, _ in split), gpu_split=split)
