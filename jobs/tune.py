"""Ray job entrypoint: a project's data (if missing) -> feature store -> training set -> Ray Tune
sweep of one of its models (its ``tune`` section; every trial an MLflow child run) -> the best
trial's model logged.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/tune.py --project examples/fraud [--model xgboost]

Prints the trials table, then the parent run id, the best trial's metric and the best model's
URI; exits 1 with a clear message when the sweep fails, 2 when the project is invalid.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mlplatform.pipelines.job_cli import parser, start

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    platform, project = start(args, "tune")

    from mlplatform._ray import init_ray
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.tune_job import run_tune_job, summary, tune_section

    try:
        metric = tune_section(project, args.model).metric
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        init_ray(platform, log_to_driver=args.verbose)
        df = run_tune_job(project, platform, args.model)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary(df, metric)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
