"""A transformation that fails mid-build (used by the interrupted-build test)."""

from mlplatform.features.aggregates import window_aggregates


def explode(df, view, join_keys, start=None, end=None):
    out = window_aggregates(df, view, join_keys, start, end)
    # Some groups succeed and are written first; the one holding this user fails.
    if (df["user_id"] == df["user_id"].min()).any() and len(df) and df["user_id"].min() < "u000010":
        raise RuntimeError("boom: a transformation failed mid-build")
    return out
