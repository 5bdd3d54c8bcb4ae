"""Output people can read: the jobs and ``mlp`` print their steps, progress bars and results;
Ray's and MLflow's own INFO lines go to a log file whose path is printed.

:func:`setup_output` routes the driver's library loggers (``ray``, ``ray.data``, ``ray.train``,
``ray.tune``, ``ray.serve``, ``mlflow``, ...) to ``<storage_root>/logs/<job>-<time>.log``, and
keeps only their warnings and errors on the console. Worker processes' output (Serve's
controller, Train's controller, Data's tasks) stays out of the console when Ray is started with
``log_to_driver=False``, which the jobs do unless ``--verbose``; it is in Ray's session logs
(``/tmp/ray/session_latest/logs``) either way. With ``verbose`` everything shows as before.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

#: The libraries whose INFO lines are noise on a console.
NOISY = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "ray.air", "mlflow",
         "alembic", "urllib3", "filelock", "matplotlib", "shap", "py.warnings")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_output(platform, job: str, verbose: bool = False) -> Path:
    """Send the library loggers to a log file (and, unless ``verbose``, only their warnings to
    the console); returns the log file's path.

    Safe to call again (the file handler is added once per logger).
    """
    folder = platform.path("logs")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    quiet_libraries(path, verbose)
    return path


def quiet_libraries(path: Path, verbose: bool = False) -> None:
    """Route :data:`NOISY` loggers to ``path``; their console handlers keep WARNING and up."""
    # Ray Data and MLflow install their console handlers when imported (MLflow replaces the
    # handlers of its logger then): import them first, then quiet them.
    with contextlib.suppress(ImportError):
        import ray.data  # noqa: F401
    with contextlib.suppress(ImportError):
        import mlflow  # noqa: F401
    if not verbose and not sys.stderr.isatty():
        # Off a terminal (CI logs, `ray job submit` logs, pipes) every refresh of Ray Data's
        # tqdm bars is a new line ("Parquet dataset sampling" per read); its progress is in the
        # log file as Ray Data's own INFO lines.
        with contextlib.suppress(ImportError):
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            for h in logging.getLogger("ray.data").handlers:
                if not isinstance(h, logging.FileHandler):
                    h.addFilter(_not_the_bars_notice)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    handler.set_name("mlplatform-log-file")
    for name in NOISY:
        logger = logging.getLogger(name)
        if not any(h.get_name() == "mlplatform-log-file" for h in logger.handlers):
            logger.addHandler(handler)
        if logger.level in (logging.NOTSET,) or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        if verbose:
            continue
        for h in logger.handlers:
            if h is not handler and isinstance(h, logging.StreamHandler) \
                    and not isinstance(h, logging.FileHandler):
                h.setLevel(max(h.level, logging.WARNING))
    if not verbose:
        # Loggers without a console handler of their own print through the root's.
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if isinstance(h, logging.FileHandler)] or []


def _not_the_bars_notice(record: logging.LogRecord) -> bool:
    """Drop Ray Data's notice that its progress bars are off (we turned them off)."""
    return not str(record.msg).startswith("Progress bars disabled")
