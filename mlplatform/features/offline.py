"""The offline store: immutable, versioned Parquet per feature view, partitioned by date.

Layout under ``<storage_root>/feature_store/offline/<view>/``::

    versions/<version>/date=YYYY-MM-DD/*.parquet   the rows (one immutable folder per build)
    versions/<version>/_manifest.json              row count, schema, definition hash, source
    CURRENT                                        the version readers use (switched atomically)

A build writes into a hidden temp folder and only then renames it into ``versions/`` and
switches ``CURRENT``; a build that fails anywhere leaves the previous version current and intact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlplatform.errors import MLPlatformError

OFFLINE_DIR = ("feature_store", "offline")
MANIFEST = "_manifest.json"
DATE_COL = "date"


class FeatureStoreError(MLPlatformError):
    """The feature store cannot do what was asked (e.g. a view was never built)."""


@dataclass(frozen=True)
class Manifest:
    """What one immutable offline version holds."""

    view: str
    version: str
    path: Path
    data: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return int(self.data["num_rows"])

    @property
    def files(self) -> list[str]:
        """Absolute paths of the version's Parquet files."""
        return [str(self.path / f) for f in self.data["files"]]

    @property
    def definition_hash(self) -> str:
        return self.data["definition_hash"]


class OfflineStore:
    """Versioned Parquet folders of feature views under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def view_dir(self, view: str) -> Path:
        return self.root / view

    def current_version(self, view: str) -> str | None:
        ptr = self.view_dir(view) / "CURRENT"
        return ptr.read_text().strip() if ptr.is_file() else None

    def versions(self, view: str) -> list[str]:
        """Every complete version of ``view``, oldest first."""
        vdir = self.view_dir(view) / "versions"
        if not vdir.is_dir():
            return []
        return sorted(p.name for p in vdir.iterdir() if (p / MANIFEST).is_file())

    def manifest(self, view: str, version: str | None = None) -> Manifest:
        """The manifest of ``version`` (default: the current one).

        Raises:
            FeatureStoreError: The view was never built, or the version does not exist.
        """
        version = version or self.current_version(view)
        if version is None:
            raise FeatureStoreError(
                f"feature view {view!r} has no offline data yet: run `mlp features build` "
                f"(FeatureStore.build) first")
        path = self.view_dir(view) / "versions" / version
        if not (path / MANIFEST).is_file():
            raise FeatureStoreError(f"feature view {view!r} has no version {version!r}; "
                                    f"versions: {self.versions(view)}")
        return Manifest(view, version, path, json.loads((path / MANIFEST).read_text()))

    def new_version_dir(self, view: str) -> tuple[str, Path]:
        """A fresh version id and the hidden temp folder a build writes into."""
        version = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"
        tmp = self.view_dir(view) / f".tmp-{version}"
        tmp.mkdir(parents=True)
        return version, tmp

    def commit(self, view: str, version: str, tmp: Path, manifest: dict[str, Any]) -> Manifest:
        """Seal ``tmp`` as ``version`` (manifest last), then switch ``CURRENT`` to it atomically."""
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        final = self.view_dir(view) / "versions" / version
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)
        ptr_tmp = self.view_dir(view) / f".CURRENT-{uuid.uuid4().hex[:6]}"
        ptr_tmp.write_text(version + "\n")
        with open(ptr_tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(ptr_tmp, self.view_dir(view) / "CURRENT")
        return self.manifest(view, version)

    @staticmethod
    def abort(tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def carry_partitions(parent: Manifest, tmp: Path, keep) -> list[str]:
        """Hard-link (copy across filesystems) the parent's files whose date ``keep`` accepts."""
        kept = []
        for rel in parent.data["files"]:
            day = partition_date(rel)
            if day is None or not keep(day):
                continue
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(parent.path / rel, dst)
            except OSError:
                shutil.copy2(parent.path / rel, dst)
            kept.append(rel)
        return kept


def list_files(folder: Path) -> list[str]:
    """Parquet files under ``folder``, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))


def source_snapshot(path: Path) -> dict[str, Any]:
    """A fingerprint of the source files a build read (paths, sizes, mtimes)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet"))
    listing = [{"file": str(p.relative_to(path) if path.is_dir() else p.name),
                "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {"path": str(path), "num_files": len(files), "fingerprint": digest, "files": listing}


def arrow_schema_dict(folder: Path, files: list[str]) -> dict[str, str]:
    import pyarrow.parquet as pq

    if not files:
        return {}
    schema = pq.read_schema(folder / files[0])
    return {f.name: str(f.type) for f in schema if f.name != DATE_COL}


def partition_date(rel: str) -> dt.date | None:
    """The ``date=YYYY-MM-DD`` partition of a relative file path (None if it has none)."""
    for part in Path(rel).parts:
        if part.startswith(f"{DATE_COL}="):
            return dt.date.fromisoformat(part.split("=", 1)[1])
    return None


def as_utc(ts: Any) -> pd.Timestamp | None:
    """None, a date, a string or a timestamp -> tz-aware UTC ``pd.Timestamp`` (naive = UTC)."""
    if ts is None:
        return None
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
