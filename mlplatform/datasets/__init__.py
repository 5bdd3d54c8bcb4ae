"""Seeded generators of realistic data, so every door runs with no download.

Example data sources only: the example projects name them in their ``data.generate``; no other
package of mlplatform imports them."""

from mlplatform.datasets.deliveries import (
    CUISINES,
    DELIVERY_COLUMNS,
    VEHICLES,
    WEATHER,
    make_deliveries,
    save_deliveries,
    write_deliveries,
)
from mlplatform.datasets.transactions import (
    CATEGORIES,
    COUNTRIES,
    DEVICE_TYPES,
    DRIFT_KEYS,
    RAW_DIR,
    TRANSACTION_COLUMNS,
    make_transactions,
    save_transactions,
    write_transactions,
)

__all__ = [
    "CATEGORIES",
    "COUNTRIES",
    "CUISINES",
    "DELIVERY_COLUMNS",
    "DEVICE_TYPES",
    "DRIFT_KEYS",
    "RAW_DIR",
    "TRANSACTION_COLUMNS",
    "VEHICLES",
    "WEATHER",
    "make_deliveries",
    "make_transactions",
    "save_deliveries",
    "save_transactions",
    "write_deliveries",
    "write_transactions",
]
