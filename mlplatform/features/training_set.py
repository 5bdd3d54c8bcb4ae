"""Training sets: labelled events + point-in-time features -> model inputs (Parquet).

Each labelled transaction is joined "as of" one microsecond before its own time: exactly what
the Serve app could look up online when the transaction arrived (the online store holds rows up
to the previous event), so training and serving see the same values and nothing leaks from the
transaction itself, its label, or the future.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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


def build_training_set(store, events: Any = None, out: str | Path | None = None,
                       features: Sequence[str] | None = None,
                       versions: Mapping[str, str] | None = None) -> TrainingSet:
    """Join labelled events with their point-in-time features and write the model inputs.

    Args:
        store: A :class:`~mlplatform.features.FeatureStore` whose views are built.
        events: Labelled transactions (Parquet path, pandas DataFrame or Ray Dataset); default
            the store's ``transactions`` source.
        out: Output folder (replaced atomically); default ``<storage_root>/training_sets/fraud``.
        features: Feature references (``"view:feature"``, view or feature names); default the
            features the fraud model reads (:data:`VIEW_FEATURES`), written as its inputs
            (:data:`FEATURE_COLUMNS`). With other features the rows hold the keys, the event's
            fields, the requested features and, when every :data:`VIEW_FEATURES` is among
            them, the model inputs too.
        versions: Pin offline versions per view (default: each view's current version).

    Returns:
        The folder, its row count and the offline version of every view used.
    """
    import pyarrow.parquet as pq
    import ray.data

    out = Path(out) if out is not None else store.config.path(*TRAINING_SET_DIR)
    requested = list(features) if features is not None else list(VIEW_FEATURES)
    # Resolve first: an unknown reference or view fails before anything is read or written.
    names = [f for fs in store.repo.resolve(requested).values() for f in fs]
    pins = dict(versions or {})
    current = store.feature_versions(requested)
    if set(pins) - set(current):
        raise KeyError(f"versions pin view(s) {sorted(set(pins) - set(current))} that the "
                       f"requested features do not use (they use {sorted(current)})")
    versions = {view: pins.get(view, version) for view, version in current.items()}
    if events is None:
        events = store.source_path("transactions")
    if isinstance(events, (str, Path)):
        events = read_parquet(str(events), columns=[*REQUEST_COLUMNS, LABEL_COLUMN])
    elif isinstance(events, pd.DataFrame):
        events = ray.data.from_pandas(events[[*REQUEST_COLUMNS, LABEL_COLUMN]])
    entity = events.map_batches(_add_as_of, batch_format="pandas")
    model_ready = set(VIEW_FEATURES) <= set(names)
    joined = store.get_historical_features(entity, requested, timestamp_column=AS_OF_COLUMN,
                                           versions=versions)
    written = {*KEY_COLUMNS, *(FEATURE_COLUMNS if model_ready else [])}
    extra = [] if features is None else [c for c in REQUEST_COLUMNS + names if c not in written]
    rows = joined.map_batches(_to_training_rows, fn_kwargs={"model_ready": model_ready,
                                                            "extra": list(dict.fromkeys(extra))},
                              batch_format="pandas")
    with atomic_dir(out) as tmp:
        rows.write_parquet(str(tmp))
        (tmp / TRAINING_SET_MANIFEST).write_text(json.dumps(
            {"feature_versions": versions,
             "features": FEATURE_COLUMNS if model_ready else [],
             "view_features": names, "requested": requested,
             "as_of": "event_timestamp - 1us"}, indent=2))
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


def _to_training_rows(batch: pd.DataFrame, model_ready: bool = True,
                      extra: Sequence[str] = ()) -> pd.DataFrame:
    out = batch[KEY_COLUMNS].copy()
    if model_ready:
        out[FEATURE_COLUMNS] = model_inputs(batch).to_numpy()
    for col in extra:
        out[col] = batch[col].to_numpy()
    out[LABEL_COLUMN] = batch[LABEL_COLUMN].astype("int64").to_numpy()
    return out
