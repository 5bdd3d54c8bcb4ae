"""The feature store: definitions, Ray Data pipelines, offline/online stores, validation.

Entry points: :class:`FeatureStore` (build, get_historical_features, materialize,
get_online_features), :func:`validate` / :func:`gate` (data contracts) and
:func:`build_training_set` (labelled rows + point-in-time features + the project's model
inputs). The definitions themselves (sources, entities, feature views) are part of a project
file: :mod:`mlplatform.project`.
"""

from mlplatform.features.offline import FeatureStoreError, Manifest
from mlplatform.features.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    open_online_store,
)
from mlplatform.features.store import FeatureStore
from mlplatform.features.training_set import TRAINING_SET_DIR, TrainingSet, build_training_set
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
from mlplatform.project.definitions import (
    Entity,
    Feature,
    FeatureRepo,
    FeatureView,
    Source,
    load_repo,
)

__all__ = [
    "TRAINING_SET_DIR", "CheckResult", "ColumnRule", "Contract", "Entity", "Feature",
    "FeatureRepo", "FeatureStore", "FeatureStoreError", "FeatureView", "LabelRule", "Manifest",
    "OnlineStore", "RedisOnlineStore", "RowCount", "SQLiteOnlineStore", "Source", "TrainingSet",
    "ValidationReport", "build_training_set", "gate", "load_contract", "load_repo",
    "open_online_store", "validate",
]
