"""Multiclass and regression reports against scikit-learn, their input checks, metric directions
and the figures drawn from the reports (no Ray)."""

import inspect
import io
import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from mlplatform.training import plots
from mlplatform.training.metrics import evaluation_report
from mlplatform.training.metrics_tasks import (
    MAX_RESIDUAL_POINTS,
    METRIC_DIRECTIONS,
    higher_is_better,
    multiclass_report,
    regression_report,
)

TOL = 1e-9


def _multiclass(n=3_000, k=5, seed=0, absent=None):
    """Labels and softmax probabilities that carry signal; ``absent`` is a class no row has."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    if absent is not None:
        y[y == absent] = (absent + 1) % k
    logits = rng.normal(0, 1.5, (n, k))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, p / p.sum(axis=1, keepdims=True)


def _regression(n=3_000, seed=0):
    """Targets with exact zeros (for MAPE) and noisy, slightly biased predictions."""
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 4, n)
    y[rng.random(n) < 0.05] = 0.0
    return y, 0.9 * y + 1.5 + rng.normal(0, 2, n)


@pytest.mark.parametrize("absent", [None, 2])
def test_multiclass_report_matches_sklearn(absent):
    k = 5
    y, p = _multiclass(k=k, absent=absent)
    names = ["cat", "dog", 7, 2.5, None]
    labels = list(range(k))
    r = multiclass_report(y, p, names)
    pred = p.argmax(axis=1)
    assert r["rows"] == len(y)
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=labels), abs=TOL)
    if "labels" in inspect.signature(skm.brier_score_loss).parameters:  # multiclass: sklearn 1.7+
        brier = skm.brier_score_loss(y, p, labels=labels, scale_by_half=False)
    else:
        brier = np.mean(np.sum((p - np.eye(k)[y]) ** 2, axis=1))
    assert r["brier"] == pytest.approx(brier, abs=TOL)
    for average in ("macro", "weighted"):
        want = skm.f1_score(y, pred, labels=labels, average=average, zero_division=0)
        assert r[f"{average}_f1"] == pytest.approx(want, abs=TOL)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels,
                                                                  zero_division=0)
    keys = ["cat", "dog", "7", "2.5", "None"]
    assert list(r["per_class"]) == keys and list(r["class_counts"]) == keys
    for i, key in enumerate(keys):
        got = r["per_class"][key]
        assert got["precision"] == pytest.approx(prec[i], abs=TOL)
        assert got["recall"] == pytest.approx(rec[i], abs=TOL)
        assert got["f1"] == pytest.approx(f1[i], abs=TOL)
        assert got["support"] == support[i] == r["class_counts"][key]
    assert r["confusion_matrix"] == {"labels": keys,
                                     "matrix": skm.confusion_matrix(y, pred, labels=labels).tolist()}
    if absent is not None:
        assert r["class_counts"][keys[absent]] == 0
    json.dumps(r, allow_nan=False)  # logged as JSON as is


def test_multiclass_calibration_is_of_the_top_class():
    y, p = _multiclass(seed=3)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(int)
    cal = multiclass_report(y, p, list("abcde"))["calibration"]
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    full = [b for b in cal["bins"] if b["rows"]]
    assert len(cal["bins"]) == 10 and sum(b["rows"] for b in cal["bins"]) == len(y)
    np.testing.assert_allclose([b["positive_rate"] for b in full], prob_true, atol=TOL)
    np.testing.assert_allclose([b["mean_score"] for b in full], prob_pred, atol=TOL)
    ece = sum(b["rows"] / len(y) * abs(b["mean_score"] - b["positive_rate"]) for b in full)
    assert cal["ece"] == pytest.approx(ece, abs=TOL) and cal["ece"] > 0


def test_multiclass_small_known_case():
    # Row 3 ties classes 0 and 1: the first wins, as numpy.argmax and a model's predict.
    r = multiclass_report([0, 1, 2, 1], [[.8, .1, .1], [.2, .7, .1], [.5, .2, .3], [.4, .4, .2]],
                          np.array([10, 20, 30]))
    assert r["confusion_matrix"] == {"labels": ["10", "20", "30"],
                                     "matrix": [[1, 0, 0], [1, 1, 0], [1, 0, 0]]}
    assert r["accuracy"] == 0.5
    assert r["per_class"]["10"] == {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1}
    assert r["per_class"]["30"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["log_loss"] == pytest.approx(-np.mean(np.log([.8, .7, .3, .4])))


@pytest.mark.parametrize(("y", "p", "classes", "message"), [
    ([0, 1], [[.5, .5]] * 3, ["a", "b"], "differ in length"),
    ([0, 2, 1], [[.5, .5]] * 3, ["a", "b"], "not class indices"),
    ([0, -1, 1], [[.5, .5]] * 3, ["a", "b"], "not class indices"),
    ([0, 0.5, 1], [[.5, .5]] * 3, ["a", "b"], "not class indices"),
    ([0, np.nan, 1], [[.5, .5]] * 3, ["a", "b"], "NaN"),
    (["a", "b", "a"], [[.5, .5]] * 3, ["a", "b"], "map labels to their position"),
    ([0, 1, 1], [[.5, .5], [np.nan, .5], [.5, .5]], ["a", "b"], "NaN or infinite"),
    ([0, 1, 1], [[.5, .5], [.6, .6], [.5, .5]], ["a", "b"], "row 1 sums to 1.2"),
    ([0, 1, 1], [[1.5, -.5], [.5, .5], [.5, .5]], ["a", "b"], "in [0, 1]"),
    ([0, 1, 1], [[.5, .5]] * 3, ["a", "b", "c"], "3 labels but proba has 2 columns"),
    ([0, 1, 1], [[.5, .5]] * 3, ["a", "a"], "distinct names"),
    ([0, 1, 1], [[.5, .5]] * 3, [1, "1"], "distinct names"),
    ([0, 1, 1], [[.5, .5]] * 3, ["a", ["b"]], "JSON scalars"),
    ([0, 1, 1], [.5, .5, .5], ["a", "b"], "(rows, classes)"),
    ([0, 0, 0], [[1.0]] * 3, ["a"], "at least 2 classes"),
    ([[0, 1], [1, 0]], [[.5, .5]] * 2, ["a", "b"], "one value per row"),
    ([], np.empty((0, 2)), ["a", "b"], "no rows"),
])
def test_multiclass_refuses_bad_inputs(y, p, classes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        multiclass_report(y, p, classes)


def test_multiclass_accepts_rounding_within_tolerance():
    p = np.array([[0.3333333, 0.3333333, 0.3333333], [0.2, 0.3, 0.5]])  # sums 0.9999999
    assert multiclass_report([0, 2], p, ["x", "y", "z"])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="do not sum to 1"):
        multiclass_report([0, 2], p * 0.999, ["x", "y", "z"])


def test_regression_report_matches_sklearn():
    y, f = _regression()
    r = regression_report(y, f)
    nz = y != 0
    assert r["rows"] == len(y)
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, f)), abs=TOL)
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(y, f), abs=TOL)
    assert r["r2"] == pytest.approx(skm.r2_score(y, f), abs=TOL)
    assert r["median_absolute_error"] == pytest.approx(skm.median_absolute_error(y, f), abs=TOL)
    assert 0 < nz.sum() < len(y)  # the zero rows are left out of MAPE, not divided by
    assert r["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y[nz], f[nz]), abs=TOL)
    assert r["mean_error"] == pytest.approx(np.mean(f - y), abs=TOL) and r["mean_error"] > 0.3
    assert (r["y_mean"], r["pred_mean"]) == (pytest.approx(y.mean(), abs=TOL),
                                             pytest.approx(f.mean(), abs=TOL))
    res = r["residuals"]
    assert res["percentiles"] == pytest.approx(
        dict(zip(["p5", "p25", "p50", "p75", "p95"], np.percentile(f - y, [5, 25, 50, 75, 95]),
                 strict=True)), abs=TOL)
    json.dumps(r, allow_nan=False)


def test_regression_residual_points_are_bounded_sorted_real_rows():
    y, f = _regression()
    res = regression_report(y, f)["residuals"]
    assert len(res["actual"]) == len(res["predicted"]) == MAX_RESIDUAL_POINTS
    assert res["actual"] == sorted(res["actual"])
    assert (res["actual"][0], res["actual"][-1]) == (y.min(), y.max())  # ends included
    rows = set(zip(y.tolist(), f.tolist(), strict=True))
    assert all(pair in rows for pair in zip(res["actual"], res["predicted"], strict=True))
    small = regression_report(y[:50], f[:50])["residuals"]
    assert sorted(small["actual"]) == sorted(y[:50].tolist()) == small["actual"]


def test_regression_undefined_figures_are_none():
    constant = regression_report([3.0, 3.0, 3.0], [2.0, 3.0, 4.0])
    assert constant["r2"] is None and constant["mae"] == pytest.approx(2 / 3)
    zeros = regression_report([0.0, 0.0], [1.0, -1.0])
    assert zeros["mape"] is None and zeros["r2"] is None and zeros["mean_error"] == 0.0
    one = regression_report([2.0], [2.5])
    assert (one["rows"], one["rmse"], one["r2"], one["mape"]) == (1, 0.5, None, 0.25)


@pytest.mark.parametrize(("y", "f", "message"), [
    ([1.0, 2.0], [1.0], "differ in length"),
    ([1.0, np.nan], [1.0, 2.0], "1 value\\(s\\) in y_true are NaN or infinite"),
    ([1.0, 2.0], [np.inf, 2.0], "1 value\\(s\\) in y_pred are NaN or infinite"),
    ([1.0, "x"], [1.0, 2.0], "y_true must be numbers"),
    ([[1.0, 2.0]] * 2, [1.0, 2.0], "y_true must be one value per row"),
    ([], [], "no rows"),
])
def test_regression_refuses_bad_inputs(y, f, message):
    with pytest.raises(ValueError, match=message):
        regression_report(y, f)


@pytest.mark.parametrize(("metric", "higher"), [
    ("auc_pr", True), ("val_auc_pr", True), ("eval_auc_roc", True), ("val_accuracy", True),
    ("eval_macro_f1", True), ("r2", True), ("val_aucpr", True),
    ("log_loss", False), ("val_logloss", False), ("val_mlogloss", False), ("val_error", False),
    ("val_merror", False), ("val_rmse", False), ("val_mae", False), ("eval_brier", False),
    ("eval_mape", False), ("median_absolute_error", False), ("eval_flagged_share", False),
])
def test_higher_is_better(metric, higher):
    assert higher_is_better(metric) is higher


@pytest.mark.parametrize(("metric", "message"), [
    ("val_accuracyy", "unknown metric 'val_accuracyy'"), ("roc", "unknown metric 'roc'"),
    ("train_rmse", "unknown metric 'train_rmse'"), ("val_", "unknown metric 'val_'"),
    ("eval_mean_error", "'eval_mean_error' has no better direction"),
])
def test_higher_is_better_refuses_unknown_metrics(metric, message):
    with pytest.raises(ValueError, match=message):
        higher_is_better(metric)


def test_every_report_scalar_has_a_direction_or_says_why_not():
    y, p = _multiclass(n=200)
    yr, fr = _regression(n=200)
    reports = [evaluation_report((y == 0).astype(int), p[:, 0]),
               multiclass_report(y, p, list("abcde")), regression_report(yr, fr)]
    scalars = {k for r in reports for k, v in r.items() if isinstance(v, (int, float))}
    assert {"auc_pr", "accuracy", "weighted_f1", "rmse", "mape"} <= scalars
    for name in scalars:
        try:
            assert isinstance(higher_is_better(name), bool)
        except ValueError as exc:
            assert "no better direction" in str(exc), name
    assert set(METRIC_DIRECTIONS.values()) == {"max", "min"}


def _png(fig: Figure) -> bytes:
    assert isinstance(fig, Figure) and fig.axes
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
    return buf.getvalue()


def test_multiclass_figures():
    y, p = _multiclass()
    names = ["cat", "dog", "7", "2.5", "None"]
    r = multiclass_report(y, p, names)
    fig = plots.multiclass_confusion_figure(r)
    _png(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    counts = [int(t.get_text().replace(",", "")) for t in ax.texts]
    assert counts == [n for row in r["confusion_matrix"]["matrix"] for n in row]
    assert f"{len(y):,} rows" in ax.get_title()
    fig = plots.per_class_figure(r)
    _png(fig)
    heights = [b.get_height() for b in fig.axes[0].patches]
    want = [r["per_class"][c][m] for m in ("precision", "recall", "f1") for c in names]
    assert heights == pytest.approx(want)
    assert f"{len(y):,} rows" in fig.axes[0].get_title()


def test_confusion_figure_of_many_classes_leaves_out_the_counts():
    y, p = _multiclass(n=2_000, k=30)
    fig = plots.multiclass_confusion_figure(multiclass_report(y, p, [f"c{i}" for i in range(30)]))
    _png(fig)
    assert not fig.axes[0].texts and len(fig.axes[0].get_xticklabels()) == 30


def test_regression_figures():
    y, f = _regression()
    r = regression_report(y, f)
    res = r["residuals"]
    fig = plots.predicted_vs_actual_figure(r)
    _png(fig)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(),
                               np.column_stack([res["actual"], res["predicted"]]))
    line = ax.lines[0].get_xydata()
    np.testing.assert_allclose(line[:, 0], line[:, 1])  # the y = x line
    assert f"{len(y):,} rows" in ax.get_title()
    fig = plots.residuals_figure(r)
    _png(fig)
    ax = fig.axes[0]
    offsets = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(offsets[:, 1], np.subtract(res["predicted"], res["actual"]))
    assert f"{len(y):,} rows" in ax.get_title()


def test_regression_figures_of_a_constant_target():
    r = regression_report([1.0, 1.0], [0.5, 1.5])  # r2 None, two points
    _png(plots.predicted_vs_actual_figure(r))
    _png(plots.residuals_figure(r))
