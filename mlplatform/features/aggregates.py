"""The ``window_aggregates`` transformation: time-windowed aggregates per entity, vectorised.

Works on one batch that holds *every* event (within the look-back) of the entities it contains —
the Ray Data build guarantees that by grouping on a hash of the join keys — and emits one row per
(entity, event time). For a row at time t, an aggregate over ``window`` w covers the entity's
events in (t - w, t] (events at exactly t included, so all rows at one time agree), and a
``label_rate`` only uses labels known strictly before t (events in (t - w, t - label_delay)).

All windows are found with one ``searchsorted`` over (entity, time) and summed with cumulative
sums, so a batch costs a few sorts and passes, whatever the number of entities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlplatform.project.definitions import Feature, FeatureView

_US = 1_000_000


def to_epoch_us(values) -> np.ndarray:
    """Timestamps (tz-aware or naive = UTC; Series, array or Index) -> int64 microseconds."""
    s = pd.to_datetime(pd.Series(values), utc=True).dt.as_unit("us")
    return s.astype("int64").to_numpy()


def window_aggregates(
    df: pd.DataFrame,
    view: FeatureView,
    join_keys: list[str],
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Compute ``view``'s features for every (entity, event time) in ``df``.

    Args:
        df: Source events: the join keys, ``view.timestamp_field`` and the input columns.
        view: The feature view (its features must use the built-in aggregations).
        join_keys: The view's key columns.
        start, end: Keep only output rows with ``start <= time < end`` (history before
            ``start`` still feeds the windows).

    Returns:
        ``join_keys + [timestamp_field] + feature names``; the time column is tz-aware UTC.
    """
    ts_col = view.timestamp_field
    out_cols = [*join_keys, ts_col, *view.feature_names]
    if df.empty:
        return _empty(df, view, join_keys)
    df = df.sort_values([*join_keys, ts_col], kind="stable").reset_index(drop=True)
    t = to_epoch_us(df[ts_col])
    n = len(df)
    new_group = np.zeros(n, dtype=bool)
    new_group[0] = True
    for k in join_keys:
        a = df[k].to_numpy()
        new_group[1:] |= a[1:] != a[:-1]
    gid = np.cumsum(new_group) - 1
    new_run = new_group.copy()
    new_run[1:] |= t[1:] != t[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    run_last = np.flatnonzero(np.r_[new_run[1:], True])            # last row of each run
    run_end = np.repeat(run_last + 1, np.diff(np.r_[0, run_last + 1]))  # exclusive, per row
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    locate = _Locator(gid, t)

    res = df[[*join_keys]].copy()
    res[ts_col] = pd.to_datetime(df[ts_col], utc=True).dt.as_unit("us")
    for f in view.features:
        res[f.name] = _aggregate(f, df, t, locate, run_start, run_end, group_start)
    res = res.iloc[run_last]                                   # one row per (entity, time)
    if start is not None:
        res = res[res[ts_col] >= pd.Timestamp(start)]
    if end is not None:
        res = res[res[ts_col] < pd.Timestamp(end)]
    return res[out_cols].reset_index(drop=True)


def _aggregate(f: Feature, df: pd.DataFrame, t: np.ndarray, locate: _Locator,
               run_start: np.ndarray, run_end: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    if f.agg == "event_time":
        return t / _US
    if f.agg == "time_since_prev":
        prev = run_start - 1
        has = prev >= group_start
        return np.where(has, (t - t[np.maximum(prev, 0)]) / _US, np.nan)
    w = int(f.window.total_seconds() * _US)
    lo = locate.first_after(t - w)                    # first row with time > t - w
    if f.agg == "count":
        return (run_end - lo).astype(np.int64)
    x = df[f.column]
    if f.agg == "nunique":
        codes, _ = pd.factorize(x, use_na_sentinel=True)
        total = np.zeros(len(x), dtype=np.int64)
        for v in range(codes.max() + 1):               # per value: present in the window?
            c = _cumsum(codes == v)
            total += (c[run_end] - c[lo]) > 0
        return total
    v = pd.to_numeric(x, errors="coerce").to_numpy(dtype=np.float64)
    ok = ~np.isnan(v)
    hi = run_end
    if f.agg == "label_rate":
        d = int(f.label_delay.total_seconds() * _US)
        hi = np.maximum(locate.first_at_or_after(t - d), lo)   # labels known strictly before t
    cnt = _cumsum(ok)
    n = cnt[hi] - cnt[lo]
    # Sums restart at every entity and values are centred on the entity's mean, so the
    # differences of running sums stay exact even for millions of rows of similar amounts.
    xs = pd.Series(np.where(ok, v, np.nan))
    centre = xs.groupby(locate.gid).transform("mean").fillna(0.0).to_numpy()
    xc = np.where(ok, v - centre, 0.0)
    tot = _window_sum(xc, locate.gid, lo, hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        if f.agg == "sum":
            return np.where(n > 0, tot + centre * n, 0.0)
        mean = np.where(n > 0, tot / n + centre, np.nan)
        if f.agg in ("mean", "label_rate"):
            return mean
        sq = _window_sum(xc * xc, locate.gid, lo, hi)
        var = np.maximum(sq - tot * tot / np.maximum(n, 1), 0.0)
        # Rounding leaves ~1e-16 relative residue where every value is equal: that is 0.
        var = np.where(var <= 1e-12 * sq, 0.0, var) / np.maximum(n - 1, 1)
        return np.where(n >= 2, np.sqrt(var), np.nan)


def _window_sum(x: np.ndarray, gid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum of ``x[lo:hi]`` per row, from running sums that restart at every entity."""
    incl = pd.Series(x).groupby(gid).cumsum().to_numpy()
    excl = incl - x
    last = len(x) - 1
    return np.where(hi > lo, incl[np.clip(hi - 1, 0, last)] - excl[np.minimum(lo, last)], 0.0)


class _Locator:
    """Finds, per row, the first row of the same entity at/after a time, with one searchsorted."""

    def __init__(self, gid: np.ndarray, t: np.ndarray):
        self.gid, self.t0 = gid, int(t.min())
        span = int(t.max()) - self.t0
        # Entity id and time folded into one sortable int64: entity * stride + (time - t0).
        # Queries reach back at most `stride` - span before t0; clip them to the entity's start.
        self.stride = 2 * span + 2
        if gid[-1] >= (2**62) // self.stride:   # would overflow: rank times instead (rare)
            self._ranked(t)
        else:
            self.key = gid * self.stride + (t - self.t0)

    def _ranked(self, t: np.ndarray) -> None:
        self.t_sorted = np.unique(t)
        self.stride = len(self.t_sorted) * 2 + 2
        self.key = self.gid * self.stride + 2 * np.searchsorted(self.t_sorted, t) + 1

    def _query(self, q: np.ndarray) -> np.ndarray:
        if hasattr(self, "t_sorted"):   # rank space: 2*rank+1 are rows, even numbers are between
            pos = np.searchsorted(self.t_sorted, q, side="left")
            exact = (pos < len(self.t_sorted)) & (self.t_sorted[np.minimum(pos, len(self.t_sorted) - 1)] == q)
            rel = np.where(exact, 2 * pos + 1, 2 * pos)
        else:
            rel = np.clip(q - self.t0, -1, self.stride - 1)
        return self.gid * self.stride + rel

    def first_after(self, q: np.ndarray) -> np.ndarray:
        """Per row: index of the first row of its entity with time > q (entity end if none)."""
        return np.searchsorted(self.key, self._query(q), side="right")

    def first_at_or_after(self, q: np.ndarray) -> np.ndarray:
        """Per row: index of the first row of its entity with time >= q."""
        return np.searchsorted(self.key, self._query(q), side="left")


def _cumsum(x: np.ndarray) -> np.ndarray:
    """Cumulative sum with a leading 0, so ``c[hi] - c[lo]`` sums rows ``lo..hi-1``."""
    return np.concatenate(([0], np.cumsum(x)))


def _empty(df: pd.DataFrame, view: FeatureView, join_keys: list[str]) -> pd.DataFrame:
    out = pd.DataFrame({k: df[k] if k in df else pd.Series(dtype=str) for k in join_keys})
    out[view.timestamp_field] = pd.Series(dtype="datetime64[us, UTC]")
    for f in view.features:
        out[f.name] = pd.Series(dtype=f.dtype)
    return out
