"""Autoscaling on the fake cluster of ``cluster/local-fake.yaml``: a training run with
``use_gpu: true`` makes a GPU worker appear, runs on it, and the worker goes after the idle
timeout (the CPU worker, ``min_workers: 1``, stays). The run's cost, recorded after that node is
gone, has GPU-hours of the accelerator type the Train worker ran on.

The GPU is fake (``GPU: 1`` is a number the scheduler counts): XGBoost asked for
``device=cuda`` finds no device and trains on the CPU, with a warning.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cluster.conftest import FAKE_YAML, NodeWatch, nodes_of
from tests.conftest import wait_for

ROWS = 3000


def yaml_gpu_type() -> str:
    """The accelerator type cluster/local-fake.yaml's gpu_worker advertises."""
    import yaml

    resources = yaml.safe_load(FAKE_YAML.read_text())["available_node_types"]["gpu_worker"][
        "resources"]
    (kind,) = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
    return kind


def record_node(report_dir: str):
    """XGBoost callback (``TrainConfig.xgb_callbacks``): each Ray Train worker writes the node
    it runs on, the resources Ray gave it, and when its boosting ended."""
    import ray
    import xgboost

    class RecordNode(xgboost.callback.TrainingCallback):
        def before_training(self, model):
            self._write({"node_id": ray.get_runtime_context().get_node_id(),
                         "resources": ray.get_runtime_context().get_assigned_resources()})
            return model

        def after_training(self, model):
            self._write({"finished_at": time.time()})
            return model

        def _write(self, fields: dict) -> None:
            path = Path(report_dir, f"worker-{os.getpid()}.json")
            old = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps({**old, **fields}))

    return RecordNode()


def training_set(folder: Path) -> Path:
    """A small Parquet training set with the fraud example's model inputs and its lineage file
    (values are synthetic: this test is about where training runs, not what it learns)."""
    from mlplatform.features.training_set import TRAINING_SET_MANIFEST
    from tests.projects import project

    fraud = project("fraud")
    FEATURE_COLUMNS, LABEL_COLUMN = fraud.input_columns, fraud.task.label
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.gamma(2.0, 10.0, ROWS) for c in FEATURE_COLUMNS})
    for name, codes in fraud.categorical.items():
        frame[name] = rng.integers(0, codes, ROWS)
    frame["hour_of_day"] = rng.integers(0, 24, ROWS)
    frame["is_night"] = (frame["hour_of_day"] < 6).astype(int)
    frame["day_of_week"] = rng.integers(0, 7, ROWS)
    risk = frame["amount"] / frame["amount"].max() + 0.5 * frame["is_night"]
    frame[LABEL_COLUMN] = (risk + rng.normal(0, 0.3, ROWS) > 0.9).astype(int)
    frame["event_timestamp"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.uniform(0, 30 * 86400, ROWS)), unit="s")
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-0.parquet", index=False)
    (folder / TRAINING_SET_MANIFEST).write_text(json.dumps({
        "project": fraud.name, "task": fraud.task.model_dump(mode="json"),
        "label": LABEL_COLUMN, "features": FEATURE_COLUMNS, "categorical": fraud.categorical,
        "timestamp": "event_timestamp"}))
    return folder


class GpuDemandWatch(NodeWatch):
    """A :class:`NodeWatch` that also notes when a placement group asking for a GPU (Ray
    Train's worker group) was first seen waiting: the demand the autoscaler answers."""

    def _look(self) -> None:
        import ray

        if not hasattr(self, "demand_at"):
            for pg in ray.util.placement_group_table().values():
                if any(b.get("GPU") for b in pg["bundles"].values()):
                    self.demand_at = time.time()
        super()._look()


def test_up_local_refuses_a_second_cluster_and_keeps_the_first(fake_cluster):
    from typer.testing import CliRunner

    from mlplatform.cli import app

    state_dir = Path(fake_cluster.config).parent
    out = CliRunner().invoke(app, ["cluster", "up-local", "--config", fake_cluster.source_config,
                                   "--state-dir", str(state_dir)])
    assert out.exit_code == 1, out.output
    assert re.search(r"error: a local cluster is already running at \S+ .*down-local",
                     out.output), out.output
    assert json.loads((state_dir / "state.json").read_text())["address"] == fake_cluster.address


def test_gpu_training_brings_up_a_gpu_worker_that_goes_when_idle(fake_ray, tmp_path,
                                                                   monkeypatch):
    import mlflow

    from mlplatform.cluster.cost import record_cost
    from mlplatform.cluster.job_usage import TrainingMeter
    from mlplatform.config import PlatformConfig
    from mlplatform.training import ScalingSpec, TrainConfig, train
    from mlplatform.training.config import CallbackSpec

    assert not nodes_of("gpu_worker"), "a GPU worker is up before anything asked for a GPU"
    assert nodes_of("cpu_worker"), "cpu_worker has min_workers: 1"
    platform = PlatformConfig(storage_root=tmp_path / "storage")
    reports = tmp_path / "workers"
    reports.mkdir()
    config = TrainConfig(
        features_path=training_set(tmp_path / "features"), num_boost_round=20,
        early_stopping_rounds=0, run_name="fake-gpu",
        scaling=ScalingSpec(num_workers=1, use_gpu=True, resources_per_worker={"CPU": 1}),
        xgb_callbacks=[CallbackSpec(target=f"{__name__}:record_node",
                                    kwargs={"report_dir": str(reports)})])
    # Training checks a fixed cluster can hold its workers; this one grows (as on `ray up`).
    monkeypatch.setenv("MLP_CLUSTER_AUTOSCALES", "1")

    watch = GpuDemandWatch()
    started = time.time()
    scaling = config.scaling
    meter = TrainingMeter(scaling.resources_per_worker, scaling.num_workers, scaling.use_gpu)
    try:
        with meter:      # what jobs/train.py (run_train_job) measures a training with
            result = train(config, platform)
        worker = json.loads(next(reports.glob("worker-*.json")).read_text())
        gpu_nodes = watch.of("gpu_worker")
        assert len(gpu_nodes) == 1, f"expected one GPU worker to appear, saw {gpu_nodes}"
        (gpu_node,) = gpu_nodes
        assert worker["node_id"] == gpu_node, "the Train worker did not run on the GPU worker"
        assert worker["resources"].get("GPU") == 1.0, worker["resources"]
        run = mlflow.MlflowClient(platform.mlflow_tracking_uri).get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.data.params["use_gpu"] == "True"

        wait_for(lambda: gpu_node not in nodes_of("gpu_worker"), 120,
                 "the idle GPU worker to be removed (idle_timeout_minutes: 0.25)")
        removed_at = time.time()
    finally:
        watch.stop()
    appeared_s = watch.first_seen[gpu_node] - watch.demand_at
    removed_s = min(removed_at, watch.last_seen[gpu_node] + 0.5) - worker["finished_at"]
    print(f"\nGPU worker up {appeared_s:.1f}s after Ray Train asked for a GPU "
          f"({watch.demand_at - started:.1f}s into train()); removed {removed_s:.1f}s after "
          "its training ended (idle timeout 15s)")
    assert removed_s >= 10, "the GPU worker went away before its idle timeout"
    assert nodes_of("cpu_worker"), "the CPU worker (min_workers: 1) must stay"

    # The cost, recorded now that the GPU node is gone (and no GPU node is alive to guess
    # from): GPU-hours of the accelerator type of the node the Train worker ran on.
    assert not nodes_of("gpu_worker")
    metrics = record_cost(platform, result.run_id, meter.usage(), job="train",
                          echo=lambda line: None)
    assert metrics is not None
    run = mlflow.MlflowClient(platform.mlflow_tracking_uri).get_run(result.run_id)
    kind = yaml_gpu_type()
    assert run.data.tags["cost.gpu_type"] == kind, run.data.tags
    assert meter.wall_s > 0
    assert run.data.metrics["cost.gpu_hours"] == pytest.approx(meter.wall_s / 3600)
    assert run.data.metrics[f"cost.gpu_hours.{kind}"] == run.data.metrics["cost.gpu_hours"]
