"""Reading a cluster-launcher YAML: the pieces both halves of ``mlp cluster validate`` use."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: Providers whose nodes all run on this machine (env rules skipped, see validate.py).
FAKE_PROVIDERS = frozenset({"fake_multinode", "fake_multinode_docker"})
#: The resource scheme shared by every cluster YAML (cluster/README.md).
SERVE_RESOURCE, DATA_RESOURCE = "serve_cpu", "cpu_node"
#: AWS instance families with NVIDIA GPUs (Ray autodetects their GPUs when resources is empty).
AWS_GPU_FAMILY = re.compile(r"^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en|p6)\.")


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (the schema check reports the rest)."""
    return value if isinstance(value, Mapping) else {}


def provider_type(config: Mapping[str, Any]) -> str:
    return str(as_mapping(config.get("provider")).get("type", ""))


def node_types(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(k): v for k, v in as_mapping(config.get("available_node_types")).items()
            if isinstance(v, Mapping)}


def gpu_count(node_type: Mapping[str, Any]) -> int:
    """GPUs a node type has: its ``resources``, GCP ``guestAccelerators`` or an AWS GPU family."""
    resources, node_config = as_mapping(node_type.get("resources")), as_mapping(node_type.get("node_config"))
    if resources.get("GPU"):
        return int(resources["GPU"])
    accelerators = node_config.get("guestAccelerators") or []
    if accelerators:
        return sum(int(a.get("acceleratorCount", 1)) for a in accelerators if isinstance(a, dict))
    return int(bool(AWS_GPU_FAMILY.match(str(node_config.get("InstanceType", "")))))
