"""The example projects hold together: each categorical field lists the same values in the
request schema (``enum``), every data contract (``allowed``), the model-inputs vocabulary and
the data generator; the classes agree with the contracts' label rules; and each example has the
serve config that names it."""

from __future__ import annotations

import pytest
import yaml

from mlplatform.features.contracts import load_contract
from tests.projects import EXAMPLES, REPO, module, project

NAMES = ["fraud", "delivery", "wine"]


def _contracts(p):
    """Every contract the project names, by where it is named."""
    paths = {f"sources.{s.name}.contract": s.contract for s in p.sources if s.contract}
    paths["data.contract"] = p.data.contract
    paths["evaluation.contract"] = p.evaluation.contract
    return {k: load_contract(p.root / v) for k, v in paths.items() if v}


@pytest.mark.parametrize("name", NAMES)
def test_request_enums_equal_every_contract_and_vocabulary(name):
    p = project(name)
    contracts = _contracts(p)
    assert contracts, f"{name} names no data contract"
    vocab = {}
    if p.model_inputs.function:
        vocab = getattr(module(name, p.model_inputs.function.split(":")[0]), "VOCABULARIES", {})
    enums = {f: spec.enum for f, spec in p.request.fields.items() if spec.enum}
    for field, enum in enums.items():
        for where, contract in contracts.items():
            rule = contract.columns.get(field)
            if rule is not None:
                assert rule.allowed == enum, f"{name}: {where} allows {rule.allowed} for " \
                    f"{field}, the request schema {enum}"
        if field in vocab:
            assert vocab[field] == enum, f"{name}: the model inputs encode {field} as {vocab[field]}"
    assert set(vocab) <= set(enums), f"{name}: vocabularies of fields without an enum"


@pytest.mark.parametrize("name", NAMES)
def test_classes_agree_with_the_label_rules(name):
    p = project(name)
    for where, contract in _contracts(p).items():
        if contract.label is None:
            continue
        assert contract.label.column == p.task.label, where
        if p.task.type == "multiclass":
            assert contract.label.values == p.task.classes, where
        elif p.task.type == "binary":
            assert set(contract.label.values) == {0, 1}, where


def test_generated_categoricals_stay_in_the_vocabularies(tmp_path):
    """The generators write only values the request schema accepts."""
    from mlplatform.datasets import make_deliveries, make_transactions

    frames = {"fraud": make_transactions(2_000, seed=1),
              "delivery": make_deliveries(2_000, seed=1)}
    for name, frame in frames.items():
        checked = [f for f, spec in project(name).request.fields.items()
                   if spec.enum and f in frame.columns]
        assert len(checked) == 3, (name, checked)
        for field in checked:
            assert set(frame[field].unique()) <= set(project(name).request.fields[field].enum)


def test_wine_classes_are_the_bundled_dataset_s():
    from sklearn.datasets import load_wine

    assert project("wine").task.classes == list(load_wine().target_names)


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_a_serve_config_naming_it(name):
    config = yaml.safe_load((REPO / "serve_configs" / f"{name}.yaml").read_text())
    (app,) = config["applications"]
    assert (REPO / app["args"]["project"]).resolve() == (EXAMPLES / name).resolve()
    models = app["args"].get("models") or []
    assert all(m.split("@")[0].split("/")[0] == project(name).name for m in models)
