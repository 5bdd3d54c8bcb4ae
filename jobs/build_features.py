"""Ray job entrypoint: a project's data (if missing) -> its data contract -> its feature views
built with Ray Data -> materialized to the online store.

    ray job submit --working-dir . -- python jobs/build_features.py --project examples/fraud

Prints each new offline version and the online watermark; a successful build is recorded as an
MLflow run (tag mlplatform.job=build_features) with the feature versions and the job's cost.
Exits non-zero with a clear message when the data fails its contract (nothing is written then,
no MLflow run) or the project is wrong.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mlplatform.pipelines.job_cli import parser, start

    p = parser(__doc__.splitlines()[0], model=False)
    p.add_argument("--view", action="append", default=None,
                   help="a feature view to build (repeatable; default: all)")
    p.add_argument("--start", default=None, help="recompute only from this date (YYYY-MM-DD)")
    p.add_argument("--end", default=None, help="recompute only before this date (YYYY-MM-DD)")
    p.add_argument("--no-validate", action="store_true", help="skip the source's contract")
    p.add_argument("--buckets", type=int, default=None,
                   help="hash groups of entities (default: one per 20,000 source rows, 8-64)")
    p.add_argument("--no-materialize", action="store_true", help="build offline only")
    p.add_argument("--materialize-end", default=None,
                   help="materialize only rows before this time (default: all)")
    args = p.parse_args(argv)
    platform, project = start(args, "build_features")

    import time

    from mlplatform._ray import init_ray
    from mlplatform.cluster.cost import data_usage, record_job_run
    from mlplatform.errors import MLPlatformError
    from mlplatform.features import FeatureStore
    from mlplatform.pipelines import ensure_data

    if not project.uses_feature_store:
        print(f"error: project {project.name} ({project.file}) has no feature store to build "
              "(a tabular project)", file=sys.stderr)
        return 2
    store = FeatureStore(platform, project)
    try:
        init_ray(platform, log_to_driver=args.verbose)
        t0 = time.time()
        ensure_data(platform, project)
        if not args.no_validate:
            report = store.validate_source()
            if report is not None:
                print(f"data contract {report.contract!r}: {len(report.checks)} checks passed "
                      f"on {report.num_rows:,} rows")
        views = [store.repo.view(v) for v in args.view or
                 [v.name for v in store.repo.feature_views]]
        buckets = args.buckets or max(store.build_buckets(src) for src in
                                      {v.source for v in views})
        built = store.build(args.view, start=args.start, end=args.end, validate=False,
                            num_buckets=buckets)
        for name, m in built.items():
            print(f"built {name}: version {m.version} ({m.num_rows:,} rows) at {m.path}")
        if not args.no_materialize:
            for name, n in store.materialize_incremental(args.materialize_end,
                                                         args.view).items():
                print(f"materialized {name}: {n:,} entities, watermark "
                      f"{store.online.get_watermark(name)}")
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Only a build that succeeded gets an MLflow run: it carries the versions and the cost.
    record_job_run(platform, data_usage(time.time() - t0, buckets, since=t0),
                   job="build_features", params={"num_buckets": buckets},
                   tags={"mlplatform.feature_build": "true", "mlplatform.project": project.name,
                         **{f"feature_version.{n}": m.version for n, m in built.items()}},
                   experiment=project.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
