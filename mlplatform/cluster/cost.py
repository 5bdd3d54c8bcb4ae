"""What a job cost: the resources it held, priced, logged on its MLflow run; summed by ``mlp cost``.

Every job (``jobs/train.py``, ``tune.py``, ``ci_pipeline.py``, ``build_features.py``) logs on its
MLflow run:

- metrics ``cost.wall_s``, ``cost.cpu_hours``, ``cost.gpu_hours``, ``cost.usd_estimate``;
- params ``cost.cpus`` / ``cost.gpus`` (held at once) and the prices used, ``cost.price.*``;
- tags ``cost.gpu_type`` (Ray accelerator type, ``unknown``, or ``none``), ``cost.method`` (how
  the resources were measured), ``cost.price_table`` (which table), ``mlplatform.job`` (the job
  name) and ``mlplatform.model`` (the registered model it trained, when it trained one).

How the resources are measured (an estimate, not a bill):

- training (``ci_pipeline``, and the training step of ``train``): Ray Train reserves ``num_workers x
  resources_per_worker`` (plus one GPU per worker with ``use_gpu``, as Ray Train does) for the
  whole training call, so CPU-/GPU-hours = that reservation x the call's wall time
  (``method=scaling``; the wall time also covers the split and MLflow logging: an upper bound);
- sweeps (``tune``): each trial is one process holding ``resources_per_worker`` (+1 GPU with
  ``use_gpu``) for its own duration, so hours = that x the sum of the trials' ``time_s``
  (``method=trials``);
- feature builds (``build_features``): Ray Data reserves nothing up front, so the CPU-seconds of
  the job's Ray tasks (Ray Data's read/map/shuffle tasks; actors are not counted) are summed
  from Ray's state API (``method=ray_tasks``, at most the 10,000 tasks the API returns); where
  the state API does not answer, ``min(parallelism, cluster CPUs) x wall time``
  (``method=parallelism``).

A training job (``train``) is costed as a whole: the CPU time of the Ray tasks that built its
training set (``ray_tasks``) plus the training's reservation (``scaling``), over the job's wall
time (``method=ray_tasks+scaling``; each part also as ``cost.prep.*`` / ``cost.train.*``). Its
accelerator type (and ``ci_pipeline``'s) is the one of the nodes its Ray Train workers actually
ran on, read from Ray's state API after the run, dead nodes included
(:mod:`mlplatform.cluster.job_usage`); workers on several types are priced per type
(``cost.gpu_hours.<T>``; every GPU run logs that metric). In sweeps (``tune``) the type comes
from an ``accelerator_type:<T>`` key in ``resources_per_worker``, else from the cluster's live
GPU nodes when they are all one type, else it is ``unknown``.

Price table (YAML, USD list prices; ``$MLP_PRICE_TABLE`` or ``PlatformConfig.price_table``
names the file, else :data:`DEFAULT_PRICES` is used; the cluster YAMLs ship themselves to every
node and set ``MLP_PRICE_TABLE`` to that copy, so jobs on a cluster use its table)::

    cpu_hour: 0.048          # per vCPU-hour
    gpu_hour:                # per GPU-hour, by Ray accelerator type (ray.util.accelerators)
      A10G: 1.006
      L4: 0.805
      A100: 3.67
      default: 1.0           # any other type, and `unknown`

The same mapping may sit under a top-level ``prices:`` key, or under ``metadata.prices`` as in
the launcher YAMLs of ``cluster/`` (so ``MLP_PRICE_TABLE=cluster/aws-gpu.yaml`` works).
Types match case-insensitively, and ``A100-80G`` falls back to ``A100``.
Estimated cost = ``cpu_hours x cpu_hour + gpu_hours x gpu_hour[type]``.

``mlp cost`` sums these per model and per job (:mod:`mlplatform.cluster.cost_summary`).

Example:
    >>> usage = scaling_usage({"CPU": 4}, num_workers=2, use_gpu=True, wall_s=1800,
    ...                       gpu_type="A10G")
    >>> round(usage.cpu_hours, 2), round(usage.gpu_hours, 2)
    (4.0, 1.0)
    >>> round(estimate(usage, PriceTable.default()), 3)
    1.198
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlplatform.errors import ConfigError

if TYPE_CHECKING:
    from mlplatform.config import PlatformConfig

PRICE_TABLE_ENV = "MLP_PRICE_TABLE"
#: Approximate on-demand list prices (USD): a vCPU of a general-purpose instance, and one GPU
#: of the usual single-GPU instance of each type (AWS g4dn/g5/g6, GCP a2/a3).
DEFAULT_PRICES: dict[str, Any] = {
    "cpu_hour": 0.048,
    "gpu_hour": {"T4": 0.526, "A10G": 1.006, "L4": 0.805, "A100": 3.67, "H100": 6.88,
                 "default": 1.0},
}
JOB_TAG, MODEL_TAG = "mlplatform.job", "mlplatform.model"
METRICS = ("cost.wall_s", "cost.cpu_hours", "cost.gpu_hours", "cost.usd_estimate")
ACCELERATOR_PREFIX = "accelerator_type:"


# ----------------------------------------------------------------------------- prices -------
@dataclass(frozen=True)
class PriceTable:
    """Per-hour prices: ``cpu_hour`` per CPU, ``gpu_hour`` per GPU by accelerator type."""

    cpu_hour: float
    gpu_hour: Mapping[str, float]
    source: str = "built-in"

    @classmethod
    def default(cls) -> PriceTable:
        return cls.from_mapping(DEFAULT_PRICES, "built-in")

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> PriceTable:
        """Validate a price mapping (see the module docstring); errors name ``source``."""
        if isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping) \
                and "prices" in data["metadata"]:
            data = data["metadata"]   # a launcher YAML of cluster/: its table is metadata.prices
        if isinstance(data, Mapping) and "prices" in data:
            data = data["prices"]
        if not isinstance(data, Mapping):
            raise ConfigError(f"price table {source} must be a mapping with cpu_hour and "
                              f"gpu_hour, got {type(data).__name__}")
        unknown = set(data) - {"cpu_hour", "gpu_hour"}
        if unknown:
            raise ConfigError(f"price table {source}: unknown key(s) {sorted(unknown)}; "
                              "allowed: cpu_hour, gpu_hour")
        if "cpu_hour" not in data:
            raise ConfigError(f"price table {source}: cpu_hour (price per CPU-hour) is missing")
        gpu = data.get("gpu_hour", {})
        if isinstance(gpu, (int, float)) and not isinstance(gpu, bool):
            gpu = {"default": gpu}
        if not isinstance(gpu, Mapping):
            raise ConfigError(f"price table {source}: gpu_hour must map accelerator types to "
                              "prices per GPU-hour, e.g. {A10G: 1.006, default: 1.0}")
        gpu = {str(k): _price(v, f"gpu_hour.{k}", source) for k, v in gpu.items()}
        gpu.setdefault("default", DEFAULT_PRICES["gpu_hour"]["default"])
        return cls(_price(data["cpu_hour"], "cpu_hour", source), gpu, source)

    def gpu_price(self, gpu_type: str | None) -> float:
        """Price per GPU-hour of ``gpu_type``: exact (any case), then its family, then default."""
        by_name = {k.lower(): v for k, v in self.gpu_hour.items()}
        name = (gpu_type or "").lower()
        for candidate in (name, name.split("-")[0]):
            if candidate and candidate in by_name:
                return by_name[candidate]
        return by_name["default"]


def _price(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"price table {source}: {key} must be a number >= 0, got {value!r}")
    return float(value)


def load_price_table(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The price table in YAML file ``path`` (None: the built-in :data:`DEFAULT_PRICES`).

    Raises:
        ConfigError: The file is missing, not YAML, or not a valid price table.
    """
    if path is None:
        return PriceTable.default()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"price table {path} does not exist (set by ${PRICE_TABLE_ENV} or "
                          "price_table); point it at a YAML file with the table (a launcher YAML of cluster/ "
                          "holds one under metadata.prices) or "
                          "unset it for the built-in prices")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"price table {path} is not valid YAML: {exc}") from None
    return PriceTable.from_mapping(data, str(path))


def price_table_for(platform: PlatformConfig | None = None,
                    env: Mapping[str, str] | None = None) -> PriceTable:
    """The platform's ``price_table`` file, else ``$MLP_PRICE_TABLE``, else the built-in one."""
    env = os.environ if env is None else env
    path = getattr(platform, "price_table", None) or env.get(PRICE_TABLE_ENV) or None
    return load_price_table(path)


# ------------------------------------------------------------------------------ usage -------
@dataclass(frozen=True)
class Usage:
    """Resources a job held: CPU- and GPU-seconds over ``wall_s`` seconds of wall time."""

    wall_s: float
    cpu_s: float
    gpu_s: float = 0.0
    gpu_type: str = "none"
    method: str = "scaling"
    cpus: float = 0.0          # held at once (0 when measured from tasks)
    gpus: float = 0.0
    #: ``(type, GPU-seconds)`` when the GPUs were of several types (``gpu_type`` joins them)
    gpu_split: tuple[tuple[str, float], ...] = ()
    #: ``(name, Usage)`` of the steps a whole-job usage adds up (``job_usage.combine``)
    parts: tuple[tuple[str, Usage], ...] = ()

    @property
    def cpu_hours(self) -> float:
        return self.cpu_s / 3600

    @property
    def gpu_hours(self) -> float:
        return self.gpu_s / 3600

    def gpu_seconds_by_type(self) -> dict[str, float]:
        """GPU-seconds per accelerator type (empty without GPUs)."""
        if self.gpu_split:
            return dict(self.gpu_split)
        return {self.gpu_type: self.gpu_s} if self.gpu_s else {}


def per_worker(resources: Mapping[str, float], use_gpu: bool) -> dict[str, float]:
    """What one Ray Train worker (or Tune trial) reserves: ``resources`` plus, with
    ``use_gpu``, one GPU unless it names its own count (Ray Train's rule)."""
    out = {k: float(v) for k, v in resources.items() if v}
    if use_gpu:
        out.setdefault("GPU", 1.0)
    return out


def scaling_usage(resources: Mapping[str, float], num_workers: int, use_gpu: bool,
                  wall_s: float, gpu_type: str | None = None) -> Usage:
    """A Ray Train run: ``num_workers`` x ``resources`` held for ``wall_s`` seconds."""
    each = per_worker(resources, use_gpu)
    cpus, gpus = each.get("CPU", 0.0) * num_workers, each.get("GPU", 0.0) * num_workers
    return Usage(wall_s, cpus * wall_s, gpus * wall_s, _gpu_type(each, gpus, gpu_type),
                 "scaling", cpus, gpus)


def trials_usage(resources: Mapping[str, float], use_gpu: bool, trial_seconds: Iterable[float],
                 wall_s: float, gpu_type: str | None = None) -> Usage:
    """A Tune sweep: each trial held ``resources`` (+GPU) for its own duration."""
    each = per_worker(resources, use_gpu)
    busy = sum(s for s in (float(x) for x in trial_seconds if x is not None)
               if not math.isnan(s))   # a trial that never reported has no time
    gpus = each.get("GPU", 0.0)
    return Usage(wall_s, each.get("CPU", 0.0) * busy, gpus * busy, _gpu_type(each, gpus, gpu_type),
                 "trials", each.get("CPU", 0.0), gpus)


def data_usage(wall_s: float, parallelism: int, since: float | None = None,
               until: float | None = None) -> Usage:
    """A Ray Data job (the current driver's): CPU-seconds of its Ray tasks that started at or
    after ``since`` (and before ``until``; epoch seconds), from the state API; else
    ``min(parallelism, cluster CPUs)`` x ``wall_s``."""
    cpu_s = _task_cpu_seconds(since, until)
    if cpu_s is not None:
        return Usage(wall_s, cpu_s, method="ray_tasks")
    try:
        ray = _connected_ray()
        cluster = ray.cluster_resources().get("CPU", 1.0) if ray else 1.0
    except Exception:   # accounting never fails the job it accounts for
        cluster = 1.0
    cpus = float(min(parallelism, cluster))
    return Usage(wall_s, cpus * wall_s, method="parallelism", cpus=cpus)


def _task_cpu_seconds(since: float | None, until: float | None = None) -> float | None:
    try:
        ray = _connected_ray()
        if ray is None:
            return None
        from ray.util.state import list_tasks

        ctx = ray.get_runtime_context()
        # The GCS address, not None: without it the state client guesses the dashboard at
        # 127.0.0.1:8265, which is another cluster's (or none) when the port is not the default.
        tasks = list_tasks(address=ctx.gcs_address, filters=[("job_id", "=", ctx.get_job_id())],
                           detail=True, limit=10_000, timeout=30, raise_on_missing_output=False)
    except Exception as exc:   # no dashboard, a slow state API: fall back to the approximation
        logging.getLogger(__name__).warning(
            "cost: Ray's state API did not list this job's tasks (%s: %s); estimating CPU "
            "from the parallelism instead", type(exc).__name__, str(exc)[:300])
        return None
    start_ms, now_ms = (since or 0) * 1000, time.time() * 1000
    until_ms = until * 1000 if until is not None else math.inf
    total = 0.0
    for t in tasks:
        if (t.type != "NORMAL_TASK" or not t.start_time_ms or t.start_time_ms < start_ms
                or t.start_time_ms >= until_ms):
            continue
        # task events reach the state API a second or so late: a task whose end has not
        # arrived yet counts until now
        end = t.end_time_ms or now_ms
        total += (t.required_resources or {}).get("CPU", 0.0) * (end - t.start_time_ms) / 1000
    return total


def _gpu_type(resources: Mapping[str, float], gpus: float, configured: str | None) -> str:
    if not gpus:
        return "none"
    if configured:
        return configured
    for key in resources:
        if key.startswith(ACCELERATOR_PREFIX):
            return key[len(ACCELERATOR_PREFIX):]
    return cluster_gpu_type()


def cluster_gpu_type() -> str:
    """The accelerator type of the connected cluster's GPU nodes if they are all one type
    (Ray labels a GPU node with an ``accelerator_type:<T>`` resource), else ``unknown``."""
    try:
        ray = _connected_ray()
        if ray is None:
            return "unknown"
        types = {k[len(ACCELERATOR_PREFIX):] for n in ray.nodes()
                 if n.get("Alive") and n.get("Resources", {}).get("GPU")
                 for k in n.get("Resources", {}) if k.startswith(ACCELERATOR_PREFIX)}
    except Exception:
        return "unknown"
    return types.pop() if len(types) == 1 else "unknown"


def _connected_ray():
    """The ``ray`` module when this process is connected to a cluster, else None (without
    importing Ray: a process that never imported it is not connected)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def estimate(usage: Usage, prices: PriceTable) -> float:
    """Estimated cost in USD: CPU-hours and GPU-hours (by type) at the table's prices."""
    gpu = sum(s / 3600 * prices.gpu_price(k) for k, s in usage.gpu_seconds_by_type().items())
    return usage.cpu_hours * prices.cpu_hour + gpu


# ---------------------------------------------------------------------------- logging -------
def cost_fields(usage: Usage, prices: PriceTable, job: str, model: str | None = None
                ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """The (metrics, params, tags) a job's run gets."""
    metrics = {"cost.wall_s": usage.wall_s, "cost.cpu_hours": usage.cpu_hours,
               "cost.gpu_hours": usage.gpu_hours, "cost.usd_estimate": estimate(usage, prices)}
    params = {"cost.cpus": f"{usage.cpus:g}", "cost.gpus": f"{usage.gpus:g}",
              "cost.price.cpu_hour": f"{prices.cpu_hour:g}"}
    by_type = usage.gpu_seconds_by_type()
    if len(by_type) == 1:
        params["cost.price.gpu_hour"] = f"{prices.gpu_price(usage.gpu_type):g}"
    for kind, seconds in by_type.items():
        metrics[f"cost.gpu_hours.{kind}"] = seconds / 3600
        if len(by_type) > 1:
            params[f"cost.price.gpu_hour.{kind}"] = f"{prices.gpu_price(kind):g}"
    for name, part in usage.parts:
        metrics.update({f"cost.{name}.wall_s": part.wall_s,
                        f"cost.{name}.cpu_hours": part.cpu_hours,
                        f"cost.{name}.gpu_hours": part.gpu_hours})
    tags = {"cost.gpu_type": usage.gpu_type, "cost.method": usage.method,
            "cost.price_table": prices.source, JOB_TAG: job}
    if model:
        tags[MODEL_TAG] = model
    return metrics, params, tags


def record_cost(platform: PlatformConfig, run_id: str, usage: Usage, *, job: str,
                model: str | None = None, echo: Callable[[str], object] = print
                ) -> dict[str, float] | None:
    """Log ``usage`` on MLflow run ``run_id`` (finished runs accept it too); returns the metrics.

    A failure to log is reported through ``echo`` and returns None: the job it accounts for
    has done its work by then and must not fail for its bookkeeping.
    """
    try:
        from mlflow.entities import Metric, Param, RunTag

        from mlplatform import _mlflow

        metrics, params, tags = cost_fields(usage, price_table_for(platform), job, model)
        now = int(time.time() * 1000)
        _mlflow.client(platform).log_batch(
            run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()])
    except Exception as exc:
        echo(f"warning: could not record the cost of {job} on run {run_id}: "
             f"{type(exc).__name__}: {exc}")
        return None
    echo(f"cost: {usage.cpu_hours:.4f} CPU-h, {usage.gpu_hours:.4f} GPU-h ({usage.gpu_type}), "
         f"{usage.wall_s:.0f} s wall, ~${metrics['cost.usd_estimate']:.4f} "
         f"({usage.method}; prices: {tags['cost.price_table']})")
    return metrics


def record_job_run(platform: PlatformConfig, usage: Usage, *, job: str,
                   params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
                   experiment: str | None = None, echo: Callable[[str], object] = print
                   ) -> str | None:
    """A new, finished MLflow run for a job that makes no run of its own (a feature build),
    carrying ``params``, ``tags`` and its cost. Call it only after the job succeeded."""
    try:
        from mlplatform import _mlflow

        client = _mlflow.client(platform)
        run = client.create_run(_mlflow.ensure_experiment(platform, experiment),
                                run_name=f"{job}-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={JOB_TAG: job, **(tags or {})})
        for k, v in (params or {}).items():
            client.log_param(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id)
    except Exception as exc:
        echo(f"warning: could not record the {job} run in MLflow: {type(exc).__name__}: {exc}")
        return None
    record_cost(platform, run.info.run_id, usage, job=job, echo=echo)
    return run.info.run_id
