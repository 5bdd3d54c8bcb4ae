"""What the service answers, by task (pure logic; the HTTP paths are in tests/integration)."""

import pytest

from mlplatform.serving.answers import Answers, disagrees, score_of
from tests.projects import project

OUT = {"model_name": "m", "model_version": "3"}


def test_binary_decision_uses_the_project_words_and_the_version_threshold():
    answers = Answers.for_project(project("fraud"))
    assert answers.labels == ["legit", "fraud"] and answers.id_field == "transaction_id"
    out = {**OUT, "task": "binary", "threshold": 0.7}
    row = answers.row({"transaction_id": "t1", "amount": 3.0}, 0.7, out, "champion", ["user"])
    assert row == {"transaction_id": "t1", "score": 0.7, "decision": "fraud", "arm": "champion",
                   "model_name": "m", "model_version": "3", "unknown_entities": ["user"]}
    assert answers.prediction(0.69, out)["decision"] == "legit"


def test_multiclass_names_the_class_and_every_probability():
    answers = Answers.for_project(project("wine"))
    out = {**OUT, "task": "multiclass", "classes": ["class_0", "class_1", "class_2"]}
    p = answers.prediction([0.2, 0.5, 0.3], out)
    assert p == {"class": "class_1", "score": 0.5,
                 "probabilities": {"class_0": 0.2, "class_1": 0.5, "class_2": 0.3}}
    assert answers.id_field is None and "decision" not in answers.row({}, [1, 0, 0], out, "a", [])
    assert score_of([0.2, 0.5, 0.3], "multiclass") == 0.5
    assert disagrees(p, [0.6, 0.3, 0.1], out, answers)
    assert not disagrees(p, [0.1, 0.8, 0.1], out, answers)


def test_regression_answers_a_value_and_disagrees_by_relative_distance():
    answers = Answers.for_project(project("delivery"))
    out = {**OUT, "task": "regression"}
    served = answers.prediction(40.0, out)
    assert served == {"value": 40.0} and score_of(40.0, "regression") is None
    assert not disagrees(served, 41.9, out, answers)
    assert disagrees(served, 42.1, out, answers) and disagrees(served, 37.9, out, answers)


@pytest.mark.parametrize("served,shadow,expected", [(0.2, 0.4, False), (0.2, 0.6, True),
                                                     (0.9, 0.5, False), (0.9, 0.49, True)])
def test_binary_shadow_disagrees_on_the_decision(served, shadow, expected):
    answers = Answers(labels=["no", "yes"])
    out = {**OUT, "task": "binary", "threshold": 0.5}
    assert disagrees(answers.prediction(served, out), shadow, out, answers) is expected
