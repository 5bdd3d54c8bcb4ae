"""Distributed PyTorch training of the tabular network with Ray Train, tracked in MLflow
(binary, multiclass or regression, as the project's task says).

``TorchTrainer`` runs :func:`_train_loop` on ``scaling.num_workers`` workers: the network is
wrapped for DDP by ``prepare_model``, each worker streams its shard of the (once shuffled)
training set with ``iter_torch_batches``, and validation scores from every shard are gathered so
each epoch's metrics cover the whole validation set. On GPU the forward pass runs under bf16
autocast. Rank 0 saves a checkpoint (weights, optimizer, per-epoch history) every
``checkpoint.frequency`` epochs and after the last one; after a worker failure the group
restarts from it (``failure.max_failures``) at the next epoch. The driver then logs one MLflow
run like the XGBoost trainer's, with the model as a pickle-free pyfunc
(``loader_module: mlplatform.models.torch_net``).

:func:`tune_trial` and :func:`log_tuned_model` are the torch side of the sweep's trial contract
(:mod:`mlplatform.training.tuning`): the same network and epochs in one Tune trial's process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError
from mlplatform.training.config import TrainConfig, final_metric_names
from mlplatform.training.data import check_scaling, fit, prepare, time_split, train_run_config
from mlplatform.training.tracking import TrainResult, log_training_run


def train_torch(config: TrainConfig, platform: PlatformConfig | None = None) -> TrainResult:
    """Train the tabular network on Ray Train (DDP) and log it to MLflow.

    Args:
        config: What to train and how (data, split, ``config.torch``, scaling, checkpoints,
            failures).
        platform: Where Ray, MLflow and storage live (default: ``PlatformConfig.load()``).

    Returns:
        The MLflow run id, the logged model's URI, final validation metrics (binary
        ``val_auc_pr``, ``val_auc_roc``, ``val_logloss``; multiclass ``val_logloss``,
        ``val_accuracy``; regression ``val_rmse``, ``val_mae``), the last checkpoint and the
        run params.

    Raises:
        ConfigError: A ``torch.categorical`` column is not a feature column, or the scaling
            can never fit the cluster.
        DataValidationError: The features are missing, lack a column, or a split is empty or
            single-class. Nothing is logged to MLflow in that case.
        TrainingError: Training failed more than ``failure.max_failures`` times, or finished
            without a checkpoint.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from mlplatform._ray import init_ray

    platform = platform or PlatformConfig.load()
    init_ray(platform)
    check_scaling(config.scaling)
    config, features_path = prepare(config, platform)
    params = config.torch
    _check_columns(config)
    train_ds, valid_ds, split = time_split(features_path, config)

    target = _numeric_stats(train_ds, [config.label]) if config.task == "regression" else None
    arch = _arch(config, *_numeric_stats(train_ds, _numeric_columns(config)), target=target)
    # The training set is in time order: shuffle it once, so every batch mixes the whole period
    # (each epoch then also shuffles locally, with its own seed).
    train_ds = train_ds.random_shuffle(seed=params.seed).materialize()
    train_ds.context.enable_progress_bars = False

    scaling = config.scaling
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "arch": arch.model_dump(), "label": config.label, "epochs": params.epochs,
            "batch_size": params.batch_size, "learning_rate": params.learning_rate,
            "weight_decay": params.weight_decay, "amp": params.amp, "seed": params.seed,
            "checkpoint_frequency": config.checkpoint.frequency,
            "cache_data": params.cache_data,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker=dict(scaling.resources_per_worker)),
        run_config=train_run_config(config, platform, "torch"),
        datasets={"train": train_ds, "validation": valid_ds},
    )
    result = fit(trainer, config)
    return _log_run(platform, config, arch, result.checkpoint, train_ds, valid_ds, split,
                    features_path)


def _log_run(platform, config: TrainConfig, arch, checkpoint, train_ds, valid_ds, split: dict,
             features_path: Path) -> TrainResult:
    """Log the final checkpoint's model, history and evaluation as one MLflow run."""
    from mlplatform.models.torch_net import load_torch_model
    from mlplatform.training.evaluation import EVAL_ROWS, PROFILE_ROWS, bounded_sample
    from mlplatform.training.torch_loop import TRAIN_STATE_FILE

    params, scaling = config.torch, config.scaling
    with tempfile.TemporaryDirectory() as tmp:
        with checkpoint.as_directory() as ckpt:
            state = json.loads(Path(ckpt, TRAIN_STATE_FILE).read_text())
            model_dir = _model_folder(ckpt, tmp)  # the model only, not the optimizer state
        model = load_torch_model(model_dir)
        valid_frame = bounded_sample(valid_ds, EVAL_ROWS)
        sample = valid_frame[config.feature_columns].head(5)
        history = state["history"]
        metrics = {final: float(history[name][-1])
                   for name, final in final_metric_names(config.task).items()}
        run_params = {
            "model": "torch", "epochs": params.epochs, "epochs_trained": state["epoch"] + 1,
            "batch_size": params.batch_size, "learning_rate": params.learning_rate,
            "weight_decay": params.weight_decay, "hidden_sizes": list(params.hidden_sizes),
            "embedding_dim": params.embedding_dim, "dropout": params.dropout,
            "categorical": dict(params.categorical or {}), "seed": params.seed,
            "cache_data": params.cache_data, "amp": state["amp"], "device": state["device"],
            "num_workers": scaling.num_workers,
            "use_gpu": scaling.use_gpu, "checkpoint_frequency": config.checkpoint.frequency,
            "max_failures": config.failure.max_failures,
            "resumed_at_epochs": state["resumed_at"],
            **split,
        }

        return log_training_run(
            platform, config, trainer="torch", params=run_params, history=history,
            metrics=metrics, features_path=features_path,
            log_model=lambda: _log_pyfunc(model_dir, sample, config),
            artifacts={"training/history.json": state,
                       "training/arch.json": json.loads(arch.model_dump_json())},
            checkpoint_path=checkpoint.path, validation_frame=valid_frame,
            validation_scores=model.predict(valid_frame), predict_fn=model.predict,
            reference_frame=bounded_sample(train_ds, PROFILE_ROWS))


def tune_trial(config: TrainConfig, train: pd.DataFrame, valid: pd.DataFrame,
               report: Callable[..., None], *, metric: str, mode: str) -> None:
    """One Ray Tune trial of the torch model, in the trial's process (the sweep's contract, see
    :mod:`mlplatform.training.tuning`): the same network, epochs and metrics as
    :func:`train_torch`, without DDP. Each epoch is reported; the last report hands over the
    model folder. There is no early stopping inside a trial (ASHA stops bad trials), so the
    kept model is the last epoch's and ``metric``/``mode`` are not needed here.
    """
    import torch

    from mlplatform.models.torch_net import TabularNet, save_torch_model
    from mlplatform.training.torch_loop import TrainState, make_optimizer, run_epochs

    _check_columns(config)
    params = config.torch
    target = _frame_stats(train, [config.label]) if config.task == "regression" else None
    arch = _arch(config, *_frame_stats(train, _numeric_columns(config)), target=target)
    device = torch.device("cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(params.seed)
    model = TabularNet(arch).to(device)
    optimizer = make_optimizer(model, {"learning_rate": params.learning_rate,
                                       "weight_decay": params.weight_decay})
    x_train, y_train = _tensors(train, config)
    x_valid, y_valid = _tensors(valid, config)

    def train_batches(epoch: int, seed: int):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(order), params.batch_size):
            rows = order[i:i + params.batch_size]
            yield x_train[rows].to(device), y_train[rows].to(device)

    def valid_batches():
        for i in range(0, len(x_valid), 65_536):
            yield x_valid[i:i + 65_536].to(device), y_valid[i:i + 65_536].to(device)

    def on_epoch(epoch: int, metrics: dict[str, float], _checkpoint_due: bool) -> None:
        values = {final: metrics[name]
                  for name, final in final_metric_names(config.task).items()}
        rounds = epoch + 1
        if rounds < params.epochs:
            report(rounds, values, best_round=rounds, final=values)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_torch_model(tmp, model, arch)
            report(rounds, values, best_round=rounds, final=values, model_dir=tmp)

    amp = params.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    run_epochs(model, optimizer, TrainState(), epochs=params.epochs,
               checkpoint_frequency=params.epochs, seed=params.seed, amp=amp, device=device,
               train_batches=train_batches, valid_batches=valid_batches, report=on_epoch)


def log_tuned_model(model_dir: Path, config: TrainConfig, sample: pd.DataFrame):
    """Log a trial's model folder (``model.pt`` + ``arch.json``) as the pickle-free pyfunc into
    the active MLflow run; returns MLflow's ``ModelInfo``."""
    with tempfile.TemporaryDirectory() as tmp:
        return _log_pyfunc(_model_folder(model_dir, tmp), sample[config.feature_columns], config)


def _log_pyfunc(model_dir: Path, sample: pd.DataFrame, config: TrainConfig):
    """``mlflow.pyfunc.log_model`` of a saved torch model: ``loader_module`` is
    :mod:`mlplatform.models.torch_net`, the data folder holds only the state_dict and
    ``arch.json``, and nothing is pickled."""
    import mlflow
    import pydantic
    import torch

    from mlplatform.models import TORCH_LOADER_MODULE, model_metadata, signature_for
    from mlplatform.models.torch_net import load_torch_model

    scores = load_torch_model(model_dir).predict(sample)
    # Written out, so MLflow does not load the model in a subprocess to infer them.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                    f"pandas=={pd.__version__}", f"pydantic=={pydantic.__version__}"]
    return mlflow.pyfunc.log_model(
        name="model", loader_module=TORCH_LOADER_MODULE, data_path=str(model_dir),
        signature=signature_for(sample, scores, config.task, config.classes),
        input_example=sample.head(2), pip_requirements=requirements,
        metadata=model_metadata(config.task or "binary", config.classes))


def _model_folder(source: str | Path, tmp: str | Path) -> Path:
    """Copy the model files of a checkpoint or trial folder into ``<tmp>/torch_model``."""
    from mlplatform.models.torch_net import ARCH_FILE, STATE_FILE

    folder = Path(tmp, "torch_model")
    folder.mkdir()
    for name in (STATE_FILE, ARCH_FILE):
        shutil.copy(Path(source, name), folder / name)
    return folder


def _check_columns(config: TrainConfig) -> None:
    unknown = [c for c in config.torch.categorical or {} if c not in config.feature_columns]
    if unknown:
        raise ConfigError(f"torch.categorical names {unknown}, which are not in feature_columns "
                          f"{config.feature_columns}; remove them or add them as features.")


def _numeric_columns(config: TrainConfig) -> list[str]:
    return [c for c in config.feature_columns if c not in (config.torch.categorical or {})]


def _arch(config: TrainConfig, means: dict[str, float], stds: dict[str, float],
          target: tuple[dict[str, float], dict[str, float]] | None = None):
    """The network's architecture: the task's outputs, the columns and their statistics
    (``target``: the regression label's mean and std, from the training split)."""
    from mlplatform.models.torch_net import TabularArch

    params = config.torch
    extra = {}
    if target is not None:
        extra = {"target_mean": target[0][config.label], "target_std": target[1][config.label]}
    return TabularArch(
        task=config.task or "binary",
        num_outputs=len(config.classes or []) if config.task == "multiclass" else 1,
        feature_columns=config.feature_columns, categorical=dict(params.categorical or {}),
        embedding_dim=params.embedding_dim, hidden_sizes=list(params.hidden_sizes),
        dropout=params.dropout, numeric_means=means, numeric_stds=stds, **extra)


def _tensors(frame: pd.DataFrame, config: TrainConfig):
    import torch

    return (torch.from_numpy(frame[config.feature_columns].to_numpy(dtype=np.float32, copy=True)),
            torch.from_numpy(frame[config.label].to_numpy(dtype=np.float32, copy=True)))


def _frame_stats(frame: pd.DataFrame, columns: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`_numeric_stats` of a pandas frame."""
    values = frame[columns].astype(np.float64).replace([np.inf, -np.inf], np.nan)
    means, stds = values.mean().fillna(0.0), values.std(ddof=0).fillna(0.0)
    return ({c: float(means[c]) for c in columns},
            {c: _std_or_one(float(stds[c]) ** 2) for c in columns})


def _std_or_one(var: float) -> float:
    # A constant (or never observed) column is only centred, never divided by ~0.
    return float(np.sqrt(var)) if var > 1e-12 else 1.0


def _numeric_stats(train_ds, columns: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of each column over the finite values of ``train_ds`` (one pass, on Ray).

    Each batch yields its count, mean and sum of squared deviations; they are combined exactly
    (Chan et al.), so the result does not depend on how the data is split into batches.
    """
    if not columns:
        return {}, {}

    def moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for i, col in enumerate(columns):
            values = batch[col].astype(np.float64)
            values = values[np.isfinite(values)]
            mean = values.mean() if len(values) else 0.0
            out[f"n{i}"] = np.array([len(values)], dtype=np.float64)
            out[f"mean{i}"] = np.array([mean])
            out[f"m2{i}"] = np.array([((values - mean) ** 2).sum()])
        return out

    parts = train_ds.map_batches(moments, batch_format="numpy").to_pandas()
    means, stds = {}, {}
    for i, col in enumerate(columns):
        n, mean, m2 = (parts[f"{k}{i}"].to_numpy() for k in ("n", "mean", "m2"))
        total = n.sum()
        mu = float((n * mean).sum() / total) if total else 0.0
        var = float((m2 + n * (mean - mu) ** 2).sum() / total) if total else 0.0
        means[col] = mu
        stds[col] = _std_or_one(var)
    return means, stds


def _train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    from mlplatform.training.torch_loop import run_worker

    run_worker(cfg)
