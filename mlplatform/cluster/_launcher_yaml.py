"""Reading a cluster-launcher YAML: the pieces both halves of ``mlp cluster validate`` use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Providers whose nodes all run on this machine (env rules skipped, see validate.py).
FAKE_PROVIDERS = frozenset({"fake_multinode", "fake_multinode_docker"})
#: The resource scheme shared by every cluster YAML (cluster/README.md).
SERVE_RESOURCE, DATA_RESOURCE = "serve_cpu", "cpu_node"


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (the schema check reports the rest)."""
    return value if isinstance(value, Mapping) else {}


def provider_type(config: Mapping[str, Any]) -> str:
    return str(as_mapping(config.get("provider")).get("type", ""))


def node_types(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(k): v for k, v in as_mapping(config.get("available_node_types")).items()
            if isinstance(v, Mapping)}
