"""Binary-classifier metrics in numpy: the evaluation report of a set of scores.

Written out (sorted cumulative counts) rather than taken from scikit-learn so that training,
evaluation and serving-side monitors share one definition with no extra dependency; the unit
tests check every figure against scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Points kept from the PR curve in a report (evenly spaced along the curve, ends included).
MAX_CURVE_POINTS = 200
#: Reliability (calibration) bins over [0, 1].
CALIBRATION_BINS = 10
_EPS = 1e-15


def evaluation_report(y_true, scores, threshold: float | None = None,
                      calibration_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Metrics of binary scores against 0/1 labels, the decision threshold and the curves.

    Args:
        y_true: 0/1 labels.
        scores: Predicted probabilities of class 1, same length.
        threshold: Score at or above which a row is flagged. Default: the threshold that
            maximises F1 on these rows (``threshold_source`` says which was used).
        calibration_bins: Equal-width reliability bins over [0, 1].

    Returns:
        ``rows``, ``positives``, ``base_rate``, ``auc_pr`` (average precision, the step-wise
        area under the PR curve), ``auc_roc``, ``log_loss``, ``brier``, ``threshold``,
        ``threshold_source``, ``precision``/``recall``/``f1`` and ``confusion_matrix``
        (``tn``, ``fp``, ``fn``, ``tp``) at the threshold, ``pr_curve`` (``precision``,
        ``recall``, ``threshold`` lists, at most :data:`MAX_CURVE_POINTS`) and ``calibration``
        (per bin: edges, rows, mean score, observed positive rate; plus the expected
        calibration error ``ece``). Rank metrics are None when only one class is present.

    Raises:
        ValueError: Lengths differ, there are no rows, labels are not 0/1 or scores are not
            probabilities.

    Example:
        >>> r = evaluation_report([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> r["auc_roc"], r["threshold"], r["confusion_matrix"]
        (0.75, 0.35, {'tn': 1, 'fp': 1, 'fn': 0, 'tp': 2})
    """
    y, s = _check(y_true, scores)
    pos = int(y.sum())
    both = 0 < pos < len(y)
    curve = _pr_points(y, s)
    if threshold is None:
        if pos:
            best = int(np.nanargmax(curve["f1"]))
            threshold, source = float(curve["threshold"][best]), "max_f1"
        else:  # nothing to find: flag nothing
            threshold, source = float(np.nextafter(s.max(), np.inf)), "max_f1"
    else:
        threshold, source = float(threshold), "given"
    at = at_threshold(y, s, threshold)
    return {
        "rows": int(len(y)), "positives": pos, "base_rate": pos / len(y),
        "auc_pr": _average_precision(curve) if both else None,
        "auc_roc": auc_roc(y, s) if both else None,
        "log_loss": log_loss(y, s), "brier": float(np.mean((s - y) ** 2)),
        "threshold": threshold, "threshold_source": source, **at,
        "pr_curve": _thin(curve),
        "calibration": calibration(y, s, calibration_bins),
    }


def at_threshold(y_true, scores, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1, flagged share and the confusion matrix when ``score >= threshold``
    is flagged (precision is 0 when nothing is flagged, recall 0 when there are no positives)."""
    y, s = _check(y_true, scores)
    flag = s >= threshold
    tp = int(np.sum(flag & (y == 1)))
    fp = int(np.sum(flag & (y == 0)))
    fn = int(np.sum(~flag & (y == 1)))
    tn = int(len(y) - tp - fp - fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged_share": (tp + fp) / len(y),
            "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}}


def average_precision(y_true, scores) -> float:
    """Average precision (scikit-learn's step-wise area under the PR curve). Only the order of
    ``scores`` matters, so they may be logits as well as probabilities."""
    y, s = _check(y_true, scores, probabilities=False)
    if not y.sum():
        raise ValueError("average_precision needs positive rows")
    return _average_precision(_pr_points(y, s))


def auc_roc(y_true, scores) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; tied scores count one half). Only
    the order of ``scores`` matters."""
    y, s = _check(y_true, scores, probabilities=False)
    pos = int(y.sum())
    neg = len(y) - pos
    if not pos or not neg:
        raise ValueError("auc_roc needs both classes")
    ranks = _average_ranks(s)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(y_true, scores) -> float:
    """Mean negative log-likelihood (scores clipped to [1e-15, 1 - 1e-15])."""
    y, s = _check(y_true, scores)
    p = np.clip(s, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def calibration(y_true, scores, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability bins: equal-width score bins over [0, 1] with their observed positive rate
    (the bins of ``sklearn.calibration.calibration_curve(strategy="uniform")``).

    Empty bins are listed with ``rows`` 0 and None means; ``ece`` is the row-weighted mean
    of |mean score - positive rate| over the non-empty bins.
    """
    y, s = _check(y_true, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.searchsorted(edges[1:-1], s)  # (lower, upper] (the first also holds 0), as sklearn
    rows = np.bincount(idx, minlength=bins)
    score_sum = np.bincount(idx, weights=s, minlength=bins)
    pos_sum = np.bincount(idx, weights=y, minlength=bins)
    out, ece = [], 0.0
    for b in range(bins):
        n = int(rows[b])
        mean_s = score_sum[b] / n if n else None
        rate = pos_sum[b] / n if n else None
        if n:
            ece += n / len(y) * abs(mean_s - rate)
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "rows": n,
                    "mean_score": None if mean_s is None else float(mean_s),
                    "positive_rate": None if rate is None else float(rate)})
    return {"bins": out, "ece": float(ece)}


def _check(y_true, scores, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not y.size:
        raise ValueError("no rows to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} score(s) are NaN or infinite")
    if probabilities and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(f"scores must be probabilities in [0, 1], got [{s.min()}, {s.max()}]")
    return y, s


def _pr_points(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 at every distinct score used as threshold, highest first."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]  # last row of each tie group
    tp = np.cumsum(y_sorted)[last]
    flagged = last + 1.0
    precision = tp / flagged
    total_pos = y.sum()
    recall = tp / total_pos if total_pos else np.zeros_like(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "threshold": s_sorted[last]}


def _average_precision(curve: dict[str, np.ndarray]) -> float:
    """Sum over thresholds of (recall gained) x precision: scikit-learn's average precision."""
    recall = np.r_[0.0, curve["recall"]]
    return float(np.sum(np.diff(recall) * curve["precision"]))


def _thin(curve: dict[str, np.ndarray]) -> dict[str, list[float]]:
    n = len(curve["threshold"])
    keep = np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int))
    return {k: [float(v) for v in curve[k][keep]] for k in ("precision", "recall", "threshold")}


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s`` with ties sharing their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks
