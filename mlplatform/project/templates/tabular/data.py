"""Example data of {{name}}: a seeded table of labelled rows, so the project trains as it is.
Replace it with your own table (data.table) and drop `data.generate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_table(path: str | Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` labelled rows as one Parquet file at ``path``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (rows, 3))
    x4 = rng.exponential(1.0, rows)
    logit = 1.5 * x[:, 0] - 1.0 * x[:, 1] + 0.5 * x[:, 2] * x[:, 0] + 0.8 * (x4 > 2.0) - 0.5
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    df = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "x4": x4, "label": label})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path
