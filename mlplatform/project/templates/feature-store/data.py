"""Example data of {{name}}: a seeded generator of labelled events, so the project trains as it
is. Replace it with your own data (point the `events` source at it) and drop `data.generate`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_events(path: str | Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` labelled events as Parquet files in the folder ``path``."""
    rng = np.random.default_rng(seed)
    n_entities = max(50, rows // 40)
    entity = rng.integers(0, n_entities, rows)
    usual = rng.lognormal(3.0, 0.6, n_entities)         # each entity's usual value
    value = usual[entity] * rng.lognormal(0.0, 0.35, rows)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    ts = start + pd.to_timedelta(rng.uniform(0, 30 * 86400, rows), unit="s")
    category = rng.choice(["a", "b", "c", "d"], rows, p=[0.4, 0.3, 0.2, 0.1])
    hour = ts.hour.to_numpy()
    # The label: an unusual value for the entity, category d and night hours raise the odds.
    logit = (-3.2 + 2.2 * (value / usual[entity] > 1.6) + 1.0 * (category == "d")
             + 0.8 * (hour < 6) + rng.normal(0.0, 0.5, rows))
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    df = pd.DataFrame({"entity_id": [f"e{i:05d}" for i in entity], "event_timestamp": ts,
                       "value": np.round(value, 2), "category": category, "label": label})
    df = df.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    df.insert(0, "event_id", [f"ev-{seed}-{i:08d}" for i in range(rows)])
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    for i, part in enumerate(np.array_split(np.arange(rows), 2)):
        df.iloc[part].to_parquet(folder / f"part-{i:03d}.parquet", index=False)
    return folder
