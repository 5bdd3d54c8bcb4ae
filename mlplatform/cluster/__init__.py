"""Clusters: launcher-YAML validation, the local fake autoscaling cluster, job submission and
per-job resource cost accounting (issue #7).

Modules:
  validate  validate_cluster_config(): Ray's own schema + mlplatform's rules for cluster/*.yaml
  local     up_local() / down_local(): cluster/local-fake.yaml on Ray's fake_multinode provider
  submit    submit_job(): `ray job submit --working-dir . -- python jobs/<job>.py`, token handled
  cost      resources a job held (CPU-/GPU-hours, wall time, estimated cost) -> MLflow; summaries
  job_usage a training job measured whole: its steps' Ray tasks + the Train reservation, and the
            accelerator type of the nodes its Train workers ran on
"""
