"""Evaluation figures (PR curve, confusion matrix, reliability diagram, SHAP importance).

Built on ``matplotlib.figure.Figure`` directly, never ``pyplot``: no global backend is switched
and no figure is left open, so logging from a notebook or a Ray worker draws nothing on screen
and leaks nothing (a bare ``Figure`` renders with the Agg canvas).
"""

from __future__ import annotations

from typing import Any


def _figure(width: float = 5.5, height: float = 4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


def pr_curve_figure(report: dict[str, Any]):
    """Precision against recall, with the chosen threshold marked."""
    fig, ax = _figure()
    curve = report["pr_curve"]
    ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", color="tab:blue",
            label=f"AUC-PR (AP) {_fmt(report['auc_pr'])}")
    ax.axhline(report["base_rate"], color="grey", linestyle=":",
               label=f"base rate {report['base_rate']:.3f}")
    ax.scatter([report["recall"]], [report["precision"]], color="tab:red", zorder=3,
               label=f"threshold {report['threshold']:.3f} (F1 {report['f1']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Precision-recall ({report['rows']:,} rows)")
    ax.legend(loc="lower left")
    return fig


def confusion_figure(report: dict[str, Any]):
    """The 2x2 confusion matrix at the chosen threshold, counts written in the cells."""
    import numpy as np

    cm = report["confusion_matrix"]
    counts = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = _figure(4.5, 4.0)
    ax.imshow(np.log1p(counts), cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{n:,}", ha="center", va="center",
                color="white" if np.log1p(n) > np.log1p(counts.max()) / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["legit", "fraud"],
           yticklabels=["legit", "fraud"], xlabel="predicted", ylabel="actual",
           title=f"Confusion matrix at {report['threshold']:.3f}")
    return fig


def calibration_figure(report: dict[str, Any]):
    """Reliability diagram: observed fraud rate against mean score per bin, bin sizes below."""
    bins = [b for b in report["calibration"]["bins"] if b["rows"]]
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot([b["mean_score"] for b in bins], [b["positive_rate"] for b in bins], marker="o",
            color="tab:blue", label=f"model (ECE {report['calibration']['ece']:.4f})")
    ax.set(xlabel="mean predicted score", ylabel="observed fraud rate", xlim=(0, 1),
           ylim=(0, 1), title="Calibration")
    ax.legend(loc="upper left")
    rows = ax.twinx()
    rows.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["rows"] for b in bins],
             width=[b["upper"] - b["lower"] for b in bins], alpha=0.15, color="tab:grey")
    rows.set(yscale="log", ylabel="rows per bin")
    return fig


def importance_figure(importance: dict[str, Any], top: int = 20):
    """Horizontal bars of mean |SHAP| per feature, largest on top."""
    items = list(importance["importance"].items())[:top]
    fig, ax = _figure(6.5, 0.3 * len(items) + 1.5)
    ax.barh([k for k, _ in reversed(items)], [v for _, v in reversed(items)], color="tab:blue")
    ax.set(xlabel=f"mean |SHAP value| ({importance['output']})",
           title=f"Global feature importance ({importance['rows']:,} rows)")
    return fig


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
