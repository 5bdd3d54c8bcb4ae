"""The tabular network and its pickle-free storage.

:class:`TabularNet` embeds the categorical code columns (code ``c`` is embedding row ``c + 1``;
row 0 holds every unknown code: -1, NaN or out of the vocabulary) and runs an MLP over the
standardised numeric columns plus one missing-value flag per numeric column. It takes the raw
feature matrix in :attr:`TabularArch.feature_columns` order and returns, per row, one logit
(binary), one logit per class (multiclass) or the standardised value (regression), so
training, the MLflow pyfunc and serving all feed it the same thing: the model's input columns.

On disk a model is two files, neither of them a pickle:

- ``model.pt``: the ``state_dict`` (tensors only), read back with ``torch.load(weights_only=True)``;
- ``arch.json``: the :class:`TabularArch` (task, columns, sizes, and the training split's numeric
  means/stds and target mean/std, so serving standardises exactly as training did).

This module is also the MLflow pyfunc ``loader_module`` of logged torch models
(:func:`_load_pyfunc`).

Example:
    >>> save_torch_model("out/model", net, arch)              # doctest: +SKIP
    >>> load_torch_model("out/model").predict(frame)           # doctest: +SKIP
    array([0.013, 0.871, ...])
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, confloat, model_validator
from torch import nn

from mlplatform.errors import ModelNotFound

STATE_FILE = "model.pt"
ARCH_FILE = "arch.json"
#: Rows scored per forward pass in :meth:`TorchTabularModel.predict`.
_PREDICT_CHUNK = 65_536
#: Fewer rows than this are scored on one thread: for a small batch, handing work to a thread
#: pool costs more than the work (measured on a busy 2-core host: 1k rows 6.3 ms on two
#: threads, 0.3 ms on one; 64k rows 12 ms on two, 20 ms on one).
_SINGLE_THREAD_ROWS = 8_192


class TabularArch(BaseModel):
    """Everything needed to rebuild a :class:`TabularNet` (stored as ``arch.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["binary", "multiclass", "regression"] = Field(
        default="binary", description="binary: one logit (sigmoid); multiclass: one logit per "
        "class (softmax); regression: the standardised value.")
    num_outputs: PositiveInt = Field(default=1, description="Outputs per row: the number of "
                                     "classes for multiclass, else 1.")
    target_mean: float = Field(default=0.0, description="Regression: the training label mean.")
    target_std: PositiveFloat = Field(default=1.0, description="Regression: the training "
                                      "label std (the network predicts the standardised value).")
    feature_columns: list[str] = Field(min_length=1, description="Input columns, in order.")
    categorical: dict[str, PositiveInt] = Field(
        default_factory=dict, description="Code column -> embedding rows (vocabulary + 1).")
    embedding_dim: PositiveInt = Field(description="Embedding width per categorical column.")
    hidden_sizes: list[PositiveInt] = Field(min_length=1, description="MLP hidden widths.")
    dropout: confloat(ge=0.0, lt=1.0) = Field(description="Dropout after each hidden layer.")
    numeric_means: dict[str, float] = Field(description="Training mean per numeric column.")
    numeric_stds: dict[str, PositiveFloat] = Field(description="Training std per numeric column.")
    clip: PositiveFloat = Field(default=10.0, description="Standardised values are clipped to "
                                "[-clip, clip], so one extreme input cannot dominate.")

    @property
    def numeric_columns(self) -> list[str]:
        """The feature columns that are not categorical, in feature order."""
        return [c for c in self.feature_columns if c not in self.categorical]

    @model_validator(mode="after")
    def _columns_agree(self) -> TabularArch:
        if (self.task == "multiclass") != (self.num_outputs > 1):
            wanted = "several outputs" if self.task == "multiclass" else "one output"
            raise ValueError(f"a {self.task} network has {wanted}; got num_outputs "
                             f"{self.num_outputs}")
        unknown = [c for c in self.categorical if c not in self.feature_columns]
        if unknown:
            raise ValueError(f"categorical column(s) {unknown} are not feature columns")
        numeric = self.numeric_columns
        for name, stats in (("numeric_means", self.numeric_means),
                            ("numeric_stds", self.numeric_stds)):
            if sorted(stats) != sorted(numeric):
                raise ValueError(f"{name} must have exactly the numeric columns {numeric}; "
                                 f"has {list(stats)}")
        return self


class TabularNet(nn.Module):
    """Embeddings for categorical codes + an MLP over standardised numerics -> one logit per row.

    Args:
        arch: Column layout, sizes and standardisation statistics.
    """

    def __init__(self, arch: TabularArch):
        super().__init__()
        self.arch = arch
        cols = arch.feature_columns
        num = arch.numeric_columns
        # Non-persistent buffers: they move with .to(device) but stay out of the state_dict;
        # arch.json is their single source.
        self.register_buffer("cat_index", torch.tensor([cols.index(c) for c in arch.categorical],
                                                       dtype=torch.long), persistent=False)
        self.register_buffer("cat_max_code", torch.tensor(
            [rows - 2 for rows in arch.categorical.values()], dtype=torch.float32),
            persistent=False)
        self.register_buffer("num_index", torch.tensor([cols.index(c) for c in num],
                                                       dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.tensor([arch.numeric_means[c] for c in num],
                                                  dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor([arch.numeric_stds[c] for c in num],
                                                 dtype=torch.float32), persistent=False)
        self.embeddings = nn.ModuleList(nn.Embedding(rows, arch.embedding_dim)
                                        for rows in arch.categorical.values())
        width = len(arch.categorical) * arch.embedding_dim + 2 * len(num)
        layers: list[nn.Module] = []
        for hidden in arch.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(arch.dropout)]
            width = hidden
        layers.append(nn.Linear(width, arch.num_outputs))
        self.mlp = nn.Sequential(*layers)

    def embedding_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding row per categorical column: code c -> c + 1; unknown (-1, NaN, too large) -> 0."""
        codes = torch.nan_to_num(x.index_select(1, self.cat_index).float(), nan=-1.0).round()
        known = (codes >= 0) & (codes <= self.cat_max_code)
        return torch.where(known, codes + 1, torch.zeros_like(codes)).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of shape ``[rows]`` (one per row) or ``[rows, classes]`` (multiclass) for
        ``x`` of shape ``[rows, len(feature_columns)]``."""
        parts = []
        if len(self.embeddings):
            rows = self.embedding_rows(x)
            parts += [emb(rows[:, i]) for i, emb in enumerate(self.embeddings)]
        if self.num_index.numel():
            num = x.index_select(1, self.num_index).float()
            missing = ~torch.isfinite(num)
            z = ((num - self.mean) / self.std).clamp(-self.arch.clip, self.arch.clip)
            parts += [torch.where(missing, torch.zeros_like(z), z), missing.float()]
        out = self.mlp(torch.cat(parts, dim=1))
        return out.squeeze(-1) if self.arch.num_outputs == 1 else out


def outputs(arch: TabularArch, raw: torch.Tensor) -> torch.Tensor:
    """The network's raw outputs as predictions: the positive class's probability (binary),
    the class probabilities (multiclass) or the value in the label's units (regression)."""
    if arch.task == "binary":
        return torch.sigmoid(raw)
    if arch.task == "multiclass":
        return torch.softmax(raw, dim=-1)
    return raw * arch.target_std + arch.target_mean


class TorchTabularModel:
    """A loaded :class:`TabularNet` that scores DataFrames (what serving and pyfunc call)."""

    def __init__(self, net: TabularNet):
        self.net = net.eval()
        self.arch = net.arch

    @property
    def feature_names(self) -> list[str]:
        return list(self.arch.feature_columns)

    @property
    def task(self) -> str:
        return self.arch.task

    def predict(self, frame: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Predictions for the rows of ``frame`` (a DataFrame with the feature columns): the
        positive class's probability (binary, ``[rows]``), the class probabilities
        (multiclass, ``[rows, classes]``) or the value (regression, ``[rows]``).

        Raises:
            KeyError: ``frame`` lacks feature columns (they are named).
        """
        missing = [c for c in self.arch.feature_columns if c not in frame]
        if missing:
            raise KeyError(f"the torch model needs column(s) {missing}; got {list(frame.columns)}")
        x = torch.from_numpy(frame[self.arch.feature_columns].to_numpy(dtype=np.float32, copy=True))
        with torch.inference_mode(), _threads(1 if len(x) < _SINGLE_THREAD_ROWS else None):
            out = [outputs(self.arch, self.net(x[i:i + _PREDICT_CHUNK]))
                   for i in range(0, len(x), _PREDICT_CHUNK)]
        if not out:
            return np.zeros((0, self.arch.num_outputs) if self.arch.num_outputs > 1 else 0)
        return torch.cat(out).double().numpy()


@contextmanager
def _threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None: unchanged)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def save_torch_model(folder: str | Path, model: nn.Module, arch: TabularArch) -> Path:
    """Write ``model.pt`` (state_dict, CPU tensors) and ``arch.json`` into ``folder``.

    Args:
        folder: Created if missing.
        model: A :class:`TabularNet`, possibly wrapped by DDP (``prepare_model``).
        arch: Its architecture config.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, folder / STATE_FILE)
    (folder / ARCH_FILE).write_text(arch.model_dump_json(indent=1))
    return folder


def read_arch(folder: str | Path) -> TabularArch:
    """The :class:`TabularArch` stored in ``folder``.

    Raises:
        ModelNotFound: No ``arch.json`` there, or it is not a valid architecture config.
    """
    path = Path(folder) / ARCH_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} does not exist: {folder} is not a torch model written by "
                            "save_torch_model (it needs model.pt and arch.json).")
    try:
        return TabularArch.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ModelNotFound(f"{path} is not a valid torch architecture config: {exc}") from None


def load_torch_model(folder: str | Path) -> TorchTabularModel:
    """Rebuild the network from ``arch.json`` and load ``model.pt`` with ``weights_only=True``.

    Raises:
        ModelNotFound: A file is missing, or the weights do not fit the architecture config.
    """
    arch = read_arch(folder)
    state_path = Path(folder) / STATE_FILE
    if not state_path.is_file():
        raise ModelNotFound(f"{state_path} does not exist: the torch model in {folder} has no "
                            "weights.")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    net = TabularNet(arch)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelNotFound(f"the weights in {state_path} do not match {ARCH_FILE}: {exc}") from None
    return TorchTabularModel(net)


def _load_pyfunc(data_path: str) -> TorchTabularModel:
    """MLflow pyfunc entry point (``loader_module: mlplatform.models.torch_net``)."""
    return load_torch_model(data_path)
