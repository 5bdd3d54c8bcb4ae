"""The torch trainer with use_gpu: the same config as on CPU, only `scaling` changes; the forward
pass runs under bf16 autocast and the model it logs still loads and scores on CPU."""

import numpy as np
import pytest


@pytest.mark.gpu
def test_train_torch_on_gpu_with_bf16_matches_cpu_quality(tmp_path):
    import mlflow
    import pandas as pd
    import ray
    import torch

    from mlplatform.config import PlatformConfig
    from mlplatform.datasets import RAW_DIR, make_transactions, save_transactions
    from mlplatform.features import FeatureStore, build_training_set
    from mlplatform.training import ScalingSpec, TorchParams, TrainConfig
    from mlplatform.training.torch_train import train_torch
    from tests.projects import project

    ray.init(address="local", num_cpus=8, ignore_reinit_error=True)
    try:
        platform = PlatformConfig(storage_root=tmp_path)
        save_transactions(make_transactions(20_000, seed=2), platform.path(*RAW_DIR))
        store = FeatureStore(platform, project("fraud"))
        store.build()
        feats = build_training_set(project("fraud"), store).path
        FEATURE_COLUMNS = project("fraud").input_columns
        base = {"model": "torch", "features_path": feats,
                "torch": TorchParams(epochs=4, batch_size=256, hidden_sizes=[64, 32],
                                     learning_rate=3e-3, amp=True)}
        gpu = train_torch(TrainConfig(**base, scaling=ScalingSpec(
            num_workers=1, use_gpu=True, resources_per_worker={"CPU": 1, "GPU": 1})), platform)
        cpu = train_torch(TrainConfig(**base, scaling=ScalingSpec(num_workers=1)), platform)

        # bf16 autocast runs where the GPU has native bf16 (Ampere and later).
        assert gpu.params["device"] == "cuda"
        assert gpu.params["amp"] is torch.cuda.is_bf16_supported()
        assert cpu.params["device"] == "cpu" and cpu.params["amp"] is False
        assert abs(gpu.metrics["val_auc_roc"] - cpu.metrics["val_auc_roc"]) < 0.02, (gpu, cpu)
        assert gpu.metrics["val_auc_pr"] > cpu.metrics["val_auc_pr"] - 0.05, (gpu, cpu)
        # The GPU-trained model is served like any other: it loads and scores on CPU.
        frame = pd.read_parquet(feats).head(200)[FEATURE_COLUMNS]
        scores = mlflow.pyfunc.load_model(gpu.model_uri).predict(frame)
        assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    finally:
        ray.shutdown()
