"""Training sets: labelled events + point-in-time features -> model inputs (Parquet).

Each labelled transaction is joined "as of" one microsecond before its own time: exactly what
the Serve app could look up online when the transaction arrived (the online store holds rows up
to the previous event), so training and serving see the same values and nothing leaks from the
transaction itself, its label, or the future.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform._fs import atomic_dir
from mlplatform._ray import read_parquet
from mlplatform.features.transforms import (
    FEATURE_COLUMNS,
    KEY_COLUMNS,
    LABEL_COLUMN,
    REQUEST_COLUMNS,
    VIEW_FEATURES,
    model_inputs,
)

#: Where the platform keeps the fraud training set, under ``storage_root``.
TRAINING_SET_DIR = ("training_sets", "fraud")
AS_OF_COLUMN = "feature_as_of"
TRAINING_SET_MANIFEST = "_training_set.json"


@dataclass(frozen=True)
class TrainingSet:
    """What :func:`build_training_set` wrote."""

    path: Path
    num_rows: int
    feature_versions: dict[str, str]


def build_training_set(store, events: Any = None, out: str | Path | None = None) -> TrainingSet:
    """Join labelled events with their point-in-time features and write the model inputs.

    Args:
        store: A :class:`~mlplatform.features.FeatureStore` whose views are built.
        events: Labelled transactions (Parquet path, pandas DataFrame or Ray Dataset); default
            the store's ``transactions`` source.
        out: Output folder (replaced atomically); default ``<storage_root>/training_sets/fraud``.

    Returns:
        The folder, its row count and the offline version of every view used.
    """
    import pyarrow.parquet as pq
    import ray.data

    out = Path(out) if out is not None else store.config.path(*TRAINING_SET_DIR)
    if events is None:
        events = store.source_path("transactions")
    if isinstance(events, (str, Path)):
        events = read_parquet(str(events), columns=[*REQUEST_COLUMNS, LABEL_COLUMN])
    elif isinstance(events, pd.DataFrame):
        events = ray.data.from_pandas(events[[*REQUEST_COLUMNS, LABEL_COLUMN]])
    versions = store.feature_versions(VIEW_FEATURES)
    entity = events.map_batches(_add_as_of, batch_format="pandas")
    joined = store.get_historical_features(entity, VIEW_FEATURES, timestamp_column=AS_OF_COLUMN,
                                           versions=versions)
    rows = joined.map_batches(_to_training_rows, batch_format="pandas")
    with atomic_dir(out) as tmp:
        rows.write_parquet(str(tmp))
        (tmp / TRAINING_SET_MANIFEST).write_text(json.dumps(
            {"feature_versions": versions, "features": FEATURE_COLUMNS,
             "view_features": VIEW_FEATURES, "as_of": "event_timestamp - 1us"}, indent=2))
    num_rows = sum(pq.read_metadata(p).num_rows for p in out.glob("*.parquet"))
    return TrainingSet(out, num_rows, versions)


def read_training_set_manifest(path: str | Path) -> dict[str, Any]:
    """The lineage file of a training set folder ({} when absent)."""
    p = Path(path) / TRAINING_SET_MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def _add_as_of(batch: pd.DataFrame) -> pd.DataFrame:
    batch[AS_OF_COLUMN] = (pd.to_datetime(batch["event_timestamp"], utc=True).dt.as_unit("us")
                           - pd.Timedelta(microseconds=1))
    return batch


def _to_training_rows(batch: pd.DataFrame) -> pd.DataFrame:
    out = batch[KEY_COLUMNS].copy()
    out[FEATURE_COLUMNS] = model_inputs(batch).to_numpy()
    out[LABEL_COLUMN] = batch[LABEL_COLUMN].astype("int64").to_numpy()
    return out
