"""The registry on real MLflow (the embedded SQLite store): promotion gates with real models and
a real holdout, rollback and history, approvals, fairness, racing promotions from several
processes, the hash-chained audit trail, idempotent registration and path safety."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from mlplatform.errors import ModelNotFound, PromotionRefused, RegistryError

NAME = "fraud-gates"
ROOT = Path(__file__).resolve().parents[2]

GATES = {"min_metrics": {"auc_pr": 0.3}, "champion": {"metric": "auc_pr", "tolerance": 0.01},
         "behavioural": True, "data_validation": True, "signature": True}


@pytest.fixture(scope="module")
def candidates(spine, platform, tmp_path_factory):
    """Real models on the spine's data: the spine's own (strong), a weak one, one trained
    without an input, and one trained on labels that fall with the amount (misbehaving)."""
    import shutil

    from mlplatform.training import TrainConfig, train_xgboost
    from tests.projects import fraud_columns

    FEATURE_COLUMNS = fraud_columns()["inputs"]

    base = {"num_boost_round": 30, "early_stopping_rounds": 0, "scaling": {"num_workers": 1}}
    frame = pd.read_parquet(spine.features_path)
    # Fraud that "prefers" small amounts: a model that learns it lowers scores as amounts grow.
    frame["is_fraud"] = (frame["amount"] < frame["amount"].quantile(0.05)).astype("int64")
    flipped = tmp_path_factory.mktemp("flipped") / "training_set"
    flipped.mkdir()
    frame.to_parquet(flipped / "part-0.parquet")
    shutil.copy(spine.features_path / "_training_set.json", flipped)
    configs = {
        "weak": TrainConfig(
            features_path=spine.features_path, run_name="weak", **{**base, "num_boost_round": 2},
            params={"objective": "binary:logistic", "eval_metric": ["aucpr"], "max_depth": 1,
                    "eta": 0.01, "tree_method": "hist"}),
        "fewer": TrainConfig(
            features_path=spine.features_path, run_name="fewer-inputs",
            feature_columns=[c for c in FEATURE_COLUMNS if c != "device_type_code"], **base),
        "misbehaving": TrainConfig(features_path=flipped, run_name="misbehaving", **base)}
    # Three small one-worker runs at once: each is mostly Ray Train's start-up, which overlaps.
    with ThreadPoolExecutor(len(configs)) as pool:
        runs = {k: pool.submit(train_xgboost, c, platform) for k, c in configs.items()}
        return {"strong": spine.train.run_id, **{k: f.result().run_id for k, f in runs.items()}}


@pytest.fixture(scope="module")
def registry(platform):
    from mlplatform.registry import ModelRegistry

    return ModelRegistry(platform)


@pytest.fixture(scope="module")
def versions(registry, candidates):
    """weak -> v1 (champion), strong -> v2, fewer -> v3, misbehaving -> v4."""
    out = {k: registry.register(candidates[k], NAME, reason="test").version
           for k in ("weak", "strong", "fewer", "misbehaving")}
    registry.set_alias(NAME, "champion", out["weak"], actor="setup", reason="first champion")
    return out


def _failed(exc) -> dict:
    return {g.name: g for g in exc.value.decision.failed}


def test_registration_is_idempotent_and_records_lineage(registry, versions, candidates, spine):
    again = registry.register(f"runs:/{candidates['strong']}/model", NAME)
    assert again.version == versions["strong"]
    assert len([v for v in registry.list_versions(NAME) if v.run_id == candidates["strong"]]) == 1
    tags = registry.resolve(f"{NAME}/{versions['strong']}").tags
    assert float(tags["metric.val_auc_pr"]) == pytest.approx(spine.train.metrics["val_auc_pr"])
    assert {k.split(".", 1)[1] for k in tags if k.startswith("feature_version.")} \
        == set(spine.feature_versions)
    assert "device_type_code" in json.loads(tags["signature.inputs"])
    assert tags["run_id"] == candidates["strong"]
    assert any(k.startswith("audit.") for k in tags)


def test_a_better_challenger_is_promoted_with_every_gate_reported(registry, versions):
    decision = registry.promote(NAME, versions["strong"], gates=GATES, actor="ci",
                                reason="better auc_pr")
    assert decision.accepted and decision.from_version == versions["weak"]
    by_name = {g.name: g for g in decision.gates}
    assert set(by_name) == {"min_metric:auc_pr", "no_worse_than_champion:auc_pr",
                            "behavioural", "data_validation", "signature"}
    champ = by_name["no_worse_than_champion:auc_pr"].numbers
    assert champ["candidate"] > champ["champion"] and champ["champion_version"] == versions["weak"]
    assert registry.resolve(f"{NAME}@champion").version == versions["strong"]


def test_a_worse_model_is_refused_and_nothing_moves(registry, versions):
    with pytest.raises(PromotionRefused) as exc:
        registry.promote(NAME, versions["weak"], gates=GATES, actor="ci")
    failed = _failed(exc)
    assert "no_worse_than_champion:auc_pr" in failed, exc.value
    drop = failed["no_worse_than_champion:auc_pr"].numbers["drop"]
    assert drop > 0.01 and f"{drop:.4f}" in str(exc.value)   # the numbers are in the message
    assert registry.resolve(f"{NAME}@champion").version == versions["strong"]
    last = registry.history(NAME, "champion")[-1]
    assert (last.outcome, last.to_version, last.from_version) == \
        ("refused", versions["weak"], versions["strong"])


def test_failed_behavioural_checks_refuse_the_promotion(registry, versions):
    with pytest.raises(PromotionRefused) as exc:
        registry.promote(NAME, versions["misbehaving"], gates={**GATES, "champion": None,
                                                               "min_metrics": {}})
    failed = _failed(exc)
    assert set(failed) == {"behavioural"}
    assert "directional_amount" in failed["behavioural"].message
    assert registry.resolve(f"{NAME}@champion").version == versions["strong"]


def test_a_signature_that_lost_a_column_is_refused(registry, versions):
    with pytest.raises(PromotionRefused) as exc:
        registry.promote(NAME, versions["fewer"], gates={"signature": True})
    gate = _failed(exc)["signature"]
    assert gate.numbers["missing"] == ["device_type_code"]
    assert registry.resolve(f"{NAME}@champion").version == versions["strong"]


def test_approvals_from_distinct_approvers_are_required(registry, versions):
    gates = {"signature": True, "approvals": {"required": 2}}
    registry.set_alias(NAME, "staging", versions["weak"])
    with pytest.raises(PromotionRefused, match="0 of 2"):
        registry.promote(NAME, versions["fewer"], to="champion", gates={**gates,
                                                                        "signature": False})
    registry.approve(NAME, versions["strong"], "alice", "looked at the card")
    registry.approve(NAME, versions["strong"], "alice", "twice does not count twice")
    registry.rollback(NAME, "champion", to_version=versions["weak"], reason="make room")
    with pytest.raises(PromotionRefused, match="1 of 2"):
        registry.promote(NAME, versions["strong"], gates=gates)
    registry.approve(NAME, versions["strong"], "bob")
    decision = registry.promote(NAME, versions["strong"], gates=gates)
    assert decision.accepted
    assert {g.name: g for g in decision.gates}["approvals"].numbers["approvers"] == ["alice", "bob"]
    # Approvals only bind the aliases they are configured for.
    assert registry.promote(NAME, versions["fewer"], to="staging",
                            gates={"signature": False, "approvals": {"required": 2}}).accepted


def test_the_fairness_gate_reports_the_gap_across_slices(registry, versions):
    registry.rollback(NAME, "champion", to_version=versions["weak"])
    with pytest.raises(PromotionRefused) as exc:
        registry.promote(NAME, versions["strong"], gates={"signature": False, "fairness": [
            {"metric": "recall", "slice": "country", "max_gap": 0.0, "min_rows": 100,
             "min_positives": 3}]})
    gate = _failed(exc)["fairness:recall_by_country"]
    assert gate.numbers["gap"] > 0 and len(gate.numbers["by_slice"]) >= 2
    assert registry.resolve(f"{NAME}@champion").version == versions["weak"]


def test_rollback_restores_the_previous_champion_and_history_shows_it(registry, versions):
    from mlplatform.registry import ModelRegistry

    reg = ModelRegistry(registry.config)
    name = "fraud-rollback"
    runs = [reg.resolve(f"{NAME}/{versions[k]}").run_id for k in ("weak", "strong")]
    v = [reg.register(run, name).version for run in runs]
    with pytest.raises(ModelNotFound, match="no alias 'champion'"):
        reg.rollback(name)
    reg.set_alias(name, "champion", v[0], actor="alice", reason="first")
    with pytest.raises(RegistryError, match="no previous holder"):
        reg.rollback(name)
    reg.promote(name, v[1], gates={"signature": True}, actor="ci", reason="new model")
    move = reg.rollback(name, actor="oncall", reason="alerts firing")
    assert reg.resolve(f"{name}@champion").version == v[0]
    assert (move.from_version, move.to_version, move.actor) == (v[1], v[0], "oncall")
    steps = [(m.action, m.from_version, m.to_version, m.actor, m.outcome)
             for m in reg.history(name, "champion")]
    assert steps == [("alias_set", None, v[0], "alice", "ok"),
                     ("promote", v[0], v[1], "ci", "accepted"),
                     ("rollback", v[1], v[0], "oncall", "ok")]
    with pytest.raises(RegistryError, match="no previous holder"):
        reg.rollback(name)       # back at the first holder: nothing before it


RACER = """
import sys
from mlplatform.config import PlatformConfig
from mlplatform.errors import PromotionRefused
from mlplatform.registry import ModelRegistry
reg = ModelRegistry(PlatformConfig(storage_root=sys.argv[1]))
try:
    reg.promote(sys.argv[2], sys.argv[3], gates={"signature": True,
                "min_metrics": {"val_auc_pr": float(sys.argv[4])}}, actor="racer-" + sys.argv[3])
    print("accepted")
except PromotionRefused:
    print("refused")
"""


def test_racing_promotions_leave_one_holder_and_a_complete_history(registry, versions, platform):
    name = "fraud-race"
    runs = [registry.resolve(f"{NAME}/{versions[k]}").run_id for k in ("weak", "strong")]
    racers = [registry.register(r, name).version for r in runs]
    # Two racers per version; racers[1]'s gate refuses it, so the history must hold accepted,
    # "already there" and refused attempts truthfully.
    bars = {racers[0]: "0.0", racers[1]: "0.99"}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(platform.storage_root), name, v,
                               bars[v]], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for v in racers for _ in range(2)]
    outs = [p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(outs) == ["accepted", "accepted", "refused", "refused"]
    moves = registry.history(name, "champion")
    assert len(moves) == 4 and {m.actor for m in moves} == {f"racer-{v}" for v in racers}
    assert sorted(m.outcome for m in moves) == ["accepted", "exists", "refused", "refused"]
    # Each attempt saw the holder the previous one left: the chain of from -> to is unbroken.
    holder = None
    for m in moves:
        assert m.from_version == holder, moves
        if m.outcome == "accepted":
            holder = m.to_version
    assert registry.resolve(f"{name}@champion").version == holder == racers[0]
    assert registry.audit.verify().ok


def test_the_audit_chain_verifies_and_names_an_edited_line(registry, versions, tmp_path):
    from mlplatform.registry import AuditLog

    assert registry.audit.verify().ok and registry.audit.verify().events >= 10
    copy = tmp_path / "registry.jsonl"
    lines = registry.audit.path.read_text().splitlines(keepends=True)
    edited = json.loads(lines[2])
    edited["reason"] = "nothing to see here"
    copy.write_text("".join([*lines[:2], json.dumps(edited, sort_keys=True) + "\n", *lines[3:]]))
    result = AuditLog(registry.config, path=copy).verify()
    assert (result.ok, result.bad_line) == (False, 3) and "modified" in result.message
    copy.write_text("".join([*lines[:4], *lines[5:]]))           # a deleted line
    result = AuditLog(registry.config, path=copy).verify()
    assert (result.ok, result.bad_line) == (False, 5) and "removed" in result.message


@pytest.mark.parametrize("bad", ["../fraud", "/etc/fraud", "fraud#x", "fraud?x=1", "a/b",
                                 "fraud%2e%2e", ".hidden", "a..b"])
def test_unsafe_model_names_are_refused(registry, candidates, bad):
    before = len(registry._client.search_registered_models(max_results=1000))
    with pytest.raises(ValueError, match="invalid model"):
        registry.register(candidates["weak"], bad)
    assert len(registry._client.search_registered_models(max_results=1000)) == before


@pytest.mark.parametrize("uri", ["runs:/{run}/../../etc", "runs:/{run}/model#frag",
                                 "file:///etc/passwd", "/abs/model", "runs:/{run}/m?x=1",
                                 "models:/fraud/1%2f..", "runs:/{run}/./model"])
def test_unsafe_model_uris_are_refused(registry, candidates, uri):
    with pytest.raises(ValueError, match="invalid model URI"):
        registry.register(uri.format(run=candidates["weak"]), "fraud-safe")
