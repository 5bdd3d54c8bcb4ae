"""The torch training loop's pieces without Ray: resume from a checkpoint continues exactly where
an uninterrupted run would be, and the validation metrics match scikit-learn's."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mlplatform.models.torch_net import ARCH_FILE, STATE_FILE, TabularArch, TabularNet
from mlplatform.training.torch_loop import (
    OPTIMIZER_FILE,
    TRAIN_STATE_FILE,
    TrainState,
    binary_metrics,
    epoch_seed,
    fit_epoch,
    make_optimizer,
    predict_logits,
    restore_checkpoint,
    run_epochs,
    save_checkpoint,
)
from tests.projects import project

FEATURES = ["amount", "count", "code"]
ARCH = TabularArch(feature_columns=FEATURES, categorical={"code": 4}, embedding_dim=3,
                   hidden_sizes=[8], dropout=0.3, numeric_means={"amount": 1.0, "count": 0.0},
                   numeric_stds={"amount": 2.0, "count": 1.0})
OPT = {"learning_rate": 0.03, "weight_decay": 1e-4}
EPOCHS, SEED = 5, 7


def data(rows: int = 512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=g)
    x[:, 2] = torch.randint(-1, 3, (rows,), generator=g).float()
    y = ((x[:, 0] + 0.5 * (x[:, 2] == 1).float()) > 0.8).float()
    return x, y


def batches(epoch: int, batch_size: int = 64):
    """A different, seeded row order per epoch (what the local shuffle does per epoch)."""
    x, y = data()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(SEED, epoch, 0)))
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]])
            for i in range(0, len(x), batch_size)]


def new_model(init_seed: int = SEED):
    torch.manual_seed(init_seed)
    model = TabularNet(ARCH)
    return model, make_optimizer(model, OPT)


class Run:
    """Drives run_epochs like a Ray Train worker: checkpoints when due, optionally dies once."""

    def __init__(self, folder, die_in_epoch: int | None = None):
        self.folder, self.die_in_epoch = folder, die_in_epoch
        self.trained, self.checkpoints = [], []

    def __call__(self, model, optimizer, state: TrainState) -> TrainState:
        def train_batches(epoch, seed):
            if epoch == self.die_in_epoch:
                self.die_in_epoch = None
                raise RuntimeError("worker died")
            self.trained.append(epoch)
            return batches(epoch)

        def report(epoch, metrics, checkpoint_due):
            if checkpoint_due:
                save_checkpoint(self.folder / f"epoch-{epoch}", model, ARCH, optimizer, state)
                self.checkpoints.append(epoch)

        return run_epochs(model, optimizer, state, epochs=EPOCHS, checkpoint_frequency=2,
                          seed=SEED, train_batches=train_batches, valid_batches=lambda: batches(0),
                          report=report)

    def resume(self, model, optimizer) -> TrainState:
        state = restore_checkpoint(self.folder / f"epoch-{self.checkpoints[-1]}", model, optimizer)
        state.resumed_at.append(state.epoch + 1)
        return self(model, optimizer, state)


def without_timings(history):
    return {k: v for k, v in history.items() if k != "train_samples_per_s"}


def test_resume_after_a_failure_continues_like_an_uninterrupted_run(tmp_path):
    model, optimizer = new_model()
    straight_run = Run(tmp_path / "straight")
    straight = straight_run(model, optimizer, TrainState())
    assert straight_run.trained == list(range(EPOCHS))
    assert straight_run.checkpoints == [1, 3, 4]  # every 2 epochs and the last one

    run = Run(tmp_path / "failing", die_in_epoch=2)
    first, first_opt = new_model()
    with pytest.raises(RuntimeError, match="worker died"):
        run(first, first_opt, TrainState())
    assert run.checkpoints == [1]
    # The restarted worker builds its model and optimizer afresh (other initial weights here).
    resumed, resumed_opt = new_model(init_seed=123)
    state = run.resume(resumed, resumed_opt)

    assert run.trained == [0, 1, 2, 3, 4]  # epoch 2 again, not from scratch
    assert state.resumed_at == [2] and state.epoch == EPOCHS - 1
    assert without_timings(state.history) == without_timings(straight.history)
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert {p.name for p in (tmp_path / "failing/epoch-4").iterdir()} == {
        STATE_FILE, ARCH_FILE, OPTIMIZER_FILE, TRAIN_STATE_FILE}


def test_resume_without_the_optimizer_state_would_differ(tmp_path):
    """The test above is sensitive to the optimizer state: AdamW's moments change the result."""
    model, optimizer = new_model()
    Run(tmp_path / "straight")(model, optimizer, TrainState())

    run = Run(tmp_path / "failing", die_in_epoch=2)
    first, first_opt = new_model()
    with pytest.raises(RuntimeError):
        run(first, first_opt, TrainState())
    forgetful, forgetful_opt = new_model(init_seed=123)
    state = restore_checkpoint(tmp_path / "failing/epoch-1", forgetful, forgetful_opt)
    # Continue with a fresh optimizer instead of the restored one.
    Run(tmp_path / "forgetful")(forgetful, make_optimizer(forgetful, OPT), state)
    assert not all(torch.equal(forgetful.state_dict()[k], v) for k, v in model.state_dict().items())


def test_checkpoint_state_is_json_and_weights_load_with_weights_only(tmp_path):
    model, optimizer = new_model()
    state = TrainState(resumed_at=[1])
    fit_epoch(model, optimizer, batches(0), seed=1)
    state.record(0, {"train_loss": 0.5})
    save_checkpoint(tmp_path, model, ARCH, optimizer, state)

    saved = json.loads((tmp_path / TRAIN_STATE_FILE).read_text())
    assert saved == {"epoch": 0, "history": state.history, "resumed_at": [1], "device": "cpu",
                     "amp": False}
    assert restore_checkpoint(tmp_path, *new_model(init_seed=5)) == state
    opt_state = torch.load(tmp_path / OPTIMIZER_FILE, weights_only=True)
    assert opt_state["param_groups"][0]["lr"] == OPT["learning_rate"]
    assert torch.load(tmp_path / STATE_FILE, weights_only=True).keys() == model.state_dict().keys()


def test_training_learns_the_signal(tmp_path):
    model, optimizer = new_model()
    state = Run(tmp_path)(model, optimizer, TrainState())
    losses = state.history["train_loss"]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * losses[0]
    logits, labels = predict_logits(model, batches(0))
    assert binary_metrics(logits.numpy(), labels.numpy())["auc_roc"] > 0.9
    assert state.history["validation_auc_roc"][-1] > 0.9


def test_binary_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels = (rng.random(2000) < 0.05).astype(float)
    logits = rng.normal(size=2000) + 2.0 * labels
    logits[::10] = np.round(logits[::10])  # ties
    scores = 1 / (1 + np.exp(-logits))

    ours = binary_metrics(logits, labels)

    assert ours["auc_pr"] == pytest.approx(metrics.average_precision_score(labels, scores), abs=1e-12)
    assert ours["auc_roc"] == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert ours["loss"] == pytest.approx(metrics.log_loss(labels, scores), rel=1e-9)


# --- the sweep's trial contract (mlplatform.training.tuning) -----------------------------------

FEATURE_COLUMNS = project("fraud").input_columns


def torch_config(**torch_params):
    """A torch TrainConfig as a project makes it (task, label, inputs and embeddings filled)."""
    from mlplatform.pipelines import train_config

    return train_config(project("fraud"), "torch", torch=torch_params)


def frames():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(600, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    for col in ("merchant_category_code", "country_code", "device_type_code"):
        frame[col] = rng.integers(-1, 3, size=len(frame)).astype(float)
    frame["is_fraud"] = (frame["amount"] + (frame["country_code"] == 2) > 1.2).astype(int)
    return frame.iloc[:400], frame.iloc[400:]


def test_tune_trial_reports_every_epoch_and_hands_over_the_model(tmp_path):
    from mlplatform.models.torch_net import load_torch_model
    from mlplatform.training.torch_train import tune_trial

    config = torch_config(epochs=3, batch_size=32, hidden_sizes=[16], learning_rate=0.02)
    train, valid = frames()
    calls = []

    def report(rounds, metrics, *, best_round, final, model_dir=None):
        calls.append((rounds, dict(metrics), best_round, model_dir is not None))
        if model_dir:
            scores = load_torch_model(model_dir).predict(valid)
            calls.append(scores)

    tune_trial(config, train, valid, report, metric="val_auc_pr", mode="max")

    *epochs, scores = calls
    assert [(r, b, last) for r, _, b, last in epochs] == [(1, 1, False), (2, 2, False), (3, 3, True)]
    assert all(set(m) == {"val_auc_pr", "val_auc_roc", "val_logloss"} for _, m, _, _ in epochs)
    assert epochs[-1][1]["val_auc_roc"] > 0.8
    # The handed-over model is the one the last report measured.
    expected = binary_metrics(np.log(scores / (1 - scores)), valid["is_fraud"].to_numpy())
    assert expected["auc_roc"] == pytest.approx(epochs[-1][1]["val_auc_roc"], abs=1e-6)


def test_log_tuned_model_logs_the_pickle_free_pyfunc(tmp_path):
    import mlflow
    import yaml

    from mlplatform import _mlflow
    from mlplatform.config import PlatformConfig
    from mlplatform.models.torch_net import load_torch_model, save_torch_model
    from mlplatform.training.torch_train import log_tuned_model
    from tests.unit.test_torch_model import make_arch, make_frame, trained_net

    arch = make_arch()
    trial_dir = save_torch_model(tmp_path / "checkpoint_000002", trained_net(arch), arch)
    (trial_dir / "extra.json").write_text("{}")  # a Tune checkpoint may hold more files
    platform = PlatformConfig(storage_root=tmp_path / "mlp")
    with mlflow.start_run(experiment_id=_mlflow.ensure_experiment(platform, "sweep")):
        info = log_tuned_model(trial_dir, torch_config(), make_frame(5))

    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlplatform.models.torch_net"
    assert sorted(p.name for p in (local / flavor["data"]).iterdir()) == ["arch.json", "model.pt"]
    frame = make_frame(20)
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(info.model_uri).predict(frame),
                                  load_torch_model(trial_dir).predict(frame))
