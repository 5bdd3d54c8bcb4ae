"""The local fake autoscaling cluster of ``cluster/local-fake.yaml`` for the cluster tests.

Started once for tests/cluster through the CLI, ``mlp cluster up-local --state-dir <tmp>``
(``mlplatform.cluster.local.up_local``: Ray's fake_multinode provider, token auth, free ports,
its own temp dir), and stopped with ``mlp cluster down-local --state-dir <tmp>``, which must leave
none of its processes behind. Each test module
connects to it for its own duration (``fake_ray``), so modules that start other clusters in
this process (``_multinode.py``) are unaffected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_YAML = REPO / "cluster" / "local-fake.yaml"


@pytest.fixture(scope="package")
def fake_cluster(tmp_path_factory):
    """The running fake cluster (a ``LocalCluster``: ``address``, ``dashboard_url``, ...),
    started and stopped by the ``mlp cluster`` commands, stopped after the last test of
    tests/cluster, not at the end of the whole run."""
    import json

    # Ray is imported before CliRunner swaps stderr: its log handler keeps the stream it finds.
    import ray  # noqa: F401
    from typer.testing import CliRunner

    from mlplatform.cli import app
    from mlplatform.cluster.local import STATE_FILE, LocalCluster, cluster_processes

    state_dir = tmp_path_factory.mktemp("fake-cluster")
    runner = CliRunner()
    up = runner.invoke(app, ["cluster", "up-local", "--config", str(FAKE_YAML),
                             "--state-dir", str(state_dir)])
    assert up.exit_code == 0, f"{up.output}\n{up.exception!r}"
    cluster = LocalCluster(**json.loads((state_dir / STATE_FILE).read_text()))
    # what it prints: where the cluster is and how to stop this one
    assert cluster.address in up.output and cluster.dashboard_url in up.output, up.output
    assert f"mlp cluster down-local --state-dir {state_dir}" in up.output
    try:
        yield cluster
    finally:
        down = runner.invoke(app, ["cluster", "down-local", "--state-dir", str(state_dir)])
        left = cluster_processes(cluster)
        assert down.exit_code == 0, f"{down.output}\n{down.exception!r}"
        assert f"Stopped the local cluster at {cluster.address}" in down.output, down.output
        assert not left, f"down-local left processes of the fake cluster: {left}"


@pytest.fixture(scope="module")
def fake_ray(fake_cluster):
    """This process connected (as a driver on the head) to the fake cluster."""
    import ray

    ray.init(address=fake_cluster.address, log_to_driver=False)
    try:
        yield fake_cluster
    finally:
        ray.shutdown()


def node_kinds() -> dict[str, str]:
    """Live node id -> ``head`` | ``cpu_worker`` | ``gpu_worker``, told apart by the resources
    each type of the YAML advertises (the head has no CPU, only CPU workers have ``cpu_node``,
    only GPU workers have ``GPU``)."""
    import ray

    kinds = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        res = node["Resources"]
        kinds[node["NodeID"]] = ("gpu_worker" if "GPU" in res else
                                 "cpu_worker" if "cpu_node" in res else
                                 "head" if not res.get("CPU") else "unknown")
    return kinds


def nodes_of(kind: str) -> set[str]:
    return {node for node, k in node_kinds().items() if k == kind}


class NodeWatch:
    """Polls the live nodes in a background thread: every node's kind and when it was first and
    last seen alive (a worker the autoscaler starts and stops between two looks is missed only
    if it lives under half a second)."""

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.kind: dict[str, str] = {}
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._look()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _look(self) -> None:
        import time

        now = time.time()
        for node, kind in node_kinds().items():
            self.kind[node] = kind
            self.first_seen.setdefault(node, now)
            self.last_seen[node] = now

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._look()

    def of(self, kind: str) -> set[str]:
        """Every node of ``kind`` seen so far (alive or not)."""
        return {node for node, k in self.kind.items() if k == kind}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._look()
