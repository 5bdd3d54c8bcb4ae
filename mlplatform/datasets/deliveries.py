"""Seeded generator of realistic food-delivery orders with their delivery time (a regression label).

One city over ``days`` days (local time is UTC, like London in winter). Each restaurant has a
cuisine, a popularity, a preparation habit and a sensitivity to the lunch and dinner rush; each
courier has a vehicle, a skill (how fast they ride for their vehicle) and a hand-over overhead.
Weather comes in spells of a few hours and slows riders (bikes most). An order's delivery time is
kitchen time (the restaurant's habit, more items, the rush, orders already queued in the kitchen)
plus riding time (distance at the vehicle's speed, the courier's skill, the weather, commuter
traffic for cars and scooters) plus hand-over (the courier's overhead, weather, orders the courier
already carries), with multiplicative noise and occasional incidents. So the request fields alone
explain part of it, and the restaurant's and the courier's recent history explain more.

``delivered_at`` (order time + delivery time) is when the label becomes known: feature views of
past delivery times are keyed on it, so a lookup at order time only sees finished deliveries.

Example:
    >>> from mlplatform.datasets import DELIVERY_COLUMNS, make_deliveries
    >>> df = make_deliveries(10_000, seed=7)
    >>> list(df.columns) == DELIVERY_COLUMNS
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DELIVERY_COLUMNS = [
    "order_id", "courier_id", "restaurant_id", "event_timestamp", "distance_km", "items",
    "order_value", "cuisine", "vehicle", "weather", "delivery_minutes", "delivered_at",
]

#: Cuisines, each with (share of restaurants, base kitchen minutes, price per item).
_CUISINE_PARAMS: dict[str, tuple[float, float, float]] = {
    "pizza": (0.16, 14.0, 11.0),
    "burgers": (0.15, 10.0, 10.0),
    "sushi": (0.08, 16.0, 15.0),
    "indian": (0.10, 18.0, 12.0),
    "chinese": (0.11, 13.0, 10.0),
    "thai": (0.07, 15.0, 11.0),
    "mexican": (0.09, 11.0, 9.0),
    "italian": (0.09, 17.0, 14.0),
    "salads": (0.08, 7.0, 10.0),
    "desserts": (0.07, 6.0, 6.0),
}
#: Vehicles, each with (share of couriers, city speed in km/h, slowdown in commuter traffic).
_VEHICLE_PARAMS: dict[str, tuple[float, float, float]] = {
    "bike": (0.40, 15.0, 1.00),
    "scooter": (0.35, 24.0, 1.20),
    "car": (0.25, 28.0, 1.50),
}
#: Weather, each with (share of time, order volume factor, extra hand-over minutes, riding-time
#: factor per vehicle in _VEHICLE_PARAMS order).
_WEATHER_PARAMS: dict[str, tuple[float, float, float, tuple[float, float, float]]] = {
    "clear": (0.35, 1.00, 0.0, (1.00, 1.00, 1.00)),
    "cloudy": (0.30, 1.00, 0.0, (1.00, 1.00, 1.00)),
    "rain": (0.20, 1.20, 1.5, (1.20, 1.15, 1.10)),
    "heavy_rain": (0.07, 1.35, 3.0, (1.45, 1.35, 1.25)),
    "snow": (0.08, 1.30, 5.0, (1.80, 1.60, 1.35)),
}

#: The fixed vocabularies of the categorical columns (the example's request enums, data contract
#: and model-input codes list the same values, in this order).
CUISINES: tuple[str, ...] = tuple(_CUISINE_PARAMS)
VEHICLES: tuple[str, ...] = tuple(_VEHICLE_PARAMS)
WEATHER: tuple[str, ...] = tuple(_WEATHER_PARAMS)

#: Orders per hour of the day (local = UTC): a lunch and a bigger dinner peak.
_DIURNAL = np.array([0.6, 0.3, 0.15, 0.1, 0.1, 0.1, 0.2, 0.5, 0.8, 1.0, 1.6, 3.5,
                     5.0, 4.0, 2.0, 1.5, 2.0, 3.5, 6.0, 7.0, 5.5, 3.5, 2.0, 1.2])
#: Orders per weekday (Monday = 0): the weekend orders more.
_WEEKDAY = np.array([0.9, 0.9, 0.95, 1.0, 1.2, 1.35, 1.25])
_MEAL_PEAK_HOURS = (11, 12, 13, 18, 19, 20)      # kitchens are slower: the rush
_TRAFFIC_PEAK_HOURS = (7, 8, 9, 16, 17, 18)      # roads are slower: commuters
_WEATHER_SPELL_HOURS = 3                          # weather may change every 3 hours
_WEATHER_PERSISTENCE = 0.7                        # chance a spell keeps the previous weather
_KITCHEN_WINDOW_S = 30 * 60                       # orders queued in the kitchen
_COURIER_WINDOW_S = 40 * 60                       # orders a courier may still be carrying
#: Dispatch: the shares of (bike, scooter, car) for orders below 2 km, 2-5 km and above 5 km;
#: long orders go to motor vehicles.
_DISPATCH = np.array([[0.60, 0.30, 0.10], [0.35, 0.40, 0.25], [0.10, 0.35, 0.55]])


def make_deliveries(
    n_rows: int,
    seed: int = 0,
    n_restaurants: int | None = None,
    n_couriers: int | None = None,
    start: str | pd.Timestamp = "2026-01-01",
    days: int = 60,
) -> pd.DataFrame:
    """Generate ``n_rows`` delivery orders sorted by order time.

    Args:
        n_rows: Number of orders (>= 1).
        seed: Random seed; the same arguments and seed give identical data.
        n_restaurants: Number of restaurants; default ``max(20, n_rows // 250)``.
        n_couriers: Number of couriers; default ``max(15, n_rows // 150)``.
        start: First day of the period (UTC).
        days: Length of the period in days.

    Returns:
        DataFrame with columns :data:`DELIVERY_COLUMNS`: ``event_timestamp`` (order time) and
        ``delivered_at`` are ``datetime64[us, UTC]``, ``items`` is int64, ``delivery_minutes``
        (the label) is a positive float.

    Raises:
        ValueError: ``n_rows``, ``n_restaurants``, ``n_couriers`` or ``days`` not a positive
            integer.
    """
    for name, value in (("n_rows", n_rows), ("n_restaurants", n_restaurants),
                        ("n_couriers", n_couriers), ("days", days)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n_restaurants = n_restaurants or max(20, n_rows // 250)
    n_couriers = n_couriers or max(15, n_rows // 150)
    t0 = pd.Timestamp(start)
    t0 = (t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")).as_unit("us")
    rng = np.random.default_rng(seed)
    cuisine_p = _norm([p[0] for p in _CUISINE_PARAMS.values()])
    cuisine_prep = np.array([p[1] for p in _CUISINE_PARAMS.values()])
    cuisine_price = np.array([p[2] for p in _CUISINE_PARAMS.values()])
    vehicle_p = _norm([p[0] for p in _VEHICLE_PARAMS.values()])
    vehicle_kmh = np.array([p[1] for p in _VEHICLE_PARAMS.values()])
    vehicle_traffic = np.array([p[2] for p in _VEHICLE_PARAMS.values()])
    weather_p = _norm([p[0] for p in _WEATHER_PARAMS.values()])
    weather_volume = np.array([p[1] for p in _WEATHER_PARAMS.values()])
    weather_extra = np.array([p[2] for p in _WEATHER_PARAMS.values()])
    weather_slow = np.array([p[3] for p in _WEATHER_PARAMS.values()])   # (weather, vehicle)

    # Restaurants and their habits (every cuisine present, as far as there are restaurants).
    r_cuisine = np.concatenate([np.arange(len(CUISINES)), rng.choice(
        len(CUISINES), max(0, n_restaurants - len(CUISINES)), p=cuisine_p)])[:n_restaurants]
    r_popularity = rng.lognormal(0.0, 1.0, n_restaurants)
    r_prep = cuisine_prep[r_cuisine] * rng.lognormal(0.0, 0.25, n_restaurants)
    r_rush = rng.uniform(1.05, 1.6, n_restaurants)           # kitchen slowdown in the rush
    r_radius = rng.lognormal(np.log(2.6), 0.25, n_restaurants)

    # Couriers and theirs (every vehicle present, so any order can be dispatched).
    c_vehicle = np.concatenate([np.arange(len(VEHICLES)), rng.choice(
        len(VEHICLES), max(0, n_couriers - len(VEHICLES)), p=vehicle_p)])[:n_couriers]
    c_skill = np.clip(rng.lognormal(0.0, 0.12, n_couriers), 0.75, 1.4)   # riding-time factor
    c_handover = rng.uniform(1.5, 5.0, n_couriers)
    c_activity = rng.lognormal(0.0, 0.7, n_couriers)

    # When: hourly slots weighted by time of day, weekday and weather (bad weather, more orders).
    n_slots = days * 24
    spells = -(-n_slots // _WEATHER_SPELL_HOURS)
    draws = rng.choice(len(WEATHER), spells, p=weather_p)
    change = rng.random(spells) >= _WEATHER_PERSISTENCE
    change[0] = True
    spell_weather = draws[np.maximum.accumulate(np.where(change, np.arange(spells), 0))]
    slot_weather = np.repeat(spell_weather, _WEATHER_SPELL_HOURS)[:n_slots]
    slot_hour = np.arange(n_slots) % 24
    slot_weekday = (t0.dayofweek + np.arange(n_slots) // 24) % 7
    slot_w = _DIURNAL[slot_hour] * _WEEKDAY[slot_weekday] * weather_volume[slot_weather]
    slot = rng.choice(n_slots, n_rows, p=slot_w / slot_w.sum())
    t_s = slot * 3600 + rng.integers(0, 3600, n_rows)            # seconds since start
    order = np.argsort(t_s, kind="stable")
    slot, t_s = slot[order], t_s[order]
    hour, weather = slot_hour[slot], slot_weather[slot]

    # What: restaurant, basket, distance; then a courier whose vehicle suits the distance.
    rest = rng.choice(n_restaurants, n_rows, p=r_popularity / r_popularity.sum())
    cuisine = r_cuisine[rest]
    items = np.minimum(1 + rng.poisson(1.4, n_rows), 15)
    order_value = np.round(np.maximum(
        items * cuisine_price[cuisine] * rng.lognormal(0.0, 0.25, n_rows), 3.0), 2)
    distance = np.round(np.clip(r_radius[rest] * rng.lognormal(0.0, 0.5, n_rows), 0.3, 15.0), 2)
    band = np.digitize(distance, [2.0, 5.0])
    vehicle = (rng.random(n_rows)[:, None] > np.cumsum(_DISPATCH[band], axis=1)[:, :2]).sum(1)
    courier = np.empty(n_rows, dtype=np.int64)
    for v in range(len(VEHICLES)):
        rows = np.flatnonzero(vehicle == v)
        pool = np.flatnonzero(c_vehicle == v)
        courier[rows] = rng.choice(pool, len(rows), p=_norm(c_activity[pool]))

    # How long: kitchen + riding + hand-over, times noise, plus rare incidents.
    meal_peak = np.isin(hour, _MEAL_PEAK_HOURS)
    traffic_peak = np.isin(hour, _TRAFFIC_PEAK_HOURS)
    queued = _recent(rest, t_s, _KITCHEN_WINDOW_S)
    carrying = _recent(courier, t_s, _COURIER_WINDOW_S)
    # A minute per order already queued in the kitchen (at most 8: then it has a backlog).
    kitchen = (r_prep[rest] * (1.0 + 0.10 * (items - 1)) * np.where(meal_peak, r_rush[rest], 1.0)
               + np.minimum(queued, 8))
    riding = (distance / vehicle_kmh[vehicle] * 60.0 * c_skill[courier]
              * weather_slow[weather, vehicle] * np.where(traffic_peak, vehicle_traffic[vehicle], 1.0))
    handover = c_handover[courier] + weather_extra[weather] + 3.0 * np.minimum(carrying, 3)
    minutes = (kitchen + riding + handover) * rng.lognormal(0.0, 0.10, n_rows)
    minutes += rng.normal(0.0, 1.5, n_rows)
    minutes += np.where(rng.random(n_rows) < 0.04, rng.exponential(12.0, n_rows), 0.0)
    minutes = np.round(np.maximum(minutes, 5.0), 2)

    ordered_at = t0 + pd.to_timedelta(t_s, unit="s")
    df = pd.DataFrame({
        "order_id": [f"ord-{seed}-{i:09d}" for i in range(n_rows)],
        "courier_id": np.array([f"c{i:05d}" for i in range(n_couriers)])[courier],
        "restaurant_id": np.array([f"r{i:05d}" for i in range(n_restaurants)])[rest],
        "event_timestamp": ordered_at,
        "distance_km": distance,
        "items": items.astype(np.int64),
        "order_value": order_value,
        "cuisine": np.array(CUISINES)[cuisine],
        "vehicle": np.array(VEHICLES)[vehicle],
        "weather": np.array(WEATHER)[weather],
        "delivery_minutes": minutes,
        "delivered_at": ordered_at + pd.to_timedelta(np.round(minutes * 60e6).astype(np.int64),
                                                     unit="us"),
    })
    for col in ("courier_id", "restaurant_id", "cuisine", "vehicle", "weather"):
        df[col] = df[col].astype(str)
    for col in ("event_timestamp", "delivered_at"):
        df[col] = df[col].astype("datetime64[us, UTC]")
    return df[DELIVERY_COLUMNS]


def save_deliveries(df: pd.DataFrame, folder: str | Path, n_files: int = 4) -> Path:
    """Write orders as ``n_files`` Parquet files (so Ray Data reads them in parallel).

    The folder is replaced atomically: a failure leaves the previous data untouched.

    Returns:
        The folder holding the Parquet files.
    """
    from mlplatform._fs import atomic_dir

    with atomic_dir(folder) as tmp:
        for i, part in enumerate(np.array_split(np.arange(len(df)), max(1, n_files))):
            if len(part):
                df.iloc[part].to_parquet(tmp / f"part-{i:05d}.parquet", index=False)
    return Path(folder)


def write_deliveries(path: str | Path, rows: int, seed: int = 0) -> Path:
    """Generate ``rows`` orders and write them as Parquet under ``path``: a project's
    ``data.generate.function`` (``mlplatform.datasets:write_deliveries``)."""
    return save_deliveries(make_deliveries(rows, seed=seed), path)


def _recent(group: np.ndarray, t_s: np.ndarray, window_s: int) -> np.ndarray:
    """Per row: earlier rows of the same group within the last ``window_s`` seconds (same
    second excluded), from one sort and two ``searchsorted`` of sorted queries (fast)."""
    stride = int(t_s.max()) + window_s + 1        # group and time folded into one sortable key
    key = group.astype(np.int64) * stride + t_s
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    out = np.empty(len(key), dtype=np.int64)
    out[order] = (np.searchsorted(sorted_key, sorted_key, side="left")
                  - np.searchsorted(sorted_key, sorted_key - window_s, side="right"))
    return out


def _norm(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()
