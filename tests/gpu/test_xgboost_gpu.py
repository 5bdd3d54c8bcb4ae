"""XGBoost on Ray Train with use_gpu: the same config as on CPU, only `scaling` changes."""

import pytest


@pytest.mark.gpu
def test_train_xgboost_on_gpu_matches_cpu_quality(tmp_path):
    import ray

    from mlplatform.config import PlatformConfig
    from mlplatform.datasets import RAW_DIR, make_transactions, save_transactions
    from mlplatform.features import FeatureStore, build_training_set
    from mlplatform.training import ScalingSpec, TrainConfig, train_xgboost
    from tests.projects import project

    ray.init(address="local", num_cpus=8, ignore_reinit_error=True)
    try:
        platform = PlatformConfig(storage_root=tmp_path)
        save_transactions(make_transactions(20_000, seed=2), platform.path(*RAW_DIR))
        store = FeatureStore(platform, project("fraud"))
        store.build()
        feats = build_training_set(project("fraud"), store).path
        base = {"features_path": feats, "num_boost_round": 100, "early_stopping_rounds": 10}
        gpu = train_xgboost(TrainConfig(**base, scaling=ScalingSpec(
            num_workers=1, use_gpu=True, resources_per_worker={"CPU": 1, "GPU": 1})), platform)
        cpu = train_xgboost(TrainConfig(**base, scaling=ScalingSpec(num_workers=1)), platform)
        assert gpu.params["device"] == "cuda"
        assert abs(gpu.metrics["val_auc_roc"] - cpu.metrics["val_auc_roc"]) < 0.02
    finally:
        ray.shutdown()
