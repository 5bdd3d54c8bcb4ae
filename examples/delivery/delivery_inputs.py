"""Model inputs of the delivery project: an order plus its restaurant's and courier's features.

``mlplatform.yaml`` names :func:`model_inputs` (``model_inputs.function``). The platform runs it
on training sets (Ray Data, offline) and on request rows (Ray Serve, online) with the same column
types, so training and serving compute the same inputs. Stored features come from the feature
views; what depends on the order itself (how long the kitchen and the courier have been idle at
order time, the courier's pace, calendar fields, category codes) is computed here.

Columns it gets (numpy batch format): ``distance_km``, ``items``, ``order_value`` and every
looked-up feature as float64 (NaN: unknown or expired), the category fields as object arrays of
str, ``event_timestamp`` as datetime64[us] (UTC; NaT when a request leaves it out).
"""

from __future__ import annotations

import numpy as np

from mlplatform.datasets import CUISINES, VEHICLES, WEATHER

#: Fixed vocabularies: a code means the same thing offline and online; unknown values get -1.
#: (The request schema's enums and the data contract list the same values; the example's tests
#: keep them in sync.)
VOCABULARIES: dict[str, list[str]] = {
    "cuisine": list(CUISINES),
    "vehicle": list(VEHICLES),
    "weather": list(WEATHER),
}
_CODES = {col: {v: i for i, v in enumerate(vocab)} for col, vocab in VOCABULARIES.items()}
_MAX_IDLE_MIN = 24 * 60.0   # no order in the look-back: idle "a day or more"
_MIN_KM = 0.5               # floor of the courier's mean distance, so the pace stays finite
_MEAL_PEAK_HOURS = [11, 12, 13, 18, 19, 20]
_TRAFFIC_PEAK_HOURS = [7, 8, 9, 16, 17, 18]
#: Counts with no row in the TTL mean nothing happened lately (0), not unknown.
_DELIVERY_COUNTS = ["restaurant_deliveries_30d", "courier_deliveries_30d"]
#: Stats passed through as they are: NaN (no finished delivery lately) is left to the model.
_STATS = ["restaurant_minutes_mean_7d", "restaurant_minutes_mean_30d", "restaurant_minutes_std_30d",
          "restaurant_delivered_km_mean_30d", "courier_km_mean_7d", "courier_minutes_mean_30d"]


def encode(column: str, values: np.ndarray) -> np.ndarray:
    """Map categorical values to the fixed integer codes of :data:`VOCABULARIES` (unknown: -1)."""
    index = _CODES[column]
    return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def _fill_nan(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` with NaN replaced by ``fill`` (cheaper than ``np.nan_to_num`` on one row)."""
    return np.where(np.isnan(values), fill, values)


def _counts_at(counts: np.ndarray, idle_min: np.ndarray, window_min: float) -> np.ndarray:
    """Window counts as of the order time, from those stored at the entity's latest event.

    The stored count covers the window ending at that event; an entity idle for a whole window
    since has had nothing in it (0). Otherwise the stored count stands: it can only over-count
    events that left the window since, which the idle time tells the model about.
    """
    with np.errstate(invalid="ignore"):
        stale = idle_min >= window_min          # NaN (unknown time) compares False: kept
    return np.where(stale, 0.0, _fill_nan(counts, 0.0))


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's input columns (``model_inputs.columns``) for a batch of orders.

    Unknown counts become 0 and unknown idle times the cap; unknown statistics stay NaN, which
    the model treats as missing.
    """
    ts = batch["event_timestamp"].astype("datetime64[us]")
    order_s = np.where(np.isnat(ts), np.nan, ts.astype(np.int64) / 1e6)
    out: dict[str, np.ndarray] = {name: batch[name] for name in
                                  ("distance_km", "items", "order_value")}

    with np.errstate(invalid="ignore"):
        rest_idle = (order_s - batch["restaurant_last_order_at"]) / 60.0
        courier_idle = (order_s - batch["courier_last_order_at"]) / 60.0
    out["restaurant_orders_1h"] = _counts_at(batch["restaurant_orders_1h"], rest_idle, 60.0)
    out["restaurant_items_1h"] = _counts_at(batch["restaurant_items_1h"], rest_idle, 60.0)
    out["restaurant_orders_24h"] = _counts_at(batch["restaurant_orders_24h"], rest_idle, 1440.0)
    out["restaurant_idle_minutes"] = np.clip(_fill_nan(rest_idle, _MAX_IDLE_MIN), 0.0, _MAX_IDLE_MIN)
    out["courier_orders_1h"] = _counts_at(batch["courier_orders_1h"], courier_idle, 60.0)
    out["courier_orders_24h"] = _counts_at(batch["courier_orders_24h"], courier_idle, 1440.0)
    out["courier_idle_minutes"] = np.clip(_fill_nan(courier_idle, _MAX_IDLE_MIN), 0.0, _MAX_IDLE_MIN)
    for name in _DELIVERY_COUNTS:
        out[name] = _fill_nan(batch[name], 0.0)
    for name in _STATS:
        out[name] = batch[name]
    # Minutes per km of the courier's finished deliveries: kitchen waits included, so a rough
    # pace, but it ranks couriers on one scale whatever distances they were given.
    out["courier_minutes_per_km_30d"] = (batch["courier_minutes_mean_30d"]
                                         / np.maximum(batch["courier_delivered_km_mean_30d"], _MIN_KM))

    # Calendar fields in UTC (the city's local time) from epoch seconds (1970-01-01 was a
    # Thursday: Monday = 0); NaN without a time.
    days = np.floor(order_s / 86400.0)
    hour = np.floor((order_s - days * 86400.0) / 3600.0)
    out["hour_of_day"] = hour
    out["day_of_week"] = (days + 3.0) % 7.0
    out["is_meal_peak"] = np.isin(hour, _MEAL_PEAK_HOURS)
    out["is_traffic_peak"] = np.isin(hour, _TRAFFIC_PEAK_HOURS)
    for col in VOCABULARIES:
        out[f"{col}_code"] = encode(col, batch[col])
    return out
