"""Ray job entrypoint: data (if missing) -> contract gate -> feature store -> training set ->
Ray Train (XGBoost or PyTorch, by the config's ``train.model``) -> MLflow -> registry.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/train.py --config jobs/configs/fraud_xgb.yaml

Prints the MLflow run id and model URI at the end; exits non-zero with a clear message on
failure (2: invalid config, 1: the job failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="job YAML (jobs/configs/*.yaml)")
    parser.add_argument("--platform-config", type=Path, default=None,
                        help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults)")
    args = parser.parse_args(argv)

    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.train_job import TrainJobConfig, run_train_job

    try:
        job = TrainJobConfig.from_yaml(args.config)
        platform = PlatformConfig.load(args.platform_config)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        init_ray(platform)
        result, mv = run_train_job(job, platform)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"metrics: {result.metrics}")
    print(f"run_id: {result.run_id}")
    print(f"model_uri: {result.model_uri}")
    print(f"registered: models:/{mv.name}/{mv.version}"
          + (f" (alias @{job.registration.alias})" if job.registration.alias else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
