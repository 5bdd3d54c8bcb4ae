"""What each Ray Train worker of :func:`~mlplatform.training.torch_train.train_torch` runs.

:func:`run_worker` is the loop: epochs over the worker's data shard, metrics over the whole
validation set (scores gathered from every shard), checkpoints from rank 0, resume from the last
checkpoint. The pieces it is made of (:func:`fit_epoch`, :func:`save_checkpoint`,
:func:`restore_checkpoint`, :func:`task_metrics`) take plain tensors and iterables, so they
are tested without Ray. The loss and the metrics follow the network's task: binary (log loss,
AUC-PR, AUC-ROC), multiclass (log loss, accuracy) or regression (squared error of the
standardised label; RMSE and MAE in the label's units).

Determinism: every rank starts from the same seeded weights (DDP also broadcasts rank 0's);
each epoch reseeds torch (dropout) and the shard's local shuffle from ``(seed, epoch, rank)``,
so an epoch run after a resume draws what it would have drawn without the interruption.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlplatform.models.torch_net import TabularArch, TabularNet, save_torch_model, unwrap

OPTIMIZER_FILE = "optimizer.pt"
TRAIN_STATE_FILE = "train_state.json"
#: Rows per validation batch (no gradients, so larger than training batches).
_EVAL_BATCH = 8192


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights."""

    epoch: int = -1  # last completed epoch (-1: none yet)
    history: dict[str, list[float]] = field(default_factory=dict)  # metric -> value per epoch
    resumed_at: list[int] = field(default_factory=list)  # epoch each resume restarted at
    device: str = "cpu"  # where the last epoch ran (cpu, cuda)
    amp: bool = False  # whether it ran under bf16 autocast

    def record(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epoch = epoch
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(float(value))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank (dropout and local shuffle), independent of restarts."""
    return ((seed * 100_003 + epoch) * 1_009 + rank) % 2**32


def task_loss(arch: TabularArch | None, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of the network's task (binary when ``arch`` is None): log loss on the
    logit(s), or the squared error of the standardised label."""
    task = arch.task if arch is not None else "binary"
    if task == "multiclass":
        return F.cross_entropy(out, y.long())
    if task == "regression":
        return F.mse_loss(out, (y - arch.target_mean) / arch.target_std)
    return F.binary_cross_entropy_with_logits(out, y)


def fit_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, seed: int,
              amp: bool = False) -> tuple[float, int]:
    """One pass over ``batches`` of ``(features, labels)``; returns (summed loss, rows).

    Args:
        seed: Seeds torch first, so dropout draws the same masks on a rerun of this epoch.
        amp: bf16 autocast of the forward pass (the loss is computed in float32).
    """
    torch.manual_seed(seed)
    model.train()
    arch = getattr(unwrap(model), "arch", None)
    loss_sum, rows = None, 0
    for x, y in batches:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = task_loss(arch, out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Summed as a tensor: a float() here would wait for the device on every step.
        part = loss.detach() * len(y)
        loss_sum = part if loss_sum is None else loss_sum + part
        rows += len(y)
    return (float(loss_sum) if loss_sum is not None else 0.0), rows


def predict_logits(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   *, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs (logits, or standardised values) and labels (float32, on the batches'
    device) for every row of ``batches``."""
    net = unwrap(model).eval()
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in batches:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits.append(net(x).float())
            labels.append(y.float())
    if not logits:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(logits), torch.cat(labels)


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (in rank order); itself without a process
    group. Rows may be scalars (1-D) or vectors of one width (2-D)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    if t.dim() > 1:
        width = t.shape[1]
        return gather(t.reshape(-1)).reshape(-1, width)
    world = dist.get_world_size()
    size = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[:t.numel()] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)  # all_gather needs equal sizes: pad, then trim
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all ranks (themselves without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def binary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Log loss, AUC-PR (average precision) and AUC-ROC of ``logits`` against 0/1 ``labels``
    (the rank metrics of :mod:`mlplatform.training.metrics`; NaN with a single class)."""
    from mlplatform.training.metrics import auc_roc, average_precision

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z)) if len(y) else float("nan")
    both = 0 < y.sum() < len(y)
    return {"loss": loss, "auc_pr": average_precision(y, z) if both else float("nan"),
            "auc_roc": auc_roc(y, z) if both else float("nan")}


def task_metrics(arch: TabularArch, out: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Validation metrics of the network's raw outputs: binary ``loss``, ``auc_pr``,
    ``auc_roc``; multiclass ``loss`` (log loss) and ``accuracy``; regression ``loss`` (squared
    error of the standardised label), ``rmse`` and ``mae`` (label units)."""
    y = np.asarray(labels, dtype=np.float64)
    if arch.task == "binary":
        return binary_metrics(out, y)
    z = np.asarray(out, dtype=np.float64)
    if not len(y):
        return {"loss": float("nan")}
    if arch.task == "multiclass":
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        idx = y.astype(np.int64)
        return {"loss": float(-log_p[np.arange(len(idx)), idx].mean()),
                "accuracy": float((z.argmax(axis=1) == idx).mean())}
    pred = z * arch.target_std + arch.target_mean
    err = pred - y
    return {"loss": float(np.mean(((y - arch.target_mean) / arch.target_std - z) ** 2)),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


def save_checkpoint(folder: str | Path, model: torch.nn.Module, arch: TabularArch,
                    optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """Write a resumable checkpoint: the model files (``model.pt`` + ``arch.json``, servable as
    is), the optimizer state and the :class:`TrainState` as JSON. No pickle anywhere."""
    folder = save_torch_model(folder, model, arch)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / TRAIN_STATE_FILE).write_text(json.dumps(asdict(state)))
    return folder


def restore_checkpoint(folder: str | Path, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer) -> TrainState:
    """Load weights and optimizer state from ``folder`` into ``model`` (possibly DDP-wrapped)
    and ``optimizer``; returns the saved :class:`TrainState` (training resumes at epoch + 1)."""
    from mlplatform.models.torch_net import STATE_FILE

    folder = Path(folder)
    unwrap(model).load_state_dict(
        torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True))
    # load_state_dict moves the optimizer state onto its parameters' device.
    optimizer.load_state_dict(
        torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    saved = json.loads((folder / TRAIN_STATE_FILE).read_text())
    return TrainState(**saved)


def make_optimizer(model: torch.nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"],
                             weight_decay=cfg["weight_decay"])


def _collate(features: list[str], label: str):
    """Ray Data collate: a numpy batch -> (float32 feature matrix, float32 labels)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
            x = np.stack([batch[c] for c in features], axis=1).astype(np.float32, copy=False)
            return torch.from_numpy(x), torch.from_numpy(batch[label].astype(np.float32))

    return Collate()


def run_worker(cfg: dict[str, Any]) -> None:
    """The per-worker training loop (``train_loop_per_worker`` of the ``TorchTrainer``)."""
    import ray.train
    import ray.train.torch

    arch = TabularArch.model_validate(cfg["arch"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg["seed"])  # identical initial weights on every rank
    model = ray.train.torch.prepare_model(TabularNet(arch))
    optimizer = make_optimizer(model, cfg)
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = restore_checkpoint(folder, model, optimizer)
        state.resumed_at.append(state.epoch + 1)
    # bf16 autocast only where the GPU computes in bf16 natively (Ampere and later).
    amp = bool(cfg["amp"]) and device.type == "cuda" and torch.cuda.is_bf16_supported()
    state.device, state.amp = device.type, amp

    collate = _collate(arch.feature_columns, cfg["label"])
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("validation")
    batch_size = cfg["batch_size"]

    if cfg.get("cache_data", True):
        # The shard, read once into tensors on this worker's device; each epoch is a seeded
        # permutation of it (the same draw after a resume).
        x_all, y_all = _read_shard(train_shard, collate, device)

        def train_batches(epoch: int, seed: int):
            order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
            order = order.to(device)
            for i in range(0, len(order), batch_size):
                rows = order[i:i + batch_size]
                yield x_all[rows], y_all[rows]
    else:
        def train_batches(epoch: int, seed: int):
            return train_shard.iter_torch_batches(
                batch_size=batch_size, collate_fn=collate,
                local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=seed)

    def report(epoch: int, metrics: dict[str, float], checkpoint_due: bool) -> None:
        # Every rank reports (Train waits for all); rank 0 attaches the checkpoint.
        if not checkpoint_due:
            ray.train.report({**metrics, "epoch": epoch}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model, arch, optimizer, state)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({**metrics, "epoch": epoch}, checkpoint=ckpt)

    run_epochs(model, optimizer, state, epochs=cfg["epochs"],
               checkpoint_frequency=cfg["checkpoint_frequency"], seed=cfg["seed"], rank=rank,
               amp=amp, device=device, train_batches=train_batches,
               valid_batches=lambda: valid_shard.iter_torch_batches(batch_size=_EVAL_BATCH,
                                                                    collate_fn=collate),
               report=report)


def _read_shard(shard, collate, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of a Ray Data shard as (features, labels) tensors on ``device``."""
    xs, ys = [], []
    for x, y in shard.iter_torch_batches(batch_size=65_536, collate_fn=collate):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise RuntimeError("this worker's training shard is empty; use fewer workers")
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def run_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, *,
               epochs: int, checkpoint_frequency: int, seed: int,
               train_batches: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
               valid_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
               report: Callable[[int, dict[str, float], bool], None], rank: int = 0,
               amp: bool = False, device: torch.device | None = None) -> TrainState:
    """Train epochs ``state.epoch + 1 .. epochs - 1`` (all of them, or the rest after a resume).

    After each epoch the metrics (training loss over all ranks, validation over all shards) are
    recorded in ``state`` and ``report(epoch, metrics, checkpoint_due)`` is called, with
    ``checkpoint_due`` every ``checkpoint_frequency`` epochs and at the last one.

    Args:
        train_batches: ``(epoch, seed) -> (features, labels)`` batches of this rank's shard,
            shuffled with ``seed``.
        valid_batches: ``() -> (features, labels)`` batches of this rank's validation shard.
    """
    device = device or next(model.parameters()).device
    for epoch in range(state.epoch + 1, epochs):
        epoch_s = epoch_seed(seed, epoch, rank)
        started = time.perf_counter()
        loss_sum, rows = fit_epoch(model, optimizer, train_batches(epoch, epoch_s), seed=epoch_s,
                                   amp=amp)
        train_s = time.perf_counter() - started
        loss_sum, rows = all_reduce_sum([loss_sum, float(rows)], device)
        logits, labels = predict_logits(model, valid_batches(), amp=amp)
        valid = task_metrics(unwrap(model).arch, gather(logits.to(device)).cpu().numpy(),
                             gather(labels.to(device)).cpu().numpy())
        metrics = {"train_loss": loss_sum / max(rows, 1),
                   **{f"validation_{k}": v for k, v in valid.items()},
                   "train_samples_per_s": rows / max(train_s, 1e-9)}
        state.record(epoch, metrics)
        report(epoch, metrics, epoch == epochs - 1 or (epoch + 1) % checkpoint_frequency == 0)
    return state
