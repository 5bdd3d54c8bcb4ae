"""Ray job entrypoint: data (if missing) -> feature store -> training set -> Ray Tune sweep
(every trial an MLflow child run) -> the best trial's model logged.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/tune.py --config jobs/configs/fraud_tune.yaml

Prints the trials table, then the parent run id, the best trial's metric and the best model's
URI; exits 1 with a clear message when the sweep fails, 2 when the config is invalid.
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
    from mlplatform.pipelines.tune_job import TuneJobConfig, run_tune_job, summary

    try:
        job = TuneJobConfig.from_yaml(args.config)   # fails before any data or MLflow work
        platform = PlatformConfig.load(args.platform_config)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        init_ray(platform)
        df = run_tune_job(job, platform)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary(df, job.tune.metric)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
