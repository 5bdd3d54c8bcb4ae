"""Ray job entrypoint: a project's data (if missing) -> contract gate -> feature store ->
training set -> Ray Train (XGBoost or PyTorch, by the model config's ``train.model``) -> MLflow
-> registry.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/train.py --project examples/fraud [--model xgboost]

Prints the MLflow run id and model URI at the end; exits non-zero with a clear message on
failure (2: invalid project or config, 1: the job failed).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mlplatform.pipelines.job_cli import parser, start

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    platform, project = start(args, "train")

    from mlplatform._ray import init_ray
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.train_job import run_train_job

    try:
        init_ray(platform, log_to_driver=args.verbose)
        result, mv = run_train_job(project, platform, args.model)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"metrics: {result.metrics}")
    print(f"run_id: {result.run_id}")
    print(f"model_uri: {result.model_uri}")
    print(f"registered: models:/{mv.name}/{mv.version}"
          + (f" (aliases {', '.join('@' + a for a in mv.aliases)})" if mv.aliases else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
