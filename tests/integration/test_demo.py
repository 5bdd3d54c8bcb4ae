"""`mlp demo` end to end on the shared cluster: every step, real HTTP, summary, clean shutdown."""

import pytest
import requests


def test_demo_runs_end_to_end_and_shuts_serve_down(ray_cluster, tmp_path, capsys):
    from mlplatform.config import PlatformConfig
    from mlplatform.demo import run_demo
    from tests.projects import FRAUD

    cfg = PlatformConfig(storage_root=tmp_path / "demo", experiment_name="demo-test",
                         project=FRAUD)
    summary = run_demo(cfg, n_rows=10_000, seed=3)

    assert summary["champion"] == "fraud version 1"
    assert summary["mlflow_tracking_uri"] == f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}"
    assert (tmp_path / "demo" / "mlflow.db").is_file()
    preds = summary["predictions"]
    assert len(preds) == 6 and {p["label"] for p in preds} == {0, 1}
    assert summary["project"] == "fraud" and {p["decision"] for p in preds} <= {"fraud", "legit"}
    assert all(0.0 <= p["score"] <= 1.0 and p["model_version"] == "1" for p in preds)
    assert summary["bad_request_status"] == 422
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    for expected in ("[6/6]", "Live predictions", "MLflow database", "Champion", "MLflow UI",
                     "Ray dashboard", "Serve shut down cleanly", "Logs"):
        assert expected in out
    # Quiet: Ray's and MLflow's own INFO lines went to the log file, not here.
    assert "INFO streaming_executor" not in out + err
    assert "Creating initial MLflow database" not in out + err
    assert "Parquet dataset sampling" not in out + err      # no tqdm line per refresh off a TTY
    assert len((out + err).splitlines()) < 80, out + err
    assert "streaming_executor" in open(summary["log_file"]).read()
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:8000/healthz", timeout=5)
