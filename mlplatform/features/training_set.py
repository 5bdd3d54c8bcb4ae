"""Training sets: a project's labelled rows + point-in-time features + model inputs (Parquet).

For a feature-store project, each labelled event is joined "as of" one microsecond before its
own time: exactly what serving could look up online when the event arrived (the online store
holds rows up to the previous event), so training and serving see the same values and nothing
leaks from the event itself, its label, or the future. A tabular project's rows are its table's.

Every row then goes through the project's model-inputs function, the same code serving runs.
A training set holds, per row: the request fields, the looked-up features, the model inputs,
the label (encoded: 0/1 for binary, the class index for multiclass, the value for regression)
and, without a time column, ``_split_u``: a uniform number in [0, 1) from a hash of the row,
which the seeded random split cuts. A request field or feature that a model-inputs function
turns into a model input of the same name is kept as ``__raw_<name>`` (:func:`raw_frame` gives
the raw columns back under their own names). ``_training_set.json`` beside the Parquet records the
project, the task, the columns and the offline feature versions used (lineage).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform._fs import atomic_dir
from mlplatform._ray import read_parquet
from mlplatform.errors import DataValidationError

AS_OF_COLUMN = "feature_as_of"
TRAINING_SET_MANIFEST = "_training_set.json"
#: Without a time column, rows are split on this column: uniform in [0, 1), a hash of the row.
SPLIT_COLUMN = "_split_u"
#: Where a project's training set lives by default, under ``storage_root``.
TRAINING_SET_DIR = "training_sets"
#: Prefix of a raw column (request field or feature) whose name a model input also has.
RAW_PREFIX = "__raw_"


@dataclass(frozen=True)
class TrainingSet:
    """What :func:`build_training_set` wrote."""

    path: Path
    num_rows: int
    feature_versions: dict[str, str]


def training_set_dir(config, project) -> Path:
    """``<storage_root>/training_sets/<project name>``."""
    return config.path(TRAINING_SET_DIR, project.name)


def build_training_set(project, store=None, *, config=None, events: Any = None,
                       out: str | Path | None = None, features: Sequence[str] | None = None,
                       versions: Mapping[str, str] | None = None) -> TrainingSet:
    """Make the training set of ``project`` and write it as Parquet (replaced atomically).

    Args:
        project: The :class:`~mlplatform.project.Project` (its model-inputs function loaded).
        store: Its :class:`~mlplatform.features.FeatureStore` (feature-store projects; the
            views must be built).
        config: The platform config (tabular projects; default ``store.config``).
        events: Labelled rows instead of the project's own (a Parquet path, a pandas DataFrame
            or a Ray Dataset): request fields, the label and, for feature-store projects, the
            time column.
        out: Output folder; default ``<storage_root>/training_sets/<project>``.
        features: Extra feature references to join beside the project's ``features`` (kept as
            columns, e.g. to train on them directly).
        versions: Pin offline versions per view (default: each view's current version).

    Returns:
        The folder, its row count and the offline version of every view used.

    Raises:
        DataValidationError: The labelled rows lack a column, a label is outside the task's
            classes, or a model input named like a request field differs from it.
        KeyError: A feature reference or a pinned view is unknown.
    """
    import pyarrow.parquet as pq

    from mlplatform.project import model_inputs

    config = config if config is not None else store.config
    out = Path(out) if out is not None else training_set_dir(config, project)
    inputs = model_inputs(project)
    task, data = project.task, project.data
    names: list[str] = []
    versions_used: dict[str, str] = {}
    requested = list(dict.fromkeys([*project.features, *(features or [])]))
    if project.uses_feature_store:
        # Resolve first: an unknown reference or view fails before anything is read or written.
        names = [f for fs in store.repo.resolve(requested).values() for f in fs] if requested \
            else []
        pins = dict(versions or {})
        current = store.feature_versions(requested) if requested else {}
        if set(pins) - set(current):
            raise KeyError(f"versions pin view(s) {sorted(set(pins) - set(current))} that the "
                           f"requested features do not use (they use {sorted(current)})")
        versions_used = {view: pins.get(view, version) for view, version in current.items()}
    rows = _labelled_rows(project, store, config, events)
    if project.uses_feature_store and requested:
        entity = rows.map_batches(_add_as_of, fn_kwargs={"column": data.timestamp},
                                  batch_format="pandas")
        rows = store.get_historical_features(entity, requested, timestamp_column=AS_OF_COLUMN,
                                             versions=versions_used)
    raw = [*project.request_fields, *(c for c in [data.timestamp] if c and
                                      c not in project.request.fields)]
    looked_up = [n for n in names if n not in raw]
    renamed = stored_raw_names([*raw, *looked_up], inputs)
    spec = {"inputs": inputs, "raw": raw, "looked_up": looked_up, "renamed": renamed,
            "label": task.label,
            "task": task.type, "positive": task.positive_class,
            "classes": list(task.classes or []), "random_split": data.timestamp is None}
    written = rows.map_batches(_to_training_rows, fn_kwargs=spec, batch_format="pandas")
    with atomic_dir(out) as tmp:
        written.write_parquet(str(tmp))
        (tmp / TRAINING_SET_MANIFEST).write_text(json.dumps({
            "project": project.name, "project_file": str(project.file or ""),
            "task": task.model_dump(mode="json"), "label": task.label,
            "features": inputs.columns, "categorical": project.categorical,
            "request_fields": project.request_fields, "view_features": looked_up,
            "raw_columns": {c: renamed.get(c, c) for c in [*raw, *looked_up]},
            "timestamp": data.timestamp, "validation_fraction": data.validation_fraction,
            "split": "time" if data.timestamp else "random",
            "feature_versions": versions_used, "requested": requested,
            "as_of": f"{data.timestamp} - 1us" if project.uses_feature_store else None,
        }, indent=2))
    num_rows = sum(pq.read_metadata(p).num_rows for p in out.glob("*.parquet"))
    return TrainingSet(out, num_rows, versions_used)


def read_training_set_manifest(path: str | Path) -> dict[str, Any]:
    """The lineage file of a training set folder ({} when absent)."""
    p = Path(path) / TRAINING_SET_MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def _labelled_rows(project, store, config, events: Any):
    """The labelled rows as a Ray Dataset: ``events`` if given, else the project's source
    (feature store) or table (tabular), with the columns a training set needs."""
    import ray.data

    data = project.data
    wanted = [*project.request_fields, project.task.label,
              *(c for c in [data.timestamp] if c and c not in project.request.fields)]
    if events is None:
        path = (store.source_path(data.events) if project.uses_feature_store
                else table_path(config, project))
        events = str(path)
    if isinstance(events, pd.DataFrame):
        return ray.data.from_pandas(events[[c for c in wanted if c in events.columns]])
    if isinstance(events, (str, Path)):
        if str(events).endswith(".csv") or (Path(events).is_dir() and
                                             any(Path(events).glob("*.csv"))):
            ds = ray.data.read_csv(str(events))
            return ds.select_columns([c for c in wanted if c in ds.schema().names])
        import pyarrow.parquet as pq

        present = pq.ParquetDataset(str(events)).schema.names
        return read_parquet(str(events), columns=[c for c in wanted if c in present])
    return events


def table_path(config, project) -> Path:
    """Where a tabular project's table is (relative paths: under ``storage_root``).

    Raises:
        DataValidationError: Nothing is there.
    """
    p = Path(project.data.table)
    path = p if p.is_absolute() else config.path(*p.parts)
    if not path.exists():
        raise DataValidationError(
            f"project {project.name}: data.table {path} does not exist; write it there (or set "
            "data.generate to a function that does), or fix data.table in "
            f"{project.file or 'the project file'}")
    return path


def _add_as_of(batch: pd.DataFrame, column: str) -> pd.DataFrame:
    batch[AS_OF_COLUMN] = (pd.to_datetime(batch[column], utc=True).dt.as_unit("us")
                           - pd.Timedelta(microseconds=1))
    return batch


def encode_labels(values: pd.Series, task: str, positive: Any = 1,
                  classes: Sequence[Any] = ()) -> np.ndarray:
    """Labels as the model learns them: 0/1 (binary: 1 is ``positive``), the index in
    ``classes`` (multiclass) or float64 (regression).

    Raises:
        DataValidationError: A label is missing, or outside ``classes``.
    """
    if values.isna().any():
        raise DataValidationError(f"{int(values.isna().sum())} row(s) have no label")
    if task == "regression":
        return values.to_numpy(dtype=np.float64)
    if task == "binary":
        uniq = pd.unique(values).tolist()
        if len(uniq) > 2:
            raise DataValidationError(f"binary labels take two values; found "
                                      f"{sorted(uniq, key=str)[:10]}")
        return (values == positive).to_numpy(dtype=np.int64)
    index = {str(c): i for i, c in enumerate(classes)}
    codes = values.astype(str).map(index)
    if codes.isna().any():
        unknown = sorted(set(values[codes.isna()].astype(str)))[:10]
        raise DataValidationError(f"label value(s) {unknown} are not among the task's classes "
                                  f"{list(classes)}; add them to task.classes")
    return codes.to_numpy(dtype=np.int64)


def stored_raw_names(raw: Sequence[str], inputs) -> dict[str, str]:
    """Raw columns stored under another name: those a model-inputs function turns into a model
    input of the same name (``{name: "__raw_<name>"}``). Columns that pass through (no
    function) keep their name."""
    if inputs.function is None:
        return {}
    return {c: RAW_PREFIX + c for c in raw if c in set(inputs.columns)}


def raw_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The raw ``columns`` (request fields and features) of training-set rows, under their own
    names (``__raw_<name>`` where a model input took the name)."""
    return pd.DataFrame({c: frame[RAW_PREFIX + c] if RAW_PREFIX + c in frame.columns
                         else frame[c] for c in columns if c in frame.columns
                         or RAW_PREFIX + c in frame.columns}, index=frame.index)


def _to_training_rows(batch: pd.DataFrame, inputs, raw: Sequence[str], looked_up: Sequence[str],
                      renamed: Mapping[str, str], label: str, task: str, positive: Any,
                      classes: Sequence[Any], random_split: bool) -> pd.DataFrame:
    batch = batch.reset_index(drop=True)
    for name in inputs.fields:          # optional request fields the rows do not carry
        if name not in batch.columns:
            batch[name] = None
    out = pd.DataFrame(index=batch.index)
    for name in raw:
        if name in batch.columns:
            out[renamed.get(name, name)] = batch[name].to_numpy()
    for name in looked_up:
        out[renamed.get(name, name)] = pd.to_numeric(batch[name], errors="coerce").to_numpy(
            dtype=np.float64)
    for name, col in inputs.transform(inputs.batch_from_frame(batch)).items():
        out[name] = col
    out[label] = encode_labels(batch[label], task, positive, classes)
    if random_split:
        hashed = pd.util.hash_pandas_object(batch[[c for c in raw if c in batch.columns]
                                                  + [label]], index=False).to_numpy()
        out[SPLIT_COLUMN] = (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out
