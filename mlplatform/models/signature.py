"""Model signatures: the input columns in, the task's outputs out."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def output_frame(predictions: Any, task: str, classes: Sequence[Any] | None = None
                 ) -> pd.DataFrame | pd.Series:
    """Predictions as the signature's outputs: ``score`` (binary), ``proba_<class>`` per class
    (multiclass) or ``value`` (regression)."""
    values = np.asarray(predictions, dtype=np.float64)
    if task == "multiclass":
        names = [f"proba_{c}" for c in (classes or range(values.shape[1]))]
        return pd.DataFrame(values, columns=names)
    return pd.Series(values.reshape(-1), name="score" if task == "binary" else "value")


def signature_for(sample: pd.DataFrame, predictions: Any, task: str = "binary",
                  classes: Sequence[Any] | None = None) -> Any:
    """The model signature: the input columns in, the task's outputs out
    (:func:`output_frame`)."""
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        # Integer features (hour, codes, counts) are integers on purpose and never missing.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        return infer_signature(sample, output_frame(predictions, task, classes))
