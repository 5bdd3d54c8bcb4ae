"""One real Ray cluster for the whole integration run, started as users start one.

``ray start --head --block`` runs in a child process with ``MLP_STORAGE_ROOT`` pointing at the
session's storage folder, so every Ray worker (Serve replicas, Train workers, job drivers)
resolves the same MLflow DB, exactly as ``MLP_*`` variables set on cluster nodes would.
Terminating the ``--block`` process stops only this cluster's processes.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
N_ROWS = 20_000
#: The Serve app's bearer tokens on the test cluster (set before `ray start`, as a user would).
SERVE_TOKEN, SERVE_ADMIN_TOKEN = "test-serve-token", "test-serve-admin-token"
os.environ["MLP_SERVE_TOKEN"], os.environ["MLP_SERVE_ADMIN_TOKEN"] = SERVE_TOKEN, SERVE_ADMIN_TOKEN
#: Credentials the session's S3 server accepts (any will do; it checks signatures, not users).
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "mlp-test", "AWS_SECRET_ACCESS_KEY": "mlp-test-secret",
                  "AWS_EC2_METADATA_DISABLED": "true"}
AUTH = {"Authorization": f"Bearer {SERVE_TOKEN}"}
#: The fraud example's Serve configs.
FRAUD_SERVE = REPO / "serve_configs" / "fraud.yaml"
FRAUD_AB = REPO / "serve_configs" / "fraud-ab.yaml"
ADMIN = {"Authorization": f"Bearer {SERVE_ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlp-storage")


@pytest.fixture(scope="session")
def platform(storage_root):
    """The session's platform config; its default project is the fraud example (the doors that
    take no project use it, as a user's $MLP_PROJECT would)."""
    from mlplatform.config import PlatformConfig
    from tests.projects import FRAUD

    return PlatformConfig(storage_root=storage_root, project=FRAUD)


@pytest.fixture(scope="package")
def ray_cluster(storage_root, tmp_path_factory):
    """Start a head node (8 logical CPUs) and connect this process to it.

    Package scope: it stops after the last test of tests/integration, so packages that come
    after in one pytest call (``pytest tests/integration tests/cluster``) can connect to their
    own clusters; session scope left this process connected, and their ``ray.init`` failed."""
    import ray

    from mlplatform.cluster.local import ensure_auth_token

    # `ray start --head` with token auth refuses to start without a token (it never makes one).
    ensure_auth_token(echo=lambda line: None)
    gcs_port, dash_port = free_port(), free_port()
    # Job drivers run `python` from the head's PATH: make it this virtualenv's, as it is for a
    # user who started Ray from an activated venv.
    # S3 credentials of the session's S3 server (`s3_server`), as an instance profile gives
    # cloud nodes theirs: Train workers write checkpoints there when a test asks for it.
    # Metrics: every Ray process exports its metrics every 2 s instead of Ray's 10 s, so the
    # tests that read the per-arm metrics off Prometheus wait one short cycle for a new series
    # (test cluster only: users' clusters keep Ray's default).
    env = {**os.environ, **S3_CREDENTIALS, "MLP_STORAGE_ROOT": str(storage_root),
           "RAY_AUTH_MODE": "token", "RAY_metrics_report_interval_ms": "2000",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = tmp_path_factory.mktemp("ray-head") / "head.log"
    log = open(log_path, "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=8",
         "--include-dashboard=true", f"--dashboard-port={dash_port}", "--disable-usage-stats",
         # The job agent's HTTP port too: its default (52365) collides with any other Ray on
         # the machine, and a head without its agent refuses every `ray job submit`.
         f"--dashboard-agent-listen-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{gcs_port}"
    try:
        wait_for(lambda: _started(head, log_path), 120, "the Ray head node", ignore=())
        ray.init(address=address, log_to_driver=False)
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dash_port}", "env": env}
    finally:
        ray.shutdown()
        if head.poll() is None:
            # SIGTERM: `ray start --block` stops its processes gracefully (30-40 s here, most
            # of it waiting on idle workers); after 2 s the rest of the group is killed (the
            # session is over: nothing of it is kept).
            os.killpg(head.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()


def _started(head: subprocess.Popen, log_path: Path) -> bool:
    if head.poll() is not None:
        raise RuntimeError(f"`ray start --head` exited with {head.returncode}:\n"
                           + log_path.read_text()[-3000:])
    return "Ray runtime started" in log_path.read_text()


def submit_job(ray_cluster, args: list[str], runtime_env: dict | None = None,
               timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir . [--runtime-env-json ..] -- <args>`` from the repo root.

    Ray's job server answers "No available agent to submit job, please try again later" while
    its per-node agent is not (yet, or momentarily) registered: that answer is retried, as the
    message asks; anything else is returned as is.
    """
    import json

    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"],
           "--working-dir", "."]
    if runtime_env:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    result: list[subprocess.CompletedProcess] = []

    def submitted() -> bool:
        out = subprocess.run([*cmd, "--", *args], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=timeout_s)
        result[:] = [out]
        return "No available agent to submit job" not in out.stdout + out.stderr

    wait_for(submitted, timeout_s, "the job server to accept the job", interval_s=2, ignore=())
    return result[0]


@pytest.fixture(scope="package")
def spine(ray_cluster, platform):
    """Run the whole spine once (small data) and share the result."""
    from mlplatform.pipelines import run_spine
    from mlplatform.training import TrainConfig
    from tests.projects import FRAUD

    return run_spine(platform, FRAUD, n_rows=N_ROWS, seed=11,
                     train_config=TrainConfig(num_boost_round=150, early_stopping_rounds=15))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A throw-away ``redis-server`` on a free port (no persistence), stopped after the session."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: run `make redis` (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = open(workdir / "redis.log", "w")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: "
                               + (workdir / "redis.log").read_text()[-2000:])
        return client.ping()

    try:
        try:
            wait_for(answers, 30, "redis-server to answer PING", interval_s=0.05,
                     ignore=(redis.ConnectionError,))
        except (RuntimeError, TimeoutError) as exc:
            pytest.skip(f"redis-server could not start: {exc}")
        yield url
    finally:
        client.close()
        _stop(proc)
        log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API server (moto's, over HTTP on a free port): ``s3_uri(bucket, prefix)`` gives
    the ``s3://`` URI that pyarrow, and so Ray Train, reach it with."""
    import requests

    port = free_port()
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: "
                               + log_path.read_text()[-2000:])
        return requests.get(f"http://127.0.0.1:{port}/", timeout=2).ok

    try:
        wait_for(answers, 60, "the S3 server to answer", interval_s=0.1,
                 ignore=(requests.ConnectionError,))
        yield lambda bucket, prefix: (f"s3://{bucket}/{prefix}?endpoint_override=127.0.0.1:{port}"
                                      "&scheme=http&region=us-east-1")
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_deploy(ray_cluster, path: Path) -> subprocess.CompletedProcess:
    """The real `serve deploy` CLI against the cluster's dashboard (token auth on)."""
    out = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address",
                          ray_cluster["dashboard"]], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_AUTH_MODE": "token"}, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return out

