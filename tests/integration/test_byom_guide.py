"""The "Bring your own model" guide (docs/byom.md), run as written: ``mlp init`` -> example
data -> ``mlp train`` -> ``mlp evaluate`` -> ``mlp registry promote`` through the gates ->
``mlp serve deploy`` -> ``curl`` -> an ONNX model trained elsewhere, imported.

Every fenced ``bash`` block of the page runs, line by line, in order, in a fresh folder, and
every ``python`` block is written to the file its first line names. The blocks marked
``<!-- byom-test: setup -->`` start a cluster: the test gives the commands the session's
cluster instead, through the variables those blocks export (MLP_STORAGE_ROOT, MLP_SERVE_TOKEN,
MLP_RAY_ADDRESS), and moves the endpoint from port 8000 to a free one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.conftest import REPO, SERVE_TOKEN

GUIDE = REPO / "docs" / "byom.md"
SETUP = "<!-- byom-test: setup -->"
BIN = Path(sys.executable).parent


def guide_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced bash/python block that is not marked setup."""
    out = []
    for m in re.finditer(r"(?P<before>[^\n]*)\n```(?P<lang>\w+)\n(?P<body>.*?)\n```", text, re.S):
        if m["lang"] in ("bash", "python") and m["before"].strip() != SETUP:
            out.append((m["lang"], m["body"]))
    return out


def commands(body: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line for line in joined.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def test_the_guide_blocks_are_what_the_test_runs():
    """The parser itself: setup blocks are left out, continuations joined."""
    blocks = guide_blocks(GUIDE.read_text())
    everything = "\n".join(body for _, body in blocks)
    assert "ray start" not in everything and "mlp init churn" in everything
    assert [c for lang, b in blocks if lang == "bash" for c in commands(b)
            if c.startswith("curl")][0].endswith("\"category\": \"d\"}'")


@pytest.fixture(scope="module")
def guide_run(ray_cluster, storage_root, tmp_path_factory):
    from ray import serve

    serve.shutdown()
    port = free_port()
    env = {**os.environ, "MLP_STORAGE_ROOT": str(storage_root), "MLP_SERVE_TOKEN": SERVE_TOKEN,
           "MLP_RAY_ADDRESS": ray_cluster["address"], "RAY_ADDRESS": ray_cluster["address"],
           "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLP_PROJECT", None)
    cwd = tmp_path_factory.mktemp("byom")
    ran: list[tuple[str, subprocess.CompletedProcess]] = []
    for lang, body in guide_blocks(GUIDE.read_text()):
        if lang == "python":
            name = re.match(r"# (\S+\.py):", body).group(1)
            (cwd / name).write_text(body + "\n")
            continue
        for command in commands(body):
            if command.startswith("cd "):
                cwd = cwd / shlex.split(command)[1]
                continue
            command = command.replace("localhost:8000", f"localhost:{port}")
            out = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                                 text=True, timeout=600)
            ran.append((command, out))
            if out.returncode != 0:
                return ran        # the test names the command that failed
            if command.startswith("mlp init"):
                serve_yaml = cwd / shlex.split(command)[2] / "serve.yaml"
                serve_yaml.write_text(serve_yaml.read_text().replace("port: 8000",
                                                                     f"port: {port}"))
    yield ran
    serve.shutdown()


def _find(ran, prefix: str) -> subprocess.CompletedProcess:
    for command, out in ran:
        if command.startswith(prefix):
            return out
    raise AssertionError(f"the guide ran no `{prefix}`; it ran: {[c for c, _ in ran]}")


def test_every_guide_command_succeeds(guide_run):
    failed = [(c, o.stdout[-2000:] + o.stderr[-3000:]) for c, o in guide_run if o.returncode]
    assert not failed, f"a command of docs/byom.md failed: {failed}"
    assert len(guide_run) >= 10


def test_the_guide_trains_gates_serves_and_imports(guide_run, platform):
    from mlplatform.registry import ModelRegistry

    assert "registered: models:/churn/1 (aliases @challenger)" in _find(guide_run,
                                                                        "mlp train").stdout
    evaluated = _find(guide_run, "mlp evaluate").stdout
    assert "churn v1 (xgboost, binary)" in evaluated and "auc_pr" in evaluated
    promote = _find(guide_run, "mlp registry promote").stdout
    assert "ACCEPTED" in promote and "PASS min_metric:auc_roc" in promote
    assert "no current champion" in promote
    predict, bad = [o for c, o in guide_run if c.startswith("curl")]
    answer = json.loads(predict.stdout)
    assert answer["decision"] in ("normal", "flagged") and 0 <= answer["score"] <= 1
    assert (answer["model_name"], answer["model_version"]) == ("churn", "1")
    rejected = json.loads(bad.stdout)
    assert {e["field"] for e in rejected["errors"]} >= {"value", "category"}
    registry = ModelRegistry(platform)
    assert registry.resolve("churn@champion").version == "1"
    imported = registry.resolve("churn@candidate")
    assert imported.version == "2" and "models:/churn/2" in _find(
        guide_run, "mlp registry import").stdout
    run = registry._client.get_run(imported.run_id)
    assert run.data.tags["mlplatform.trainer"] == "onnx" and "val_auc_pr" in run.data.metrics
    listed = _find(guide_run, "mlp registry list").stdout
    assert re.search(r"^v1\s.*@champion", listed, re.M), listed
    assert re.search(r"^v2\s.*@candidate", listed, re.M), listed


def test_the_tabular_template_trains_and_passes_its_gates(ray_cluster, platform, tmp_path):
    """The other template, as scaffolded: its example table, a training job, its gates. (Its
    serving path is the wine example's: request fields are the model inputs.)"""
    from mlplatform.pipelines import load
    from mlplatform.pipelines.train_job import run_train_job
    from mlplatform.project.scaffold import scaffold
    from mlplatform.registry import ModelRegistry

    folder = tmp_path / "rows"
    scaffold(folder, "tabular")
    cfg = platform.model_copy(update={"project": folder})
    result, mv = run_train_job(load(folder, cfg), cfg, echo=lambda _l: None)
    assert mv.name == "rows" and list(mv.aliases) == ["challenger"]
    assert result.metrics["val_auc_roc"] > 0.6
    decision = ModelRegistry(cfg).promote("rows", mv.version)     # the project its run names
    assert decision.accepted, decision.summary()
    assert {g.name for g in decision.gates} >= {"min_metric:auc_roc", "data_validation",
                                                "signature"}
