"""Evaluation figures: binary (PR curve, confusion matrix, reliability diagram), multiclass
(confusion matrix, per-class scores), regression (predicted vs actual, residuals), SHAP importance.

Built on ``matplotlib.figure.Figure`` directly, never ``pyplot``: no global backend is switched
and no figure is left open, so logging from a notebook or a Ray worker draws nothing on screen
and leaks nothing (a bare ``Figure`` renders with the Agg canvas).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Above this many classes the confusion matrix's cells are too small to hold their counts.
MAX_ANNOTATED_CLASSES = 20


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
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["negative", "positive"],
           yticklabels=["negative", "positive"], xlabel="predicted", ylabel="actual",
           title=f"Confusion matrix at {report['threshold']:.3f}")
    return fig


def calibration_figure(report: dict[str, Any]):
    """Reliability diagram: observed positive rate against mean score per bin, bin sizes below."""
    bins = [b for b in report["calibration"]["bins"] if b["rows"]]
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot([b["mean_score"] for b in bins], [b["positive_rate"] for b in bins], marker="o",
            color="tab:blue", label=f"model (ECE {report['calibration']['ece']:.4f})")
    ax.set(xlabel="mean predicted score", ylabel="observed positive rate", xlim=(0, 1),
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


def multiclass_confusion_figure(report: dict[str, Any]) -> Figure:
    """The K x K confusion matrix of a multiclass report (rows actual, columns predicted),
    colour on a log scale so that small off-diagonal cells stay visible next to a big diagonal."""
    import numpy as np

    cm = report["confusion_matrix"]
    counts = np.array(cm["matrix"])
    k = len(cm["labels"])
    side = min(4.0 + 0.45 * k, 16.0)
    fig, ax = _figure(side + 0.5, side)
    ax.imshow(np.log1p(counts), cmap="Blues")
    if k <= MAX_ANNOTATED_CLASSES:
        # imshow stretches the colours over [min, max]: past their middle the cell is dark.
        dark = (np.log1p(counts.min()) + np.log1p(counts.max())) / 2
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, f"{n:,}", ha="center", va="center", fontsize=8 if k > 8 else 10,
                    color="white" if np.log1p(n) > dark else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="actual",
           title=f"Confusion matrix ({report['rows']:,} rows, accuracy {report['accuracy']:.3f})")
    ax.set_xticklabels(cm["labels"], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticklabels(cm["labels"])
    return fig


def per_class_figure(report: dict[str, Any]) -> Figure:
    """Precision, recall and F1 of each class as grouped bars, support under each name."""
    import numpy as np

    names = list(report["per_class"])
    x = np.arange(len(names))
    fig, ax = _figure(max(5.5, 0.6 * len(names) + 2.5), 4.5)
    for offset, metric, color in ((-0.27, "precision", "tab:blue"), (0.0, "recall", "tab:orange"),
                                  (0.27, "f1", "tab:green")):
        ax.bar(x + offset, [report["per_class"][c][metric] for c in names], width=0.27,
               color=color, label=metric)
    ax.set_xticks(x, [f"{c}\n({report['per_class'][c]['support']:,})" for c in names],
                  rotation=45 if len(names) > 8 else 0)
    ax.set(ylim=(0, 1.15), ylabel="score", xlabel="class (support)",
           title=f"Per-class scores ({report['rows']:,} rows, macro F1 {report['macro_f1']:.3f})")
    ax.legend(loc="upper center", ncols=3)
    return fig


def predicted_vs_actual_figure(report: dict[str, Any]) -> Figure:
    """The regression report's thinned (actual, predicted) points against the y = x line."""
    res = report["residuals"]
    fig, ax = _figure()
    ax.scatter(res["actual"], res["predicted"], s=12, alpha=0.6, color="tab:blue",
               label=f"R² {_fmt(report['r2'])}, RMSE {report['rmse']:.4g}")
    values = res["actual"] + res["predicted"]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", label="predicted = actual")
    ax.set(xlabel="actual", ylabel="predicted",
           title=f"Predicted vs actual ({report['rows']:,} rows, {len(res['actual']):,} shown)")
    ax.legend(loc="upper left")
    return fig


def residuals_figure(report: dict[str, Any]) -> Figure:
    """Residual (predicted - actual) of the thinned points against actual, with the 5-95 and
    25-75 percentile bands of all rows' residuals: a trend across the band is a bias by level."""
    res = report["residuals"]
    pct = res["percentiles"]
    fig, ax = _figure()
    ax.axhspan(pct["p5"], pct["p95"], color="tab:blue", alpha=0.08, label="5-95th percentile")
    ax.axhspan(pct["p25"], pct["p75"], color="tab:blue", alpha=0.15, label="25-75th percentile")
    ax.axhline(0.0, color="grey", linestyle=":")
    ax.axhline(pct["p50"], color="tab:blue", linewidth=1, label=f"median {pct['p50']:.4g}")
    ax.scatter(res["actual"], [p - a for a, p in zip(res["actual"], res["predicted"], strict=True)],
               s=12, alpha=0.6, color="tab:blue")
    ax.set(xlabel="actual", ylabel="predicted - actual",
           title=f"Residuals ({report['rows']:,} rows, mean error {report['mean_error']:.4g})")
    ax.legend(loc="upper right")
    return fig


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
