"""Persistent state: a SQLite index (datasets, stores, instances, operations) plus blobs.

One connection shared under a lock: SQLite serialises writers anyway, and a single connection
avoids SQLITE_BUSY between request threads and operation workers. Blobs are content-addressed
(sha256). Small ones live in the index database itself, written in the transaction of their
index row (creating a file costs more than a millisecond of CPU here, an insert microseconds);
larger ones are files, written before the index row. Either way a crash never leaves a row
without its bytes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .dicomfile import InstanceInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (name TEXT PRIMARY KEY, time_zone TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dicom_stores (
    name TEXT PRIMARY KEY, dataset TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS instances (
    store TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL, sop TEXT NOT NULL,
    sop_class TEXT NOT NULL, transfer_syntax TEXT NOT NULL, patient_id TEXT NOT NULL,
    study_date TEXT NOT NULL, modality TEXT NOT NULL, attrs TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, storage_class TEXT NOT NULL, stored_at TEXT NOT NULL,
    PRIMARY KEY (store, sop));
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (store, study, series);
CREATE TABLE IF NOT EXISTS small_blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS operations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, dataset TEXT NOT NULL,
    body TEXT NOT NULL);
"""


# Blobs up to this size are kept in the database (SQLite reads and writes blobs of up to about
# 100 KB faster than separate files: https://www.sqlite.org/intern-v-extern-blob.html).
SMALL_BLOB_BYTES = 128 * 1024


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ConflictError(Exception):
    """Same SOP Instance UID already stored with different bytes."""


class Indexed(enum.Enum):
    """What indexing one instance did."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: kept as is, not overwritten
    CONFLICT = "conflict"  # same SOP Instance UID, other bytes: not stored


@dataclass(frozen=True)
class Blob:
    """The bytes of an instance, ready to index: `inline` for a small blob (stored with its
    index row), None once a large blob's file is written."""

    sha256: str
    size: int
    inline: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class InstanceRow:
    store: str
    study: str
    series: str
    sop: str
    sop_class: str
    transfer_syntax: str
    patient_id: str
    study_date: str
    modality: str
    attrs: dict[str, Any]
    sha256: str
    size: int
    storage_class: str
    stored_at: str

    def qido_row(self) -> dict[str, str]:
        """The keys QidoQuery.matches() reads."""
        return {
            "PatientID": self.patient_id,
            "StudyInstanceUID": self.study,
            "SeriesInstanceUID": self.series,
            "SOPInstanceUID": self.sop,
            "StudyDate": self.study_date,
            "Modality": self.modality,
        }


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._blob_dirs: set[str] = set()  # blob subfolders known to exist (saves a mkdir per blob)
        self._db = sqlite3.connect(data_dir / "index.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.executescript(_MANAGEMENT_SCHEMA)
        self._instance_listeners: list[InstanceListener] = []

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- datasets and stores -------------------------------------------------------------------

    def create_dataset(self, name: str, time_zone: str) -> bool:
        with self._tx() as db:
            return db.execute("INSERT OR IGNORE INTO datasets VALUES (?, ?)", (name, time_zone)).rowcount == 1

    def get_dataset(self, name: str) -> dict[str, str] | None:
        rows = self._query("SELECT name, time_zone FROM datasets WHERE name = ?", (name,))
        return {"name": rows[0]["name"], "timeZone": rows[0]["time_zone"]} if rows else None

    def list_datasets(self, parent: str) -> list[dict[str, str]]:
        rows = self._query(
            "SELECT name, time_zone FROM datasets WHERE name LIKE ? ORDER BY name", (parent + "/%",)
        )
        return [{"name": r["name"], "timeZone": r["time_zone"]} for r in rows]

    def create_dicom_store(self, name: str, dataset: str, labels: dict[str, str]) -> bool:
        with self._tx() as db:
            sql = "INSERT OR IGNORE INTO dicom_stores VALUES (?, ?, ?)"
            return db.execute(sql, (name, dataset, json.dumps(labels))).rowcount == 1

    def get_dicom_store(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT name, labels FROM dicom_stores WHERE name = ?", (name,))
        return _store_json(rows[0]) if rows else None

    def list_dicom_stores(self, dataset: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT name, labels FROM dicom_stores WHERE dataset = ? ORDER BY name", (dataset,)
        )
        return [_store_json(r) for r in rows]

    def delete_dicom_store(self, name: str) -> bool:
        with self._tx() as db:
            shas = {r["sha256"] for r in db.execute("SELECT sha256 FROM instances WHERE store = ?", (name,))}
            db.execute("DELETE FROM instances WHERE store = ?", (name,))
            db.execute("DELETE FROM storage_class_updates WHERE store = ?", (name,))
            deleted = db.execute("DELETE FROM dicom_stores WHERE name = ?", (name,)).rowcount == 1
            still_used = {
                r["sha256"]
                for sha in shas
                for r in db.execute("SELECT sha256 FROM instances WHERE sha256 = ?", (sha,))
            }
            db.executemany("DELETE FROM small_blobs WHERE sha256 = ?", [(sha,) for sha in shas - still_used])
        for sha in shas - still_used:
            self._blob_path(sha).unlink(missing_ok=True)
        return deleted

    # --- instances -------------------------------------------------------------------------------

    def put_instance(
        self, store: str, info: InstanceInfo, data: bytes, storage_class: str, action: str = "StoreInstances"
    ) -> bool:
        """Store an instance. Returns False for an identical duplicate (kept as is, not
        overwritten); raises ConflictError for the same SOP Instance UID with different bytes.
        A newly stored instance is announced to the instance listeners (`action` names the API
        method that stored it, as Pub/Sub notifications do)."""
        outcome = self.index_instances(store, [(info, self.write_blob(data))], storage_class, action)[0]
        if outcome is Indexed.CONFLICT:
            raise ConflictError(info.sop)
        return outcome is Indexed.NEW

    def write_blob(self, data: bytes) -> Blob:
        """Prepare the bytes of an instance for index_instances(): a large blob's file is
        written now (before its index row), a small blob travels with its row."""
        sha = hashlib.sha256(data).hexdigest()
        if len(data) <= SMALL_BLOB_BYTES:
            return Blob(sha, len(data), data)
        self._write_blob(sha, data)
        return Blob(sha, len(data))

    def index_instances(
        self, store: str, items: Sequence[tuple[InstanceInfo, Blob]], storage_class: str,
        action: str = "StoreInstances",
    ) -> list[Indexed]:
        """Index instances whose blobs are written, all in one transaction, in order (a later
        item with the SOP Instance UID of an earlier one is its duplicate or conflict)."""
        outcomes = []
        new: list[InstanceInfo] = []
        stored_at = now_rfc3339()
        with self._tx() as db:
            for info, blob in items:
                row = (
                    store,
                    info.study,
                    info.series,
                    info.sop,
                    info.sop_class,
                    info.transfer_syntax,
                    info.patient_id,
                    info.study_date,
                    info.modality,
                    json.dumps(info.attrs),
                    blob.sha256,
                    blob.size,
                    storage_class,
                    stored_at,
                )
                if db.execute("INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row).rowcount:
                    if blob.inline is not None:
                        db.execute("INSERT OR IGNORE INTO small_blobs VALUES (?, ?)", (blob.sha256, blob.inline))
                    outcomes.append(Indexed.NEW)
                    new.append(info)
                    continue
                existing = db.execute(
                    "SELECT sha256 FROM instances WHERE store = ? AND sop = ?", (store, info.sop)
                ).fetchone()
                outcomes.append(Indexed.DUPLICATE if existing["sha256"] == blob.sha256 else Indexed.CONFLICT)
        # Announced once committed: a listener never sees an instance a rollback takes back.
        for info in new:
            self._announce(store, info, storage_class, action)
        return outcomes

    def instances(
        self, store: str, study: str | None = None, series: str | None = None, sop: str | None = None
    ) -> list[InstanceRow]:
        sql = "SELECT * FROM instances WHERE store = ?"
        args: list[Any] = [store]
        for column, value in (("study", study), ("series", series), ("sop", sop)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        rows = self._query(sql + " ORDER BY study, series, stored_at, sop", tuple(args))
        return [InstanceRow(**{**dict(r), "attrs": json.loads(r["attrs"])}) for r in rows]

    def read_blob(self, row: InstanceRow) -> bytes:
        if row.size <= SMALL_BLOB_BYTES:
            found = self._query("SELECT data FROM small_blobs WHERE sha256 = ?", (row.sha256,))
            if found:
                return bytes(found[0]["data"])
            # else: stored as a file by an emulator version before small blobs moved into the index
        return self._blob_path(row.sha256).read_bytes()

    def _blob_path(self, sha: str) -> Path:
        return self.blob_dir / sha[:2] / sha

    def _write_blob(self, sha: str, data: bytes) -> None:
        path = self._blob_path(sha)
        if path.exists():
            return
        if path.parent.name not in self._blob_dirs:
            path.parent.mkdir(exist_ok=True)
            self._blob_dirs.add(path.parent.name)
        # Write-then-rename: a concurrent writer of the same bytes or a crash never leaves a torn
        # blob. The temporary name is per thread, so concurrent writers never share one.
        tmp = path.parent / f".{sha}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    # --- operations ------------------------------------------------------------------------------

    def save_operation(self, op_id: str, dataset: str, body: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO operations (id, dataset, body) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                (op_id, dataset, json.dumps(body)),
            )

    def get_operation(self, op_id: str, dataset: str) -> dict[str, Any] | None:
        rows = self._query("SELECT body FROM operations WHERE id = ? AND dataset = ?", (op_id, dataset))
        return json.loads(rows[0]["body"]) if rows else None

    def list_operations(self, dataset: str, offset: int, limit: int) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT body FROM operations WHERE dataset = ? ORDER BY seq LIMIT ? OFFSET ?",
            (dataset, limit, offset),
        )
        return [json.loads(r["body"]) for r in rows]

    def unfinished_operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._query("SELECT id, dataset, body FROM operations")
        ops = [(r["id"], r["dataset"], json.loads(r["body"])) for r in rows]
        return [op for op in ops if not op[2].get("done")]

    # --- management state (store configuration, IAM policies, metrics) -----------------

    def _announce(self, store: str, info: InstanceInfo, storage_class: str, action: str) -> bool:
        for listener in self._instance_listeners:
            listener(store, info, storage_class, action)
        return True

    def add_instance_listener(self, listener: InstanceListener) -> None:
        """`listener(store, info, storage_class, action)` for every newly stored instance."""
        self._instance_listeners.append(listener)

    def get_store_config(self, name: str) -> dict[str, Any]:
        """The DicomStore fields besides name and labels (notificationConfig(s), streamConfigs)."""
        rows = self._query("SELECT body FROM dicom_store_configs WHERE name = ?", (name,))
        return json.loads(rows[0]["body"]) if rows else {}

    def all_store_configs(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._query("SELECT name, body FROM dicom_store_configs")
        return [(r["name"], json.loads(r["body"])) for r in rows]

    def set_store_config(self, name: str, config: dict[str, Any], labels: dict[str, str]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO dicom_store_configs VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                (name, json.dumps(config)),
            )
            db.execute("UPDATE dicom_stores SET labels = ? WHERE name = ?", (json.dumps(labels), name))

    def forget_resource(self, name: str) -> None:
        """Drop the configuration and IAM policy of a deleted store or dataset."""
        with self._tx() as db:
            db.execute("DELETE FROM dicom_store_configs WHERE name = ?", (name,))
            db.execute("DELETE FROM iam_policies WHERE resource = ?", (name,))

    def set_dataset_time_zone(self, name: str, time_zone: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE datasets SET time_zone = ? WHERE name = ?", (time_zone, name))

    def delete_dataset(self, name: str) -> bool:
        """Delete a dataset with its stores, instances, operations and policies."""
        stores = [r["name"] for r in self._query("SELECT name FROM dicom_stores WHERE dataset = ?", (name,))]
        for store in stores:
            self.delete_dicom_store(store)
            self.forget_resource(store)
        with self._tx() as db:
            db.execute("DELETE FROM operations WHERE dataset = ?", (name,))
            deleted = db.execute("DELETE FROM datasets WHERE name = ?", (name,)).rowcount == 1
        self.forget_resource(name)
        return bool(deleted)

    def clear_management(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM dicom_store_configs")
            db.execute("DELETE FROM iam_policies")

    def metrics(self, store: str, study: str | None = None, series: str | None = None) -> dict[str, int]:
        """Counts and sizes of a store, study or series (structured size: the stored attributes)."""
        sql = (
            "SELECT COUNT(DISTINCT study) AS studies, COUNT(DISTINCT series) AS series, COUNT(*) AS instances,"
            " COALESCE(SUM(LENGTH(attrs)), 0) AS structured, COALESCE(SUM(size), 0) AS blob"
            " FROM instances WHERE store = ?"
        )
        args: list[Any] = [store]
        for column, value in (("study", study), ("series", series)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return dict(self._query(sql, tuple(args))[0])

    def set_storage_class(self, store: str, sops: list[str], storage_class: str) -> dict[str, str]:
        """Move instances to `storage_class`; returns {sop: previous class} of those that changed."""
        changed: dict[str, str] = {}
        updated_at = now_rfc3339()
        with self._tx() as db:
            for sop in sops:
                row = db.execute(
                    "SELECT storage_class FROM instances WHERE store = ? AND sop = ?", (store, sop)
                ).fetchone()
                if row is None or row["storage_class"] == storage_class:
                    continue
                db.execute(
                    "UPDATE instances SET storage_class = ? WHERE store = ? AND sop = ?", (storage_class, store, sop)
                )
                db.execute(
                    "INSERT INTO storage_class_updates VALUES (?, ?, ?)"
                    " ON CONFLICT (store, sop) DO UPDATE SET updated_at = excluded.updated_at",
                    (store, sop, updated_at),
                )
                changed[sop] = row["storage_class"]
        return changed

    def storage_class_updated_at(self, store: str, sop: str) -> str | None:
        """When `setBlobStorageSettings` last changed the instance's class; None: never."""
        rows = self._query("SELECT updated_at FROM storage_class_updates WHERE store = ? AND sop = ?", (store, sop))
        return str(rows[0]["updated_at"]) if rows else None

    def get_policy(self, resource: str) -> dict[str, Any] | None:
        rows = self._query("SELECT policy FROM iam_policies WHERE resource = ?", (resource,))
        return json.loads(rows[0]["policy"]) if rows else None

    def replace_policy(
        self, resource: str, policy: dict[str, Any], expected_etag: str | None, empty_etag: str
    ) -> None:
        """Store `policy` if the current etag is `expected_etag` (None: unconditionally), atomically."""
        with self._tx() as db:
            row = db.execute("SELECT policy FROM iam_policies WHERE resource = ?", (resource,)).fetchone()
            current = json.loads(row["policy"])["etag"] if row else empty_etag
            if expected_etag is not None and expected_etag != current:
                raise PolicyConflict(expected_etag, current)
            db.execute(
                "INSERT INTO iam_policies VALUES (?, ?) ON CONFLICT (resource) DO UPDATE SET policy = excluded.policy",
                (resource, json.dumps(policy)),
            )

    def clear(self) -> None:
        """Drop all data (control API reset with data=true)."""
        with self._tx() as db:
            tables = ("instances", "small_blobs", "dicom_stores", "datasets", "operations", "storage_class_updates")
            for table in tables:
                db.execute(f"DELETE FROM {table}")
        for path in self.blob_dir.glob("*/*"):
            path.unlink()

    # --- DICOMweb deletes (appended) -------------------------------------------------------------

    def delete_instances(
        self, store: str, study: str, series: str | None = None, sop: str | None = None
    ) -> int:
        """Delete a study, series or instance; returns how many instances went. Blobs no other row
        uses are removed after the rows (a crash in between leaves an orphan blob, never a row
        without its bytes)."""
        sql = "FROM instances WHERE store = ? AND study = ?"
        args: list[Any] = [store, study]
        for column, value in (("series", series), ("sop", sop)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        with self._tx() as db:
            shas = {r["sha256"] for r in db.execute(f"SELECT sha256 {sql}", args)}
            db.execute(
                f"DELETE FROM storage_class_updates WHERE store = ? AND sop IN (SELECT sop {sql})", [store, *args]
            )
            deleted = db.execute(f"DELETE {sql}", args).rowcount
            still_used = {
                r["sha256"]
                for sha in shas
                for r in db.execute("SELECT sha256 FROM instances WHERE sha256 = ? LIMIT 1", (sha,))
            }
        for sha in shas - still_used:
            self._blob_path(sha).unlink(missing_ok=True)
        return int(deleted)


def _store_json(row: sqlite3.Row) -> dict[str, Any]:
    labels = json.loads(row["labels"])
    return {"name": row["name"], **({"labels": labels} if labels else {})}


# --- management state --------------------------------------------------------------------------

_MANAGEMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS dicom_store_configs (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS iam_policies (resource TEXT PRIMARY KEY, policy TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS storage_class_updates (
    store TEXT NOT NULL, sop TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (store, sop));
"""

# Called inside the storing transaction: must be quick and must not write to the index.
InstanceListener = Callable[[str, InstanceInfo, str, str], None]


class PolicyConflict(Exception):
    """setIamPolicy with an etag that is no longer the policy's."""

    def __init__(self, requested: str, current: str) -> None:
        super().__init__(requested)
        self.requested = requested
        self.current = current
