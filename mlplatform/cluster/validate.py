"""``mlp cluster validate``: Ray's own schema check of a cluster-launcher YAML, then mlplatform's rules.

Ray's part is the autoscaler's :func:`ray.autoscaler._private.util.validate_config` (the JSON
schema ``ray/autoscaler/ray-schema.json`` plus Ray's checks of ``head_node_type`` and the
workers' totals), run on the config filled out with the provider's defaults as ``ray up`` does
(:func:`~ray.autoscaler._private.util.prepare_config`: it reads a defaults file shipped in the
wheel and needs no cloud credentials or network). When the schema fails, every schema error is
listed, not only the first, and an unknown key comes with its closest allowed name.

mlplatform's rules (listed in cluster/README.md, "Validate before you launch") check the resource
scheme on every provider (head ``CPU: 0``, GPU types with ``min_workers: 0``, ``serve_cpu`` and
``cpu_node`` on CPU workers only) and, except on ``fake_multinode`` (whose "nodes" inherit the
environment of your ``ray start``, which the file cannot show), the nodes' environment: token
auth, shared storage, an MLflow server and a Redis every node reaches, the same known ``MLP_*``
settings everywhere (:mod:`mlplatform.cluster.validate_env`); plus pinned images and a price
table.

Example:
    >>> from pathlib import Path
    >>> from mlplatform.cluster.validate import validate_cluster_config
    >>> validate_cluster_config(Path("cluster/aws-gpu.yaml"))      # doctest: +SKIP
    []
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlplatform.cluster._launcher_yaml import (
    DATA_RESOURCE,
    FAKE_PROVIDERS,
    SERVE_RESOURCE,
    as_mapping,
    gpu_count,
    node_types,
    provider_type,
)
from mlplatform.cluster.validate_env import environment_problems

_KNOWN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory", SERVE_RESOURCE, DATA_RESOURCE)


def validate_cluster_config(path: Path) -> list[str]:
    """Check a cluster-launcher YAML against Ray's schema and mlplatform's rules.

    Args:
        path: A ``ray up`` YAML, e.g. ``cluster/aws-gpu.yaml`` or ``cluster/local-fake.yaml``.

    Returns:
        Human-readable problems, each naming the key or node type and the fix; empty if the
        file is good. A missing, unreadable or non-mapping file is one problem, not an exception.
    """
    config, problems = _load(Path(path))
    if config is None:
        return problems
    problems += _schema_problems(config)
    try:
        problems += _node_type_problems(config)
        if provider_type(config) not in FAKE_PROVIDERS:
            problems += environment_problems(config) + _docker_and_price_problems(config)
    except (AttributeError, TypeError, ValueError) as exc:  # a malformed file the schema flagged
        problems.append(f"mlplatform's rules could not be checked ({exc}): fix the errors above")
    return list(dict.fromkeys(problems))


# ------------------------------------------------------------------------------ loading -------
def _load(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    if not path.is_file():
        return None, [f"{path} does not exist or is not a file; pass a cluster-launcher YAML "
                      "such as cluster/aws-gpu.yaml"]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path} cannot be read: {exc}"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return None, [f"{path} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        return None, [f"{path} must be a mapping of cluster settings (cluster_name, provider, "
                      f"available_node_types, ...), got {got}"]
    return data, []


# ------------------------------------------------------------------------ Ray's schema -------
def _schema_problems(config: dict[str, Any]) -> list[str]:
    import jsonschema
    from ray.autoscaler._private import util as ray_util

    problems: list[str] = []
    prepared = _prepare(config, problems)
    try:
        ray_util.validate_config(prepared)
    except jsonschema.ValidationError:
        with open(Path(ray_util.__file__).parents[1] / "ray-schema.json") as f:
            schema = json.load(f)
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(prepared), key=lambda e: list(map(str, e.path)))
        for error in errors:
            problems += _describe_schema_error(error)
    except (ValueError, RuntimeError, KeyError, TypeError, AssertionError) as exc:
        problems.append(f"Ray rejects the config: {exc}")
    return problems


def _prepare(config: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The config filled out with the provider's defaults, as ``ray up`` validates it."""
    from ray.autoscaler._private import util as ray_util
    from ray.autoscaler._private.providers import _DEFAULT_CONFIGS

    ptype = provider_type(config)
    if ptype and ptype != "external" and ptype not in _DEFAULT_CONFIGS:
        hint = difflib.get_close_matches(ptype, list(_DEFAULT_CONFIGS), n=1)
        problems.append(f"provider.type '{ptype}' is not a Ray node provider"
                        + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; known: {', '.join(sorted(_DEFAULT_CONFIGS))}")
    elif ptype:
        quiet = logging.getLogger(ray_util.__name__)
        level, quiet.level = quiet.level, logging.WARNING  # "setting max workers for ..."
        try:
            return ray_util.prepare_config(copy.deepcopy(config))
        except FileNotFoundError:
            pass  # fake_multinode's defaults file is not shipped in the wheel: validate as is
        except Exception as exc:  # noqa: BLE001 - Ray raises many types; report, don't crash
            problems.append(f"Ray could not fill in the {ptype} defaults: {exc}")
        finally:
            quiet.level = level
    # What ray_util.fillout_defaults would add that the schema check needs.
    return {"cluster_synced_files": [], "file_mounts": {}, "max_workers": 0,
            **copy.deepcopy(config)}


def _describe_schema_error(error: Any) -> list[str]:
    where = ".".join(str(p) for p in error.absolute_path)
    place = f"in {where}" if where else "at the top level"
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = list(error.schema.get("properties") or {})
        patterns = list(error.schema.get("patternProperties") or {})
        extras = [k for k in error.instance
                  if k not in allowed and not any(re.search(p, str(k)) for p in patterns)]
        out = []
        for key in extras:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
            out.append(f"unknown key '{key}' {place} ({hint})")
        return out
    return [f"{where or '<top level>'}: {error.message} (Ray's cluster schema)"]


# ---------------------------------------------------------------- node types & resources -----
def _node_type_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, what in (("idle_timeout_minutes", "how long an idle worker (a GPU!) keeps running"),
                      ("max_workers", "the most workers the autoscaler may start")):
        if key not in config:
            problems.append(f"'{key}' is not set: set it explicitly ({what}); Ray's default "
                            "is not a decision anyone made")
    types, head = node_types(config), str(config.get("head_node_type", ""))
    if head in types:
        res = as_mapping(types[head].get("resources"))
        if res.get("CPU") != 0:
            problems.append(f"head node type '{head}' must advertise resources: {{CPU: 0}} "
                            f"(has {res or 'autodetected CPUs'}): otherwise training and data "
                            "tasks are scheduled on the head, next to the GCS and MLflow")
        extra = [r for r in ("GPU", SERVE_RESOURCE, DATA_RESOURCE) if res.get(r)]
        if extra:
            problems.append(f"head node type '{head}' advertises {extra}: remove them, the head "
                            "runs no Serve replicas, data tasks or GPU work")
    workers = {k: v for k, v in types.items() if k != head}
    gpu_types = [k for k, v in workers.items() if gpu_count(v) > 0]
    if not gpu_types:
        problems.append("no worker node type has a GPU: add one (resources: {GPU: N}, GCP "
                        "node_config.guestAccelerators, or an AWS GPU instance type) with "
                        "min_workers: 0 so that training with use_gpu: true can run")
    for name in gpu_types:
        node_type = workers[name]
        if node_type.get("min_workers", 0) != 0:
            problems.append(f"GPU node type '{name}' has min_workers: "
                            f"{node_type.get('min_workers')}; set available_node_types.{name}."
                            "min_workers: 0 so idle GPUs cost nothing (the autoscaler starts "
                            "them when work asks for a GPU)")
        res = as_mapping(node_type.get("resources"))
        if not res.get("GPU") and (res or provider_type(config) != "aws"):  # AWS fills it in
            problems.append(f"node type '{name}' has GPUs but its resources lack 'GPU': the "
                            f"autoscaler would never start it for GPU work; add GPU: "
                            f"{gpu_count(node_type)}")
        taken = [r for r in (SERVE_RESOURCE, DATA_RESOURCE) if res.get(r)]
        if taken:
            problems.append(f"GPU node type '{name}' advertises {taken}: Serve replicas and "
                            "Ray Data tasks would keep GPU nodes alive; keep them on CPU workers")
    cpu_types = [k for k in workers if k not in gpu_types]
    for resource, who in ((SERVE_RESOURCE, "Serve replicas (num_cpus: 0 + resources: "
                           f"{{{SERVE_RESOURCE}: <share>}})"),
                          (DATA_RESOURCE, "Ray Data tasks (a 0.001 share of it)")):
        if not any(as_mapping(workers[k].get("resources")).get(resource) for k in cpu_types):
            problems.append(f"no CPU worker type advertises '{resource}': {who} could never be "
                            f"placed; add it to a CPU worker's resources (see cluster/README.md)")
    for name, node_type in types.items():
        for res_name in as_mapping(node_type.get("resources")):
            close = difflib.get_close_matches(str(res_name), _KNOWN_RESOURCES, n=1, cutoff=0.75)
            if close and close[0] != res_name:
                problems.append(f"node type '{name}' advertises resource '{res_name}': did you "
                                f"mean '{close[0]}'?")
    return problems


# --------------------------------------------------------------------- docker & prices -------
def _docker_and_price_problems(config: Mapping[str, Any]) -> list[str]:
    docker, problems = as_mapping(config.get("docker")), []
    images = [(f"docker.{k}", docker.get(k)) for k in ("image", "head_image", "worker_image")]
    images += [(f"available_node_types.{n}.docker.worker_image",
                as_mapping(t.get("docker")).get("worker_image")) for n, t in node_types(config).items()]
    for key, image in images:
        tag = str(image).rsplit("/", 1)[-1].partition(":")[2]
        if image and (not tag or tag.startswith(("latest", "nightly"))):
            problems.append(f"{key} is '{image}': pin a release tag (e.g. "
                            "rayproject/ray:2.60.0-py311-gpu) so every node runs the same Ray")
    if provider_type(config) == "local":
        return problems
    prices = as_mapping(config.get("metadata")).get("prices")
    if not isinstance(prices, Mapping):
        return problems + ["metadata.prices is missing: add the price table mlp cost reads "
                           "({cpu_hour: <USD per vCPU-hour>, gpu_hour: {<accelerator>: <USD>}})"]
    try:
        from mlplatform.cluster.cost import PriceTable

        PriceTable.from_mapping(prices, "metadata.prices")
    except ImportError:
        pass
    except ValueError as exc:  # ConfigError: names the key
        problems.append(str(exc))
    priced = {str(k).lower() for k in as_mapping(prices.get("gpu_hour"))}
    for name, node_type in node_types(config).items():
        for res in as_mapping(node_type.get("resources")):
            kind = str(res).partition("accelerator_type:")[2]
            if kind and kind.lower() not in priced:
                problems.append(f"node type '{name}' has {res} but metadata.prices.gpu_hour has "
                                f"no '{kind}': its jobs would be costed at the default GPU price")
    return problems
