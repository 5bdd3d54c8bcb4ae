"""Seeded generators of realistic data, so every door runs with no download."""

from mlplatform.datasets.transactions import (
    CATEGORIES,
    COUNTRIES,
    DEVICE_TYPES,
    DRIFT_KEYS,
    RAW_DIR,
    TRANSACTION_COLUMNS,
    make_transactions,
    save_transactions,
)

__all__ = [
    "CATEGORIES",
    "COUNTRIES",
    "DEVICE_TYPES",
    "DRIFT_KEYS",
    "RAW_DIR",
    "TRANSACTION_COLUMNS",
    "make_transactions",
    "save_transactions",
]
