"""Placement on the fake cluster of ``cluster/local-fake.yaml`` through the resource scheme:
Serve replicas (``num_cpus: 0`` + ``serve_cpu``) and Ray Data tasks (a token share of
``cpu_node``) run on CPU workers only, never on the head or a GPU worker, even while a GPU worker
with free CPUs is up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.cluster.conftest import NodeWatch, node_kinds, nodes_of
from tests.conftest import free_port, wait_for
from tests.projects import FRAUD


@pytest.fixture
def idle_gpu_worker(fake_ray):
    """A GPU worker that is up with all its CPUs free: an actor holds its GPU (and no CPU)."""
    import ray

    @ray.remote(num_cpus=0, num_gpus=1)
    class GpuHolder:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    holder = GpuHolder.remote()
    try:
        node = ray.get(holder.node.remote(), timeout=180)   # the autoscaler launches one
        assert node_kinds()[node] == "gpu_worker"
        yield node
    finally:
        ray.kill(holder)


def test_serve_replicas_land_on_cpu_workers(fake_ray, idle_gpu_worker):
    import ray
    from ray import serve
    from ray.util.state import list_actors

    from mlplatform._ray import serve_actor_options

    @serve.deployment(num_replicas=3, ray_actor_options=serve_actor_options(0.5))
    class WhereAmI:
        def __call__(self) -> str:
            return ray.get_runtime_context().get_node_id()

    # HeadOnly: one HTTP proxy, on the head. Fake nodes share this machine's ports, so the
    # default (a proxy on every node) would bind the same port several times.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        handle = serve.run(WhereAmI.bind(), name="placement", route_prefix=None)
        assert nodes_of("cpu_worker") >= {handle.remote().result(timeout_s=120)}

        def replica_nodes() -> list[str] | None:
            actors = list_actors(address=fake_ray.dashboard_url, filters=[
                ("class_name", "=", "ServeReplica:placement:WhereAmI"), ("state", "=", "ALIVE")])
            return [a.node_id for a in actors] if len(actors) == 3 else None

        nodes = wait_for(replica_nodes, 60, "3 live replicas in the state API")
        kinds = node_kinds()
        assert {kinds[n] for n in nodes} == {"cpu_worker"}, {n[-5:]: kinds[n] for n in nodes}
        assert idle_gpu_worker not in nodes
    finally:
        serve.shutdown()


def test_ray_data_tasks_run_on_cpu_workers(fake_ray, idle_gpu_worker, tmp_path):
    import ray
    import ray.data
    from ray.util.state import list_tasks

    from mlplatform._ray import data_remote_args, read_parquet
    from mlplatform.config import PlatformConfig
    from mlplatform.features.pipeline import latest_per_entity

    platform = PlatformConfig(storage_root=tmp_path, data_placement_resource="cpu_node",
                          project=FRAUD)
    args = data_remote_args(platform)
    assert args == {"resources": {"cpu_node": 0.001}}
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"user_id": rng.integers(0, 200, 4000).astype(str),
                           "ts": pd.Timestamp("2025-01-01", tz="UTC")
                           + pd.to_timedelta(rng.integers(0, 86400, 4000), unit="s"),
                           "amount": rng.gamma(2.0, 10.0, 4000)})
    for i in range(8):     # 8 files: 8 read tasks
        events.iloc[i * 500:(i + 1) * 500].to_parquet(tmp_path / f"part-{i}.parquet", index=False)

    watch = NodeWatch()   # Ray Data's demand may bring up a second CPU worker meanwhile
    try:
        ds = read_parquet(str(tmp_path), ray_remote_args=args)

        def tag(batch: pd.DataFrame) -> pd.DataFrame:
            return batch.assign(node=ray.get_runtime_context().get_node_id())

        tagged = ds.map_batches(tag, batch_format="pandas", **args).to_pandas()
        # The feature store's pipeline code passes the same args to its map tasks.
        latest = latest_per_entity(ds, ["user_id"], "ts", num_buckets=8,
                                   shuffle="sort_shuffle_pull_based",
                                   ray_remote_args=args).to_pandas()
    finally:
        watch.stop()
    assert len(tagged) == len(events) and len(latest) == events["user_id"].nunique()
    assert {watch.kind[n] for n in tagged["node"].unique()} == {"cpu_worker"}

    job = ray.get_runtime_context().get_job_id()
    wanted = ("ReadParquet", "MapBatches(tag)", "MapBatches(_add_bucket)", "_latest_of_bucket")

    def placed() -> dict[str, set[str]] | None:
        tasks = list_tasks(address=fake_ray.dashboard_url, limit=10_000,
                           filters=[("job_id", "=", job)], raise_on_missing_output=False)
        where: dict[str, set[str]] = {}
        for task in tasks:
            for name in wanted:
                if name in task.name and task.node_id:
                    where.setdefault(name, set()).add(watch.kind.get(task.node_id, "unseen"))
        return where if len(where) == len(wanted) else None

    where = wait_for(placed, 60, f"task events of {wanted}")
    assert all(k == {"cpu_worker"} for k in where.values()), where
