"""Model inputs of {{name}}: request fields + looked-up features -> the model's columns.

The platform runs :func:`model_inputs` on training sets (offline) and on request rows (online)
with the same column types, so training and serving compute the same inputs. Numbers (and every
looked-up feature) are float64 with NaN where missing; strings are object arrays;
timestamps are datetime64[us] (UTC). Return every column of model_inputs.columns.
"""

from __future__ import annotations

import numpy as np

CATEGORIES = ["a", "b", "c", "d"]     # request.fields.category.enum, in this order
_CODES = {v: i for i, v in enumerate(CATEGORIES)}


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's input columns for a batch of events (vectorised)."""
    value = batch["value"]
    mean7 = batch["entity_value_mean_7d"]
    event_s = batch["event_timestamp"].astype("datetime64[us]").astype(np.int64) / 1e6
    with np.errstate(invalid="ignore", divide="ignore"):
        gap_h = (event_s - batch["entity_last_event_at"]) / 3600.0
    return {
        "value": value,
        "value_vs_usual": (value + 1.0) / (mean7 + 1.0),    # NaN for a new entity
        "entity_events_24h": np.nan_to_num(batch["entity_events_24h"], nan=0.0),
        "entity_events_7d": np.nan_to_num(batch["entity_events_7d"], nan=0.0),
        "hours_since_prev": np.clip(np.nan_to_num(gap_h, nan=168.0), 0.0, 168.0),
        "hour_of_day": np.floor((event_s % 86400.0) / 3600.0),
        "category_code": np.fromiter((_CODES.get(v, -1) for v in batch["category"]),
                                     dtype=np.int64, count=len(value)),
    }
