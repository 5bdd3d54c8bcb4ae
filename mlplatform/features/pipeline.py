"""The Ray Data feature pipeline: raw transactions (Parquet) -> per-transaction features (Parquet).

The work is distributed: Ray Data shuffles rows by ``user_id`` and each group's history features
are computed where the group lands, so no step collects the data into the driver.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from mlplatform._fs import atomic_dir
from mlplatform.datasets.transactions import TRANSACTION_COLUMNS
from mlplatform.errors import DataValidationError
from mlplatform.features.transforms import FEATURE_COLUMNS, user_bucket, user_history_features

_BUCKET = "_user_bucket"
#: Where the platform keeps transaction features, under ``storage_root``.
FEATURES_DIR = ("features", "transactions")


@dataclass(frozen=True)
class FeatureBuildResult:
    """What :func:`build_features` wrote."""

    path: Path
    num_rows: int
    feature_columns: tuple[str, ...]


def build_features(
    raw_path: str | Path,
    out_path: str | Path,
    num_buckets: int = 64,
    shuffle_strategy: str = "sort_shuffle_pull_based",
) -> FeatureBuildResult:
    """Compute transaction features with Ray Data and write them as Parquet.

    Args:
        raw_path: Folder (or file) of raw transactions with :data:`TRANSACTION_COLUMNS`.
        out_path: Folder to write; replaced atomically, so a failed build keeps the old one.
        num_buckets: Number of user-hash groups the work is split into (the unit of parallelism).
        shuffle_strategy: Ray Data ``ShuffleStrategy`` value for the group-by. The sort-based
            pull shuffle measured 2x faster than the hash shuffle on a 2-core machine
            (9 s vs 16-22 s for 50k rows); use "hash_shuffle" on large clusters if it wins there.

    Returns:
        The output folder, its row count and the feature column names.

    Raises:
        DataValidationError: ``raw_path`` is missing, empty, or lacks required columns.
    """
    raw_path, out_path = Path(raw_path), Path(out_path)
    _check_raw(raw_path)
    with _shuffle_strategy(shuffle_strategy):
        _run(raw_path, out_path, num_buckets)
    num_rows = pq.ParquetDataset(str(out_path)).read(columns=["transaction_id"]).num_rows
    return FeatureBuildResult(out_path, num_rows, tuple(FEATURE_COLUMNS))


def _run(raw_path: Path, out_path: Path, num_buckets: int) -> None:
    import ray.data

    ds = ray.data.read_parquet(str(raw_path))
    # Group on a hash bucket of user_id, not on user_id: every user's rows still meet in one
    # call (history features need them all), but each call handles many users vectorised
    # instead of paying the per-call cost once per user.
    ds = ds.map_batches(_add_bucket, batch_format="pandas", fn_kwargs={"num_buckets": num_buckets})
    feats = ds.groupby(_BUCKET).map_groups(_features_of_bucket, batch_format="pandas")
    with atomic_dir(out_path) as tmp:
        feats.write_parquet(str(tmp))


def _check_raw(raw_path: Path) -> None:
    if not raw_path.exists():
        raise DataValidationError(
            f"raw data {raw_path} does not exist; generate it first (mlplatform.datasets."
            "make_transactions + save_transactions, or `mlp demo`).")
    try:
        schema = pq.ParquetDataset(str(raw_path)).schema
    except Exception as exc:  # pyarrow raises several types for empty/corrupt input
        raise DataValidationError(f"raw data {raw_path} is not readable Parquet: {exc}") from None
    missing = [c for c in TRANSACTION_COLUMNS if c != "is_fraud" and c not in schema.names]
    if missing:
        raise DataValidationError(
            f"raw data {raw_path} lacks required column(s) {missing}; it has {schema.names}. "
            f"Expected the columns of mlplatform.datasets.TRANSACTION_COLUMNS.")


def _add_bucket(batch, num_buckets: int):
    batch[_BUCKET] = user_bucket(batch["user_id"], num_buckets)
    return batch


def _features_of_bucket(batch):
    return user_history_features(batch.drop(columns=[_BUCKET]))


@contextlib.contextmanager
def _shuffle_strategy(name: str):
    """Use ``name`` as Ray Data's shuffle strategy inside the block, then restore the old one."""
    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    previous = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy(name)
    try:
        yield
    finally:
        ctx.shuffle_strategy = previous
