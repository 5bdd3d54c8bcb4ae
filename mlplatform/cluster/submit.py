"""``mlp submit``: what a user types by hand, with the token handled.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train.py --project examples/<name> --model xgboost

is the same as ``mlp submit train --project examples/<name> --model xgboost``: the folder
holding ``jobs/`` is uploaded as the job's working directory (with the project inside it), the
job's entrypoint is ``python jobs/<job>.py --project <dir> [--model <name>]``, the job id is
printed, its logs are followed until it ends, and the exit status is the job's (0: SUCCEEDED,
1: FAILED or STOPPED, with the job's error message).

It uses Ray's own :class:`ray.job_submission.JobSubmissionClient` in-process. Token auth: Ray
2.60 clusters refuse clients without the cluster's token. The token is read where Ray reads it
(``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``) and sent as
``Authorization: Bearer``; ``RAY_AUTH_MODE=token`` is set for the client. The token is made once
with ``ray get-auth-token --generate`` (``ray start --head`` refuses token auth without one); the
launcher YAMLs of ``cluster/`` ship the one made on the laptop to every node, or copy the head's
(``ray rsync-down cluster/aws-gpu.yaml ~/.ray/auth_token ~/.ray/auth_token``).

Example:
    >>> from mlplatform.cluster.submit import submit_job
    >>> code = submit_job("train", Path("examples/my_project"), model="xgboost")   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlplatform.errors import ConfigError, MLPlatformError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
JOBS_DIR = "jobs"
#: Ray's job server answers this while its per-node agent is not (yet) registered.
NO_AGENT = "No available agent to submit job"
TOKEN_HELP = (
    "The cluster's token is the one its head was started with (`ray get-auth-token --generate` "
    "makes one; the launcher YAMLs of cluster/ ship it to every node). Copy it to "
    "~/.ray/auth_token on "
    "this machine (e.g. `ray rsync-down cluster/aws-gpu.yaml ~/.ray/auth_token "
    "~/.ray/auth_token`), or set RAY_AUTH_TOKEN_PATH to a file holding it, or RAY_AUTH_TOKEN to "
    "the token itself.")


class SubmitError(MLPlatformError, RuntimeError):
    """The cluster could not be reached or refused the submission."""


def available_jobs(root: Path) -> list[str]:
    """The job names of ``<root>/jobs/*.py`` (``train``, ``tune``, ...)."""
    return sorted(p.stem for p in (root / JOBS_DIR).glob("*.py") if not p.stem.startswith("_"))


def project_root(cwd: Path | None = None) -> Path:
    """The folder uploaded as the job's working directory: the current one when it has a
    ``jobs/`` folder, else the checkout this package was imported from."""
    cwd = (cwd or Path.cwd()).resolve()
    for candidate in (cwd, Path(__file__).resolve().parents[2]):
        if (candidate / JOBS_DIR).is_dir():
            return candidate
    raise ConfigError(f"no {JOBS_DIR}/ folder in {cwd}: run `mlp submit` from the folder that "
                      "holds jobs/ (the platform's checkout)")


def find_token(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster token where Ray looks for it: ``$RAY_AUTH_TOKEN``, the file
    ``$RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``; None when none holds one."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    for path in (env.get("RAY_AUTH_TOKEN_PATH"), home / ".ray" / "auth_token"):
        p = Path(path).expanduser() if path else None
        if p is not None and p.is_file() and p.read_text().strip():
            return p.read_text().strip()
    return None


def dashboard_address(address: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The job server's URL as ``ray job submit`` picks it: ``address``, else
    ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``, else :data:`DEFAULT_ADDRESS`."""
    env = os.environ if env is None else env
    return (address or env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS")
            or DEFAULT_ADDRESS)


def plan(job: str, project: Path, root: Path, runtime_env: Mapping[str, Any] | None = None,
         env: Mapping[str, str] | None = None, model: str | None = None,
         extra: list[str] | None = None) -> tuple[str, dict[str, Any], list[str]]:
    """Check the job and its project; returns the entrypoint, the runtime env and warnings.

    Raises:
        ConfigError: Unknown job (the message lists the valid ones) or no project there.
    """
    jobs = available_jobs(root)
    if job not in jobs:
        raise ConfigError(f"unknown job {job!r}: valid jobs are {', '.join(jobs)} "
                          f"(the scripts in {root / JOBS_DIR})")
    project = Path(project).expanduser()
    folder = project if project.is_dir() else project.parent
    if not (folder / "mlplatform.yaml").is_file():
        raise ConfigError(f"no project at {project}: pass --project <folder holding "
                          "mlplatform.yaml> (e.g. examples/<name>)")
    warnings = []
    try:   # the job runs in the uploaded copy of `root`: name the project relative to it
        project_arg = folder.resolve().relative_to(root).as_posix()
    except ValueError:
        project_arg = str(folder.resolve())
        warnings.append(f"{folder} is outside the uploaded folder {root}: the job reads it at "
                        f"{project_arg}, which only works where the cluster shares this file "
                        "system; put the project under that folder to ship it with the job")
    renv = dict(runtime_env or {})
    renv.setdefault("working_dir", str(root))
    if env:
        renv["env_vars"] = {**renv.get("env_vars", {}), **env}
    args = ["python", f"{JOBS_DIR}/{job}.py", "--project", project_arg]
    if model:
        args += ["--model", model]
    entrypoint = shlex.join([*args, *(extra or [])])
    return entrypoint, renv, warnings


def submit_job(job: str, project: Path, address: str | None = None, *,
               model: str | None = None, extra: list[str] | None = None,
               runtime_env: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
               follow: bool = True, root: Path | None = None, submit_timeout_s: float = 120.0,
               echo: Callable[[str], object] = print) -> int:
    """Submit ``jobs/<job>.py --project <project> [--model <model>]`` to the cluster at
    ``address``.

    Args:
        job: A script name in ``jobs/`` (``train``, ``tune``, ``build_features``, ...).
        project: The project folder (shipped with the working directory when it is inside it).
        model: One of the project's models.
        extra: More arguments for the job script.
        address: The dashboard URL (default ``$RAY_API_SERVER_ADDRESS``, ``$RAY_ADDRESS``,
            then ``http://127.0.0.1:8265``).
        runtime_env: Extra runtime env (``working_dir`` defaults to the project folder).
        env: Environment variables for the job (``runtime_env.env_vars``).
        follow: Print the job's logs until it ends and return its status; False: return 0
            once it is submitted.
        submit_timeout_s: How long to retry while the job server has no agent yet.

    Returns:
        0 when the job succeeded (or was submitted, without ``follow``), 1 when it failed or
        was stopped (its error message is printed).

    Raises:
        ConfigError: Unknown job, no project there, or no token.
        SubmitError: The cluster cannot be reached or refused the job.
    """
    root = (root or project_root()).resolve()
    entrypoint, renv, warnings = plan(job, project, root, runtime_env, env, model, extra)
    for w in warnings:
        echo(f"warning: {w}")
    headers = {}
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled":
        os.environ.setdefault("RAY_AUTH_MODE", "token")   # read by Ray when it is imported
        token = find_token()
        if token is None:
            raise ConfigError("no Ray auth token: RAY_AUTH_MODE=token but RAY_AUTH_TOKEN is "
                              "unset and ~/.ray/auth_token does not exist. " + TOKEN_HELP)
        headers["Authorization"] = f"Bearer {token}"
    address = dashboard_address(address)
    client = _client(address, headers)
    echo(f"submitting {entrypoint} to {address} (working dir {renv['working_dir']})")
    job_id = _submit(client, entrypoint, renv, job, submit_timeout_s, echo)
    echo(f"job_id: {job_id}")
    if not follow:
        echo(f"follow it with: ray job logs --follow --address {address} {job_id}")
        return 0
    try:
        _follow(client, job_id, echo)
    except KeyboardInterrupt:
        echo(f"stopped following; the job keeps running (ray job stop --address {address} "
             f"{job_id})")
        return 130
    info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        echo(f"job {job_id} succeeded")
        return 0
    print(f"error: job {job_id} {status.lower()}"
          + (f" (driver exit code {info.driver_exit_code})" if info.driver_exit_code else "")
          + f": {_short(info.message or 'no message')}", file=sys.stderr)
    return 1


def _short(message: str, tail: int = 3000) -> str:
    """Ray's failure message ends with up to 20,000 characters of the logs just followed: keep
    its first line and the end, where the error is."""
    if len(message) <= tail:
        return message
    first, _, rest = message.partition("\n")
    return f"{first}\n...\n{rest[-tail:]}"


def _client(address: str, headers: dict[str, str]):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        raise SubmitError(f"the cluster at {address} refused the token: {exc}\n{TOKEN_HELP}"
                          ) from None
    except ConnectionError as exc:
        raise SubmitError(f"cannot reach the Ray dashboard at {address} ({exc}). Is the "
                          "cluster up? For a remote cluster, forward its dashboard with "
                          "`ray dashboard cluster/aws-gpu.yaml` and use "
                          f"{DEFAULT_ADDRESS}") from None


def _submit(client, entrypoint: str, runtime_env: dict, job: str, timeout_s: float,
            echo: Callable[[str], object]) -> str:
    """``client.submit_job``, retried while the job server answers "no available agent"."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                     metadata={"mlplatform.job": job})
        except RuntimeError as exc:
            if NO_AGENT not in str(exc):
                raise SubmitError(f"the job server refused the job: {exc}") from None
            if time.monotonic() > deadline:
                raise SubmitError(f"the job server had no agent for {timeout_s:.0f}s ({exc}); "
                                  "is the head node's dashboard agent running?") from None
            if not told:
                echo("the job server has no agent yet; retrying ...")
                told = True
        time.sleep(2)   # the poll interval of the retry the server's answer asks for


def _follow(client, job_id: str, echo: Callable[[str], object]) -> None:
    """Print the job's logs until it ends; if the log stream breaks, wait for the end."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            if lines:
                echo(lines.rstrip("\n"))

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as exc:   # e.g. the websocket closed abnormally
        echo(f"warning: log stream ended ({exc}); waiting for the job to finish")
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while client.get_job_status(job_id) not in terminal:
        time.sleep(2)   # poll interval: the status updates right after the driver exits
