"""Ray job entrypoint of the model CI/CD pipeline: validate data -> features -> train ->
evaluate -> behavioural tests -> register -> alias challenger -> (optional) promote to champion.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/ci_pipeline.py --config jobs/configs/ci_pipeline.yaml

Prints a line as each stage starts and ends, then the stage table. Re-submitting the same
config reuses the training run and the registered version (no duplicates). Exits non-zero with
a clear message on failure (2: invalid config, 1: a stage failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path,
                        help="CI pipeline YAML (jobs/configs/ci_pipeline.yaml)")
    parser.add_argument("--platform-config", type=Path, default=None,
                        help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults)")
    args = parser.parse_args(argv)

    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.ci import CIConfig, ModelCIPipeline

    try:
        ci = CIConfig.from_yaml(args.config)
        platform = PlatformConfig.load(args.platform_config)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        init_ray(platform)
        report = ModelCIPipeline(platform).run(ci)
    except MLPlatformError as exc:      # invalid gates or model name: nothing was run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if report.run_id:
        print(f"run_id: {report.run_id}")
    if report.version:
        print(f"registered: models:/{report.model_name}/{report.version}")
    if not report.ok:
        failed = report.failed_stage
        print(f"error: the pipeline failed at stage '{failed.name}': {failed.message}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
