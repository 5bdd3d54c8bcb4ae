"""Reference profiles: what the training features looked like, for drift monitoring later.

A profile is plain JSON (one entry per feature) so a monitor can compare live traffic with it
without the training data: summary statistics and quantiles for every feature, histogram bin
edges and counts (the bins PSI is computed over) for numeric features, and value frequencies
for categorical codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

PROFILE_VERSION = 1
#: Quantiles recorded per numeric feature.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Equal-frequency histogram bins per numeric feature (fewer when values repeat).
DEFAULT_BINS = 10
#: Numeric features with at most this many distinct values get one bin per value.
MAX_DISCRETE = 32


def reference_profile(df: pd.DataFrame, columns: Sequence[str],
                      categorical: Sequence[str] | None = None,
                      bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Profile ``columns`` of ``df`` (a bounded sample of the training features).

    Numeric features get equal-frequency bins from the reference quantiles: inner edges sit at
    the deciles (duplicates dropped, so a count feature that is mostly 0 gets fewer bins), the
    outer edges are the minimum and maximum; a feature with at most :data:`MAX_DISCRETE`
    distinct values (hour of day, a 0/1 flag) gets one bin per value instead. Bins are
    ``numpy.histogram``'s: [edge, next edge), the last one closed. A monitor puts live values
    below the minimum in the first bin and above the maximum in the last, then compares the
    shares (PSI).

    Args:
        df: The reference rows.
        columns: Features to profile, in order.
        categorical: Columns profiled as categories (value frequencies). Default: columns whose
            name ends in ``_code`` (the integer codes of :mod:`mlplatform.features.transforms`)
            and non-numeric columns.
        bins: Histogram bins per numeric feature (at most).

    Returns:
        ``{"version", "created_at", "rows", "columns", "features": {name: {...}}}``; every value
        is JSON-serialisable (missing statistics are None).

    Raises:
        KeyError: A column is not in ``df``.

    Example:
        >>> p = reference_profile(pd.DataFrame({"x": [1.0, 2.0, None]}), ["x"])
        >>> p["features"]["x"]["null_share"], p["features"]["x"]["mean"]
        (0.3333333333333333, 1.5)
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"reference_profile: column(s) {missing} are not in the frame "
                       f"(columns: {list(df.columns)})")
    if categorical is None:
        categorical = [c for c in columns
                       if c.endswith("_code") or not pd.api.types.is_numeric_dtype(df[c])]
    features = {c: (_categorical(df[c]) if c in set(categorical) else _numeric(df[c], bins))
                for c in columns}
    return {"version": PROFILE_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": int(len(df)), "columns": list(columns), "features": features}


def _base(values: pd.Series, kind: str) -> dict[str, Any]:
    n = int(len(values))
    nulls = int(values.isna().sum())
    return {"kind": kind, "dtype": str(values.dtype), "count": n - nulls, "null_count": nulls,
            "null_share": nulls / n if n else None}


def _numeric(values: pd.Series, bins: int) -> dict[str, Any]:
    out = _base(values, "numeric")
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {**out, "mean": None, "std": None, "min": None, "max": None,
                "quantiles": {}, "histogram": {"bin_edges": [], "counts": []}}
    qs = np.quantile(x, QUANTILES)
    distinct = np.unique(x)
    if distinct.size <= MAX_DISCRETE:
        # One bin per value (edges halfway between values): deciles of an hour or a 0/1 flag
        # would merge values, and a shift between them would go unseen.
        edges = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2, distinct[-1:]])
    else:
        inner = np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        edges = np.unique(np.concatenate([[x.min()], inner, [x.max()]]))
    counts, _ = np.histogram(x, bins=edges)
    return {**out, "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min": float(x.min()), "max": float(x.max()),
            "quantiles": {f"p{round(q * 100):02d}": float(v)
                          for q, v in zip(QUANTILES, qs, strict=True)},
            "histogram": {"bin_edges": [float(e) for e in edges],
                          "counts": [int(c) for c in counts]}}


def _categorical(values: pd.Series) -> dict[str, Any]:
    out = _base(values, "categorical")
    present = values.dropna()
    counts = present.map(_key).value_counts(sort=False)
    counts = counts.sort_index(key=lambda idx: [_order(k) for k in idx])
    total = int(counts.sum())
    return {**out, "distinct": int(len(counts)),
            "value_counts": {k: int(v) for k, v in counts.items()},
            "frequencies": {k: int(v) / total for k, v in counts.items()} if total else {}}


def _key(value: Any) -> str:
    """A JSON key for a category: integral codes as ``"3"`` (codes are float64 in the frame)."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _order(key: str) -> tuple[int, float | str]:
    try:
        return (0, float(key))
    except ValueError:
        return (1, key)
