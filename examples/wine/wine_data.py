"""The wine project's data: scikit-learn's bundled wine recognition dataset (178 wines from three
cultivars, 13 chemical measurements each; UCI), written as one Parquet table. No download: the
data ships inside scikit-learn.

A real dataset, so ``rows`` cannot add rows: it takes the first ``rows`` of a seeded shuffle
(all 178 by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_wine(path: str | Path, rows: int = 178, seed: int = 0) -> Path:
    """Write the wines as one Parquet file at ``path``; the label ``cultivar`` is the class
    name (``class_0``, ``class_1``, ``class_2``)."""
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True)
    frame = data.frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
    frame["cultivar"] = np.array(data.target_names)[frame.pop("target").to_numpy()]
    order = np.random.default_rng(seed).permutation(len(frame))[: min(rows, len(frame))]
    frame = frame.iloc[order].reset_index(drop=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path
