"""The model-inputs transformation of a project, run the same way offline and online.

A project declares ``model_inputs.function`` (``module:function`` in its folder). The function
gets one batch of rows and returns the model's input columns. :class:`ModelInputs` builds that
batch with the same column types from either side:

- offline, from a pandas batch of a training set or a batch-scoring input (Ray Data);
- online, from validated request records plus the features looked up in the online store.

Column types the function sees (``batch_format: numpy``, a dict of 1-D arrays; ``pandas``: a
DataFrame of the same arrays):

- ``int``, ``float`` and ``bool`` request fields, and every looked-up feature: ``float64``,
  NaN where the value is missing;
- ``string`` fields: ``object`` arrays of ``str``, ``None`` where missing;
- ``timestamp`` fields: ``datetime64[us]`` in UTC, ``NaT`` where missing.

The project's Python modules are imported from the project folder (as one private package, so
they import each other relatively: ``from .helpers import x``) and registered with cloudpickle
to travel *by value*: Ray Data tasks and Serve replicas get the function's code with
the task, so they run it wherever they run, with no copy of the folder on their node.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.errors import DataValidationError, ProjectError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = pd.Timedelta(microseconds=1).to_pytimedelta()


def load_function(root: Path, ref: str, where: str) -> Callable[..., Any]:
    """Import ``module:function`` from the project folder ``root``.

    The module is imported as part of a package private to that folder (so two projects may
    both have an ``inputs.py``), and registered with cloudpickle to be pickled by value.

    Raises:
        ProjectError: The module cannot be imported or has no such function (naming ``where``,
            the key of the project file that names it).
    """
    return import_function(ref, root, where, in_project=True)


def import_function(ref: str, root: Path | None, where: str, in_project: bool | None = None
                    ) -> Callable[..., Any]:
    """Import ``module:function``: from the project folder ``root`` when the module is there
    (pickled by value), else as an installed module (e.g. ``mlplatform.datasets``).

    Args:
        in_project: True: only from the project folder; None: the folder first.

    Raises:
        ProjectError: The module cannot be imported or has no such function.
    """
    module_name, _, attr = ref.partition(":")
    local = root is not None and _in_folder(Path(root), module_name)
    if in_project and not local:
        raise ProjectError(f"{where}: no module {module_name!r} in the project folder {root}; "
                           f"put {module_name.replace('.', '/')}.py there")
    try:
        module = importlib.import_module(
            f"{_project_package(root)}.{module_name}" if local else module_name)
    except ModuleNotFoundError as exc:
        if local and exc.name and _in_folder(Path(root), exc.name):
            raise ProjectError(
                f"{where}: {module_name}.py imports {exc.name!r} as a top-level module; modules "
                f"of a project folder import each other relatively: `from .{exc.name} import "
                "...`") from None
        raise ProjectError(f"{where}: cannot import module {module_name!r} ({exc}); put "
                           f"{module_name.replace('.', '/')}.py in the project folder {root}"
                           ) from None
    except Exception as exc:
        raise ProjectError(f"{where}: importing {module_name!r} raised "
                           f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ProjectError(f"{where}: module {module_name!r} ({module.__file__}) has no function "
                           f"{attr!r}")
    if local:
        _by_value(sys.modules[_project_package(root)])
    return fn


def _in_folder(root: Path, module_name: str) -> bool:
    """Whether ``module_name`` is a module or package inside ``root``."""
    first = root.joinpath(*module_name.split("."))
    return first.with_suffix(".py").is_file() or (first / "__init__.py").is_file()


def _project_package(root: Path) -> str:
    """A package whose path is the project folder, named after it (created once)."""
    root = Path(root).resolve()
    name = "_mlp_project_" + hashlib.sha1(str(root).encode()).hexdigest()[:12]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(root)]
        sys.modules[name] = package
    return name


def _by_value(module: Any) -> None:
    """Pickle the functions of ``module`` and its submodules by value (Ray's cloudpickle and
    the plain one): a project package, so helpers its modules import travel too."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(module)
    try:
        import cloudpickle
    except ImportError:   # only Ray's copy is needed: Ray pickles tasks and Serve args with it
        return
    cloudpickle.register_pickle_by_value(module)


class ModelInputs:
    """A project's model-inputs transformation, ready to run on a batch of rows.

    Args:
        columns: The model's input columns, in order.
        fields: Request field name -> type (``string``, ``int``, ``float``, ``bool``,
            ``timestamp``): the raw columns the function gets.
        features: Looked-up feature names the function gets too (float64).
        function: The project's function (None: the columns pass through from the fields).
        batch_format: ``numpy`` (dict of arrays) or ``pandas``.
        name: Shown in errors (the project file and key).
    """

    def __init__(self, columns: Sequence[str], fields: Mapping[str, str],
                 features: Sequence[str] = (), function: Callable[..., Any] | None = None,
                 batch_format: str = "numpy", name: str = "model_inputs"):
        self.columns = list(columns)
        self.fields = dict(fields)
        self.features = list(features)
        self.function = function
        self.batch_format = batch_format
        self.name = name

    @property
    def raw_columns(self) -> list[str]:
        """What the function reads: the request fields, then the looked-up features."""
        return [*self.fields, *(f for f in self.features if f not in self.fields)]

    # ------------------------------------------------------------------ building batches ----
    def batch_from_records(self, records: Sequence[Mapping[str, Any]],
                           looked_up: Mapping[str, Sequence[Any]] | None = None
                           ) -> dict[str, np.ndarray]:
        """The batch of request ``records`` (validated dicts) and their looked-up features
        (``{feature: [value per record]}``, None where unknown): the serving path."""
        batch = {name: _from_values([r.get(name) for r in records], kind)
                 for name, kind in self.fields.items()}
        looked_up = looked_up or {}
        for name in self.features:
            if name not in batch:
                batch[name] = np.array(looked_up[name], dtype=np.float64)
        return batch

    def batch_from_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The batch of rows of ``frame`` (a training set's or a scoring input's rows): the
        offline path. Optional request fields missing from ``frame`` are all missing.

        Raises:
            DataValidationError: A required column is missing from ``frame``.
        """
        missing = [c for c in self.raw_columns if c not in frame.columns]
        if missing:
            raise DataValidationError(f"{self.name}: rows lack column(s) {missing} that the "
                                      f"transformation reads; they have {list(frame.columns)}")
        batch = {name: _from_series(frame[name], kind) for name, kind in self.fields.items()}
        for name in self.features:
            if name not in batch:
                batch[name] = _from_series(frame[name], "float")
        return batch

    # ------------------------------------------------------------------ the transformation --
    def transform(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The function's output columns for ``batch``, as float64 arrays in column order.

        Raises:
            DataValidationError: The output lacks a declared column or has the wrong length.
        """
        matrix = self.matrix(batch)
        return {name: matrix[:, j] for j, name in enumerate(self.columns)}

    def matrix(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model inputs of ``batch`` as a float64 matrix (rows x :attr:`columns`).

        Raises:
            DataValidationError: The output lacks a declared column or has the wrong length.
        """
        n = len(next(iter(batch.values()))) if batch else 0
        if self.function is None:
            out: Any = batch
        elif self.batch_format == "pandas":
            out = self.function(pd.DataFrame(batch))
        else:
            out = self.function(dict(batch))
        matrix = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            try:
                values = out[name]
            except (KeyError, IndexError, TypeError):
                got = list(out.keys()) if hasattr(out, "keys") else type(out).__name__
                raise DataValidationError(f"{self.name}: the function returned no column "
                                          f"{name!r} (it returned {got})") from None
            try:
                matrix[:, j] = values
            except (ValueError, TypeError) as exc:
                raise DataValidationError(f"{self.name}: column {name!r} does not fit {n} rows "
                                          f"of numbers: {exc}") from None
        return matrix

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model inputs of the rows of ``frame``, as a DataFrame on its index."""
        return pd.DataFrame(self.matrix(self.batch_from_frame(frame)), columns=self.columns,
                            index=frame.index)


# ---------------------------------------------------------------------- column conversions
def _from_values(values: list[Any], kind: str) -> np.ndarray:
    """A batch column from Python values (request records)."""
    if kind in ("int", "float", "bool"):
        return np.array(values, dtype=np.float64)      # None -> NaN
    if kind == "timestamp":
        return np.array([_micros(v) for v in values], dtype="datetime64[us]")
    return np.array(values, dtype=object)


def _micros(value: Any) -> Any:
    """A datetime (naive: UTC) as datetime64[us]; None as NaT."""
    if value is None:
        return np.datetime64("NaT", "us")
    if isinstance(value, str):
        value = pd.Timestamp(value).to_pydatetime()
    ts = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return np.datetime64((ts - _EPOCH) // _US, "us")


def _from_series(col: pd.Series, kind: str) -> np.ndarray:
    """A batch column from a pandas column (training sets, batch inputs)."""
    if kind in ("int", "float", "bool"):
        if col.dtype == object:
            col = pd.to_numeric(col, errors="coerce")
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    if kind == "timestamp":
        ts = pd.to_datetime(col, utc=True)
        return ts.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    out = col.to_numpy(dtype=object, na_value=None)
    return out if out.dtype == object else out.astype(object)


def sample_batch(fields: Mapping[str, Any], features: Sequence[str], rows: int = 4
                 ) -> dict[str, np.ndarray]:
    """A small batch of valid-looking values for every field (from its spec: enums, ranges,
    optional fields missing in one row) and every feature (one missing): what
    :func:`check_function` runs the project's function on."""
    batch: dict[str, np.ndarray] = {}
    for name, spec in fields.items():
        kind = spec.type
        if spec.enum:
            values: list[Any] = [spec.enum[i % len(spec.enum)] for i in range(rows)]
        elif kind in ("int", "float"):
            lo = spec.min if spec.min is not None else (0.0 if spec.max is None
                                                        else min(0.0, spec.max - 10.0))
            hi = spec.max if spec.max is not None else lo + 10.0
            values = list(np.linspace(lo, hi, rows))
            if kind == "int":
                values = [float(round(v)) for v in values]
        elif kind == "bool":
            values = [i % 2 == 0 for i in range(rows)]
        elif kind == "timestamp":
            values = [datetime(2024, 1, 1, i % 24, tzinfo=timezone.utc) for i in range(rows)]
        else:
            values = [f"{name}-{i}" for i in range(rows)]
        if not spec.required:
            values[-1] = None
        batch[name] = _from_values(values, kind)
    for name in features:
        if name not in batch:
            batch[name] = np.array([np.nan, *np.linspace(0.0, 3.0, rows - 1)], dtype=np.float64)
    return batch
