"""The feature store: definitions, Ray Data pipelines, offline/online stores, validation.

Entry points: :class:`FeatureStore` (build, get_historical_features, materialize,
get_online_features), :func:`load_repo` (definitions from YAML), :func:`validate` / :func:`gate`
(data contracts), :func:`model_inputs` (the on-demand transformation shared by training and
serving) and :func:`build_training_set`.
"""

from mlplatform.features.definitions import (
    DEFAULT_REPO,
    Entity,
    Feature,
    FeatureRepo,
    FeatureView,
    Source,
    load_repo,
)
from mlplatform.features.offline import FeatureStoreError, Manifest
from mlplatform.features.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    open_online_store,
)
from mlplatform.features.store import FeatureStore
from mlplatform.features.training_set import TRAINING_SET_DIR, TrainingSet, build_training_set
from mlplatform.features.transforms import (
    FEATURE_COLUMNS,
    KEY_COLUMNS,
    LABEL_COLUMN,
    REQUEST_COLUMNS,
    VIEW_FEATURES,
    VOCABULARIES,
    encode,
    model_inputs,
    model_inputs_matrix,
)
from mlplatform.features.validation import (
    CheckResult,
    ColumnRule,
    Contract,
    LabelRule,
    RowCount,
    ValidationReport,
    gate,
    load_contract,
    validate,
)

__all__ = [
    "DEFAULT_REPO", "FEATURE_COLUMNS", "KEY_COLUMNS", "LABEL_COLUMN", "REQUEST_COLUMNS",
    "TRAINING_SET_DIR", "VIEW_FEATURES", "VOCABULARIES", "CheckResult", "ColumnRule",
    "Contract", "Entity", "Feature",
    "FeatureRepo", "FeatureStore", "FeatureStoreError", "FeatureView", "LabelRule", "Manifest",
    "OnlineStore", "RowCount",
    "RedisOnlineStore", "SQLiteOnlineStore", "Source", "TrainingSet", "ValidationReport",
    "build_training_set", "encode", "gate", "load_contract", "load_repo", "model_inputs",
    "model_inputs_matrix",
    "open_online_store", "validate",
]
