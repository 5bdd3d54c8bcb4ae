"""`serve run serve_configs/fraud.yaml` through the real Serve CLI answers HTTP."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from mlplatform.demo import to_instances
from tests.conftest import wait_for
from tests.integration.conftest import AUTH
from tests.projects import fraud_columns

REPO = Path(__file__).resolve().parents[2]
REQUEST_COLUMNS = fraud_columns()["request"]


def test_serve_run_cli_answers_http(spine, ray_cluster, tmp_path):
    import pandas as pd
    from ray import serve

    serve.shutdown()  # the CLI brings up Serve on this cluster itself
    log = tmp_path / "serve.log"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve"), "run", "serve_configs/fraud.yaml",
             "--address", ray_cluster["address"]],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            assert proc.poll() is None, log.read_text()[-3000:]
            return requests.get("http://127.0.0.1:8000/healthz", timeout=5).status_code == 200

        wait_for(healthy, 180, "serve run to answer /healthz",
                 ignore=(requests.RequestException,))
        raw = pd.read_parquet(spine.raw_path, columns=REQUEST_COLUMNS).tail(3)
        raw["event_timestamp"] = raw["event_timestamp"].map(lambda t: t.isoformat())
        r = requests.post("http://127.0.0.1:8000/predict",
                          json={"instances": to_instances(raw)}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == 3
        assert {p["model_version"] for p in body["predictions"]} == {
            spine.model_version.version}
        assert all(0.0 <= p["score"] <= 1.0 for p in body["predictions"])
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # serve run shuts Serve down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not _port_open(8000), 60, "the Serve proxy to stop")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
