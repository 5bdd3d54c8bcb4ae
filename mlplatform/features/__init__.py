"""Feature definitions and pipelines (Ray Data). Issue #3 grows this into the feature store."""

from mlplatform.features.pipeline import FEATURES_DIR, FeatureBuildResult, build_features
from mlplatform.features.transforms import (
    FEATURE_COLUMNS,
    KEY_COLUMNS,
    LABEL_COLUMN,
    VOCABULARIES,
    encode,
    user_history_features,
)

__all__ = [
    "FEATURES_DIR",
    "FEATURE_COLUMNS",
    "KEY_COLUMNS",
    "LABEL_COLUMN",
    "VOCABULARIES",
    "FeatureBuildResult",
    "build_features",
    "encode",
    "user_history_features",
]
