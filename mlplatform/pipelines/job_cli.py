"""What the ``jobs/*.py`` entrypoints share: their common arguments and the one way they load
a project (exit 2 naming the file and key when it is invalid, before any Ray or MLflow work).

    python jobs/<job>.py --project <dir> [--model <name>] [--platform-config <yaml>] [--verbose]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser(description: str, model: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``--project``, ``--model``, ``--platform-config``, ``--verbose``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--project", type=Path, default=None,
                   help="the project folder (holding mlplatform.yaml; default: $MLP_PROJECT, "
                   "else ./mlplatform.yaml)")
    if model:
        p.add_argument("--model", default=None,
                       help="one of the project's `models` (default: its first)")
    p.add_argument("--platform-config", type=Path, default=None,
                   help="PlatformConfig YAML (default: $MLP_CONFIG / MLP_* / defaults)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's own logs here instead of only in the log file")
    return p


def start(args: argparse.Namespace, job: str):
    """The platform config and the checked project of a job, with its output set up (Ray's
    own logs in a log file whose path is printed; ``--verbose``: here too).

    Exits:
        2: The platform config or the project is invalid (the message names the key).
    """
    from mlplatform._logs import setup_output
    from mlplatform.config import PlatformConfig
    from mlplatform.errors import MLPlatformError
    from mlplatform.pipelines.steps import load

    try:
        platform = PlatformConfig.load(args.platform_config,
                                       overrides={"project": args.project} if args.project
                                       else None)
        project = load(args.project, platform)
    except MLPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    log = setup_output(platform, job, verbose=args.verbose)
    print(f"{job}: project {project.name} ({project.file}); Ray's logs: {log}")
    return platform, project
