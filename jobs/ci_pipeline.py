"""Ray job entrypoint of the model CI/CD pipeline for one model of a project: validate data ->
features -> train -> evaluate -> behavioural tests -> register -> alias challenger ->
(optional) promote to champion through the project's gates.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- \\
        python jobs/ci_pipeline.py --project examples/fraud [--model xgboost] [--promote]

Prints a line as each stage starts and ends, then the stage table. Re-submitting the same
project and data reuses the training run and the registered version (no duplicates). Exits
non-zero with a clear message on failure (2: invalid project or config, 1: a stage failed).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mlplatform.pipelines.job_cli import parser

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None,
                   help="a CI pipeline YAML (mlplatform.pipelines.CIConfig keys); the flags "
                   "override it")
    p.add_argument("--promote", action="store_true", default=None,
                   help="promote to champion through the project's gates")
    p.add_argument("--actor", default=None, help="who the audit trail names")
    p.add_argument("--reason", default=None, help="why, for the audit trail")
    args = p.parse_args(argv)

    from mlplatform._logs import setup_output
    from mlplatform._ray import init_ray
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.ci import CIConfig, ModelCIPipeline

    try:
        ci = CIConfig.from_yaml(args.config) if args.config else CIConfig()
        flags = {"project": args.project, "model": args.model, "promote": args.promote,
                 "actor": args.actor, "reason": args.reason}
        ci = ci.model_copy(update={k: v for k, v in flags.items() if v is not None})
        platform = PlatformConfig.load(args.platform_config)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ci_pipeline: Ray's logs: {setup_output(platform, 'ci_pipeline', args.verbose)}")
    try:
        init_ray(platform, log_to_driver=args.verbose)
        report = ModelCIPipeline(platform).run(ci)
    except MLPlatformError as exc:      # invalid project, gates or model name: nothing was run
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
