"""Ray job entrypoint: validate the source -> build feature views -> materialize online.

    ray job submit --working-dir . -- python jobs/build_features.py \
        --config jobs/configs/build_features.yaml

Prints each new offline version and the online watermark; a successful build is recorded as an
MLflow run (tag mlplatform.job=build_features) with the feature versions and the job's cost.
Exits non-zero with a clear message when the data fails its contract (nothing is written then,
no MLflow run) or the config is wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generate_rows: NonNegativeInt = Field(0, description="Rows to generate if no raw data (0: no).")
    seed: int = 0


class BuildSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    views: list[str] | None = None
    start: str | None = None
    end: str | None = None
    validate_source: bool = Field(True, alias="validate")
    num_buckets: PositiveInt | None = None    # None: FeatureStore.build_buckets (from the size)


class MaterializeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    end: str | None = None


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    definitions: Path | None = None
    data: DataSection = Field(default_factory=DataSection)
    build: BuildSection = Field(default_factory=BuildSection)
    materialize: MaterializeSection = Field(default_factory=MaterializeSection)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="job YAML (jobs/configs/*.yaml)")
    parser.add_argument("--platform-config", type=Path, default=None,
                        help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults)")
    args = parser.parse_args(argv)

    from mlplatform._ray import init_ray
    from mlplatform.cluster.cost import data_usage, record_job_run
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.features import FeatureStore
    from mlplatform.pipelines import ensure_raw_data

    try:
        job = JobConfig(**(yaml.safe_load(args.config.read_text()) or {}))
        platform = PlatformConfig.load(args.platform_config)
        store = FeatureStore(platform, repo=job.definitions)
    except (OSError, ValidationError, MLPlatformError) as exc:
        print(f"error: invalid job config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        init_ray(platform)
        t0 = time.time()
        ensure_raw_data(platform, job.data.generate_rows, job.data.seed)
        if job.build.validate_source:
            report = store.validate_source()
            if report is not None:
                print(f"data contract {report.contract!r}: {len(report.checks)} checks passed "
                      f"on {report.num_rows:,} rows")
        views = [store.repo.view(v) for v in job.build.views or
                 [v.name for v in store.repo.feature_views]]
        buckets = job.build.num_buckets or max(store.build_buckets(src) for src in
                                               {v.source for v in views})
        built = store.build(job.build.views, start=job.build.start, end=job.build.end,
                            validate=False, num_buckets=buckets)
        for name, m in built.items():
            print(f"built {name}: version {m.version} ({m.num_rows:,} rows) at {m.path}")
        if job.materialize.enabled:
            for name, n in store.materialize_incremental(job.materialize.end,
                                                         job.build.views).items():
                print(f"materialized {name}: {n:,} entities, watermark "
                      f"{store.online.get_watermark(name)}")
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Only a build that succeeded gets an MLflow run: it carries the versions and the cost.
    record_job_run(platform, data_usage(time.time() - t0, buckets, since=t0),
                   job="build_features", params={"num_buckets": buckets},
                   tags={"mlplatform.feature_build": "true",
                         **{f"feature_version.{n}": m.version for n, m in built.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
