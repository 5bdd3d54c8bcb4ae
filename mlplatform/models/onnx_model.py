"""ONNX models trained elsewhere, scored by onnxruntime without pickle.

A model trained outside the platform (scikit-learn through skl2onnx, LightGBM through
onnxmltools, PyTorch through ``torch.onnx.export``) is logged with :func:`log_onnx_model`, loaded
by :func:`load_onnx` (``load_model_folder`` hands MLflow's ``onnx`` flavour to it) and scored by
:class:`OnnxModel` like any other model: per row, the positive class's probability (binary,
``[rows]``), the class probabilities (multiclass, ``[rows, classes]``) or the value (regression,
``[rows]``).

The graphs it runs:

- inputs: one numeric tensor ``[rows, n_features]`` (skl2onnx's ``X``), fed the signature's
  columns in order, cast to its element type; or one input per signature column, named like
  the column, each ``[rows, 1]`` or ``[rows]``;
- outputs: for a classifier, its probabilities, as a tensor ``[rows, classes]`` (skl2onnx with
  ``options={"zipmap": False}``: preferred, it skips building a dict per row) or as a sequence
  of maps (ZipMap); label outputs are ignored. For a regressor, one float output ``[rows, 1]``
  or ``[rows]``;
- operators: standard ONNX, ONNX-ML and onnxruntime's own ``com.microsoft`` ops. A graph that
  needs custom operators is refused.

Example:
    >>> onx = skl2onnx.to_onnx(clf, X[:1].astype("float32"),          # doctest: +SKIP
    ...                        options={"zipmap": False})
    >>> with mlflow.start_run():                                       # doctest: +SKIP
    ...     info = log_onnx_model(onx, sample=frame.head(200), task="multiclass")
    >>> load_model_uri(info.model_uri, config).predict(frame)          # doctest: +SKIP
    array([[0.98, 0.01, 0.01], ...])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlplatform.errors import ModelRefused

# onnx, onnxruntime and mlflow are imported where they are used: mlplatform.models imports
# this module, and they would add half a second to every import of it.
if TYPE_CHECKING:
    import onnx
    import pandas as pd
    from mlflow.models.model import ModelInfo

    from mlplatform.models.version import ModelVersion

TASKS = ("binary", "multiclass", "regression")
#: Operator domains onnxruntime's CPU build runs: standard ONNX, ONNX-ML and its contrib ops.
_RUNNABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
#: Input element types the platform can feed from its float64 matrix.
_FEED_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32}
_FLOAT_TYPES = ("tensor(float)", "tensor(double)")
#: Attributes that hold a classifier's labels in ONNX-ML (ZipMap, TreeEnsembleClassifier,
#: LinearClassifier, SVMClassifier).
_LABEL_ATTRS = ("classlabels_int64s", "classlabels_strings")
_HOW_TO_EXPORT = ("export it with one input [rows, n_features] (skl2onnx: "
                  "to_onnx(model, X[:1].astype('float32'))) or with one input per column, "
                  "named like the column")


class OnnxModel:
    """An ONNX graph run by onnxruntime on the CPU, scoring rows as the platform does.

    Args:
        model: The graph, or the path of a ``.onnx`` file (onnxruntime then reads it itself, so
            tensors stored as external data next to it load too).
        input_names: The signature's input columns, in order.
        task: ``binary``, ``multiclass`` or ``regression``. None: inferred from the outputs (a
            probability output with 2 columns: binary; more: multiclass; none: regression).
        classes: Class labels in the order of the probability columns. None: the graph's
            (ZipMap's or the classifier's ``classlabels_*``), else ``0..K-1``.
        source: What messages call the model (its URI).
        intra_op_threads: onnxruntime threads per call. 1 by default: Serve replicas are sized
            in fractions of a CPU, and onnxruntime's default (one spinning thread per core of
            the node) would take the cores of every replica beside this one, while a serving
            batch is too small to gain from more.

    Raises:
        ModelRefused: onnxruntime cannot run the graph, its inputs fit neither supported
            pattern, or its outputs do not say where the predictions are.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike[str], input_names: Sequence[str],
                 task: str | None = None, classes: Sequence[Any] | None = None, *,
                 source: str = "the ONNX model", intra_op_threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort

        self.source = source
        self._columns = list(input_names)
        from_file = isinstance(model, (str, os.PathLike))
        proto = onnx.load(str(model), load_external_data=False) if from_file else model
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model) if from_file else proto.SerializeToString(),
                                                options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors are pybind classes based on Exception only
            raise ModelRefused(f"onnxruntime cannot run {source}: {exc}. The platform runs graphs "
                               "of standard ONNX and ONNX-ML operators; re-export the model with "
                               "a converter that targets onnxruntime.") from None
        self._plan = _input_plan(self.session.get_inputs(), self._columns, source)
        output, is_proba = _pick_output(self.session.get_outputs(), task, source)
        self._output = output.name
        self._map_output = output.type.startswith("seq(map(")
        labels = _graph_labels(proto.graph)
        self._map_keys = labels if self._map_output else None
        width = _width(output, labels)
        if task is None:
            if is_proba and width is None:
                raise ModelRefused(f"{source}: cannot tell binary from multiclass (output "
                                   f"'{output.name}' has {output.shape} columns); log it with "
                                   "log_onnx_model(..., task=...)")
            task = ("regression" if not is_proba else "multiclass" if width > 2 else "binary")
        if task not in TASKS:
            raise ModelRefused(f"{source}: task '{task}' is not one of {list(TASKS)}; fix the "
                               "task given to log_onnx_model.")
        most = {"binary": 2, "regression": 1}.get(task)
        if most is not None and width is not None and width > most:
            raise ModelRefused(f"{source}: output '{output.name}' has {width} columns per row; a "
                               f"{task} model has at most {most}. Log it with the right task "
                               "(log_onnx_model(..., task=...)).")
        self._task = task
        self._classes = _classes(task, classes, labels, width)
        if task == "multiclass" and (self._classes is None
                                     or (width is not None and len(self._classes) != width)):
            raise ModelRefused(f"{source}: output '{output.name}' has {width or 'an unknown number of'}"
                               f" probability columns but the classes are {self._classes}; "
                               "log it with log_onnx_model(..., classes=[one label per column])")

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``regression``."""
        return self._task

    @property
    def classes(self) -> list[Any] | None:
        """Class labels in the order of the probability columns (None for regression)."""
        return self._classes

    @property
    def feature_names(self) -> list[str]:
        """The signature's input columns, in the order :meth:`predict_matrix` takes them."""
        return list(self._columns)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions for the rows of ``frame`` (a DataFrame with the input columns).

        Raises:
            KeyError: ``frame`` lacks input columns (they are named).
        """
        missing = [c for c in self._columns if c not in frame]
        if missing:
            raise KeyError(f"{self.source} needs column(s) {missing}; got {list(frame.columns)}")
        return self.predict_matrix(frame[self._columns].to_numpy(dtype=np.float64))

    def predict_matrix(self, matrix: Any) -> np.ndarray:
        """Predictions for the rows of ``matrix`` (numbers, columns in :attr:`feature_names`
        order; NaN allowed where the graph's input is a float): the positive class's
        probability (binary, ``[rows]``), the class probabilities (multiclass,
        ``[rows, classes]``) or the value (regression, ``[rows]``), as float64.

        Raises:
            ValueError: ``matrix`` does not have one column per input, or has NaN/inf in a
                column the graph takes as integers.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self._columns):
            raise ValueError(f"{self.source} takes {len(self._columns)} inputs {self._columns}; "
                             f"got an array of shape {matrix.shape}")
        if not len(matrix):
            return np.zeros((0, len(self._classes)) if self._task == "multiclass" else 0)
        raw = self.session.run([self._output], self._feeds(matrix))[0]
        if self._map_output:
            keys = self._map_keys or list(raw[0])
            raw = [[row[k] for k in keys] for row in raw]
        out = np.asarray(raw, dtype=np.float64).reshape(len(matrix), -1)
        if self._task == "multiclass":
            if out.shape[1] != len(self._classes):
                raise ValueError(f"{self.source} returned {out.shape[1]} probabilities per row "
                                 f"for {len(self._classes)} classes {self._classes}")
            return out
        if out.shape[1] > (2 if self._task == "binary" else 1):
            raise ValueError(f"{self.source} returned {out.shape[1]} values per row in "
                             f"'{self._output}'; a {self._task} model returns "
                             f"{'one or two' if self._task == 'binary' else 'one'}")
        # Binary: column 1 of [P(negative), P(positive)], or the only column when the graph
        # returns the positive class's probability alone.
        return out[:, -1]

    def _feeds(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {}
        for name, columns, dtype, rank in self._plan:
            part = matrix[:, columns]
            if np.issubdtype(dtype, np.integer) and not np.isfinite(part).all():
                raise ValueError(f"{self.source}: input '{name}' takes integers but got NaN or "
                                 f"inf in column(s) {[self._columns[i] for i in columns]}")
            # onnxruntime wants C-ordered arrays; a DataFrame's values are often column-major.
            feeds[name] = np.ascontiguousarray(part if rank == 2 else part[:, 0], dtype=dtype)
        return feeds


def load_onnx(path: Path, mv: ModelVersion, input_names: Sequence[str],
              meta: Mapping[str, Any]) -> OnnxModel:
    """Load the ``model.onnx`` of MLflow's onnx flavour (``flavors.onnx.data``).

    The graph is checked before onnxruntime builds anything from it: ``onnx.checker`` (which
    also refuses external data outside the model's folder), then its operators' domains.

    Args:
        path: The ``model.onnx`` file in the downloaded model folder.
        mv: The model's version (named in messages).
        input_names: The signature's input columns, in order.
        meta: The platform's metadata from the MLmodel file (``task``, ``classes``), or ``{}``.

    Raises:
        ModelRefused: Not a valid ONNX graph, custom operators, inputs or outputs the platform
            cannot map (the message says what it needs).
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except (DecodeError, onnx.checker.ValidationError) as exc:
        raise ModelRefused(f"{mv.uri}: {path.name} is not a valid ONNX model: {exc}. Re-export it "
                           "and log it with log_onnx_model.") from None
    _check_operators(proto, mv.uri)
    return OnnxModel(path, input_names, meta.get("task"), meta.get("classes"), source=mv.uri)


def log_onnx_model(onnx_model: onnx.ModelProto | bytes | str | os.PathLike[str],
                   sample: pd.DataFrame, task: str, classes: Sequence[Any] | None = None,
                   name: str = "model") -> ModelInfo:
    """Log an ONNX model trained elsewhere into the active MLflow run, as the platform loads it.

    The model is run on ``sample`` first (through :class:`OnnxModel`, as serving will run it),
    so a graph the platform would refuse is refused here, before anything is logged. The
    signature is a column signature of ``sample``'s columns (the graph's input names when it
    takes one input per column, else its features in order) and of the task's outputs.

    Args:
        onnx_model: The graph, its serialized bytes or the path of a ``.onnx`` file.
        sample: Rows of the model's inputs, columns in the order the model takes them.
        task: ``binary``, ``multiclass`` or ``regression``.
        classes: Class labels in the order of the probability columns. None: the graph's
            labels, else ``0..K-1``; a multiclass model stores them in its metadata.
        name: The logged model's name (its artifact path in the run).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` loads it with ``load_model_uri``).

    Raises:
        ModelRefused: The graph is one the platform does not run (see :func:`load_onnx`).
    """
    import mlflow

    from mlplatform.models.loading import model_metadata
    from mlplatform.models.signature import signature_for

    proto = load_graph(onnx_model)
    model = OnnxModel(proto, list(sample.columns), task, classes, source="the ONNX model")
    predictions = model.predict(sample)
    classes = model.classes if task == "multiclass" else classes
    mlflow_log = logging.getLogger("mlflow.models.model")
    mlflow_log.addFilter(_drop_pyfunc_check_warning)
    try:
        # Requirements and providers are given rather than inferred: inferring them runs
        # MLflow's own onnx wrapper in a subprocess (seconds, and a false alarm for graphs it
        # cannot feed), and the platform runs the graph with onnxruntime on the CPU.
        return mlflow.onnx.log_model(
            proto, name=name, signature=signature_for(sample, predictions, task, classes),
            input_example=sample.head(5), metadata=model_metadata(task, classes),
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            onnx_execution_providers=["CPUExecutionProvider"])
    finally:
        mlflow_log.removeFilter(_drop_pyfunc_check_warning)


def load_graph(onnx_model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> onnx.ModelProto:
    """A checked copy of an ONNX graph given as a proto, its serialized bytes or a file path.

    Raises:
        ModelRefused: The file is missing or not ONNX, the graph is not valid, or it needs
            operators onnxruntime's CPU build does not have.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if isinstance(onnx_model, bytes):
            proto = onnx.load_from_string(onnx_model)
        elif isinstance(onnx_model, (str, os.PathLike)):
            if not Path(onnx_model).is_file():
                raise ModelRefused(f"{onnx_model} does not exist; export your model to a .onnx "
                                   "file first (e.g. skl2onnx.to_onnx)")
            proto = onnx.load(str(onnx_model))
        else:
            # A copy: MLflow moves large tensors of the proto it saves into an external file,
            # emptying them in the caller's proto.
            proto = onnx.ModelProto()
            proto.CopyFrom(onnx_model)
    except (DecodeError, ValueError) as exc:
        raise ModelRefused(f"{onnx_model if isinstance(onnx_model, (str, os.PathLike)) else 'the model'}"
                           f" is not an ONNX model ({exc}); a pickle cannot be imported: export "
                           "the model to ONNX (skl2onnx, onnxmltools, torch.onnx.export)") from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelRefused(f"the ONNX model is not valid: {exc}") from None
    _check_operators(proto, "the ONNX model")
    return proto


def _drop_pyfunc_check_warning(record: logging.LogRecord) -> bool:
    """Drop MLflow's warning that its onnx pyfunc failed on the input example: a false alarm
    for every classifier (that wrapper puts one label and K probabilities per row into one
    DataFrame); the platform never scores through it, and the sample was just scored."""
    return not record.getMessage().startswith("Failed to validate serving input example")


def _check_operators(proto: onnx.ModelProto, source: str) -> None:
    """Refuse a graph with operators outside the domains onnxruntime runs (custom ops).

    Raises:
        ModelRefused: Naming the ``domain:op`` pairs.
    """
    local = {(f.domain, f.name) for f in proto.functions}
    foreign: set[str] = set()

    def walk(nodes: Sequence[onnx.NodeProto]) -> None:
        for node in nodes:
            if node.domain not in _RUNNABLE_DOMAINS and (node.domain, node.op_type) not in local:
                foreign.add(f"{node.domain}:{node.op_type}")
            for attr in node.attribute:  # If/Loop/Scan bodies
                for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(graph.node)

    walk(proto.graph.node)
    for function in proto.functions:
        walk(function.node)
    if foreign:
        raise ModelRefused(
            f"{source} uses custom operators {sorted(foreign)}, which onnxruntime cannot run "
            "without a plugin library; the platform runs standard ONNX, ONNX-ML and "
            "com.microsoft operators only. Re-export the model with standard operators.")


def _input_plan(inputs: Sequence[Any], columns: list[str], source: str
                ) -> list[tuple[str, list[int], type[np.generic], int]]:
    """How to feed the graph from a matrix of ``columns``: (input, column indices, dtype, rank)
    per graph input."""
    described = [f"{i.name} {i.type} {i.shape}" for i in inputs]
    wrong = [d for i, d in zip(inputs, described, strict=True) if i.type not in _FEED_TYPES]
    if wrong:
        raise ModelRefused(f"{source}: input(s) {wrong} are not numeric tensors; the platform "
                           f"feeds float, double, int32 or int64 tensors: {_HOW_TO_EXPORT}.")
    names = [i.name for i in inputs]
    # One column each: [rows], [rows, 1] or [rows, <symbolic>].
    if sorted(names) == sorted(columns) and all(
            len(i.shape) == 1 or (len(i.shape) == 2 and (i.shape[1] in (1, None)
                                                          or isinstance(i.shape[1], str)))
            for i in inputs):
        by_name = {i.name: i for i in inputs}
        return [(c, [k], _FEED_TYPES[by_name[c].type], len(by_name[c].shape))
                for k, c in enumerate(columns)]
    if len(inputs) == 1 and len(inputs[0].shape) == 2 and (
            not isinstance(inputs[0].shape[1], int) or inputs[0].shape[1] == len(columns)):
        return [(inputs[0].name, list(range(len(columns))), _FEED_TYPES[inputs[0].type], 2)]
    raise ModelRefused(
        f"{source} has input(s) {described} and its signature has the {len(columns)} column(s) "
        f"{columns}: the platform feeds one tensor input [rows, {len(columns)}] (the columns in "
        "signature order) or one input per signature column named like it, [rows, 1]. Re-"
        f"{_HOW_TO_EXPORT}, and log it with log_onnx_model(model, sample=<DataFrame of those "
        "columns>, ...).")


def _pick_output(outputs: Sequence[Any], task: str | None, source: str) -> tuple[Any, bool]:
    """The output holding the predictions, and whether it holds probabilities.

    Probabilities: a float tensor whose name says so (``probabilities``,
    ``output_probability``), else a sequence of maps (ZipMap), else the one float tensor of a
    classifier (when the task says so, or a label output marks the graph as a classifier).
    """
    floats = [o for o in outputs if o.type in _FLOAT_TYPES]
    maps = [o for o in outputs if o.type.startswith("seq(map(")]
    labels = [o for o in outputs if o.type not in _FLOAT_TYPES and not o.type.startswith("seq(")]
    named = [o for o in floats if "prob" in o.name.lower()]
    described = [f"{o.name} {o.type} {o.shape}" for o in outputs]
    if task == "regression":
        values = [o for o in floats if "prob" not in o.name.lower()] or floats
        if len(values) == 1:
            return values[0], False
        raise ModelRefused(f"{source} is a regression model but has {len(values)} float outputs "
                           f"to read the value from: {described}; export it with one.")
    probas = named or maps
    if len(probas) == 1:
        return probas[0], True
    if not probas and len(floats) == 1:
        return floats[0], bool(task or labels)
    raise ModelRefused(
        f"{source}: cannot tell which output holds the predictions among {described}. The "
        "platform reads a classifier's probabilities from its one output named '*prob*' (a "
        "tensor [rows, classes], e.g. skl2onnx with options={'zipmap': False}) or a ZipMap "
        "output, and a regressor's value from its one float output; re-export it so.")


def _graph_labels(graph: onnx.GraphProto) -> list[Any] | None:
    """The class labels the graph's classifier nodes declare (None when none do, or when they
    disagree: then which labels the probability columns have is unknown)."""
    found = [[int(v) for v in attr.ints] if attr.ints else [v.decode() for v in attr.strings]
             for node in graph.node for attr in node.attribute
             if attr.name in _LABEL_ATTRS and (attr.ints or attr.strings)]
    return found[0] if found and all(f == found[0] for f in found) else None


def _classes(task: str, given: Sequence[Any] | None, labels: list[Any] | None,
             width: int | None) -> list[Any] | None:
    """A classifier's labels: those given, else the graph's, else 0..K-1 (None for a regressor,
    or a multiclass model whose K is unknown)."""
    if task == "regression":
        return None
    if given:
        return list(given)
    if labels:
        return labels
    if task == "binary":
        return [0, 1]
    return list(range(width)) if width else None


def _width(output: Any, labels: list[Any] | None) -> int | None:
    """Columns per row of an output: its fixed last dimension, else the graph's label count."""
    shape = output.shape or []
    if len(shape) == 1 and not output.type.startswith("seq("):
        return 1
    if len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    return len(labels) if labels else None
