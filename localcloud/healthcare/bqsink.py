"""Writing DICOM rows to a BigQuery table: exports (`bigqueryDestination`) and `streamConfigs`.

The table is created when missing and gains the columns new rows need (Google generates and
widens the schema the same way). Rows go in through DML INSERT: the local BigQuery has no
`tabledata.insertAll` (docs/decisions/0800).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery

from localcloud import bigquery as local_bigquery

from . import bqrows

# The local BigQuery translates each INSERT with sqlglot in time that grows faster than the
# statement (15 columns: 20 rows 1.6 s, 40 rows 7 s on the shared CI machine): small statements.
ROWS_PER_INSERT = 20
_TABLE_URI = re.compile(r"bq://([a-z][a-z0-9:.\-]{0,100})\.([A-Za-z0-9_]{1,1024})\.([\w\-$ ]{1,1024})")
WRITE_DISPOSITIONS = ("WRITE_DISPOSITION_UNSPECIFIED", "WRITE_EMPTY", "WRITE_TRUNCATE", "WRITE_APPEND")


class SinkError(Exception):
    """A BigQuery destination refused the rows; `not_found` when its dataset does not exist."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class TableRef:
    project: str
    dataset: str
    table: str

    @property
    def path(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"


def parse_table_uri(uri: str) -> TableRef | None:
    """`bq://project.dataset.table` -> TableRef; None when malformed."""
    match = _TABLE_URI.fullmatch(uri) if len(uri) <= 2000 else None
    return TableRef(*match.groups()) if match else None


def effective_disposition(destination: Mapping[str, Any]) -> str:
    """writeDisposition wins; else the deprecated `force` (true: WRITE_TRUNCATE); else WRITE_EMPTY."""
    disposition = str(destination.get("writeDisposition") or "WRITE_DISPOSITION_UNSPECIFIED")
    if disposition != "WRITE_DISPOSITION_UNSPECIFIED":
        return disposition
    return "WRITE_TRUNCATE" if destination.get("force") is True else "WRITE_EMPTY"


class BigQuerySink:
    """One client of the local BigQuery, shared by exports and streams (one table schema change
    at a time: two writers widening the same table must not race)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._clients: dict[str, bigquery.Client] = {}
        self._lock = threading.Lock()

    def _client(self, project: str) -> bigquery.Client:
        with self._lock:
            if project not in self._clients:
                self._clients[project] = local_bigquery.client(self.endpoint, project)
            return self._clients[project]

    def write(
        self, ref: TableRef, facts: Sequence[bqrows.InstanceFacts], disposition: str = "WRITE_APPEND"
    ) -> int:
        """Writes one row per instance; returns how many. WRITE_EMPTY refuses a table with rows."""
        typed = [bqrows.flattened_row(f) for f in facts]
        wanted = bqrows.merged_types(typed)
        bq = self._client(ref.project)
        try:
            with self._lock:
                table_types = self._prepare(bq, ref, wanted, disposition)
            columns = list(bqrows.column_order(table_types))
            rows = [bqrows.conform(row, types, table_types) for row, types in typed]
            for start in range(0, len(rows), ROWS_PER_INSERT):
                local_bigquery.insert_rows(bq, ref.path, rows[start : start + ROWS_PER_INSERT], columns)
        except google_exceptions.NotFound as exc:
            raise SinkError(f"BigQuery dataset {ref.project}.{ref.dataset} not found: {exc.message}", True) from None
        except google_exceptions.GoogleAPICallError as exc:
            raise SinkError(f"BigQuery refused the rows for {ref.path}: {exc.message}") from None
        return len(rows)

    def _prepare(
        self, bq: bigquery.Client, ref: TableRef, wanted: Mapping[str, str], disposition: str
    ) -> dict[str, str]:
        """Creates or widens the table; the types of all its columns afterwards. WRITE_TRUNCATE
        replaces the table, data and schema, as Google's does (and the emulator has no DELETE)."""
        try:
            table = bq.get_table(ref.path)
            if disposition == "WRITE_TRUNCATE":
                bq.delete_table(ref.path)
                raise google_exceptions.NotFound("replaced")
        except google_exceptions.NotFound:
            bq.get_dataset(f"{ref.project}.{ref.dataset}")  # NotFound: the dataset must exist
            fields = [bigquery.SchemaField(n, wanted[n]) for n in bqrows.column_order(wanted)]
            bq.create_table(bigquery.Table(ref.path, schema=fields))
            return dict(wanted)
        if disposition == "WRITE_EMPTY" and _has_rows(bq, ref):
            raise SinkError(f"BigQuery table {ref.path} is not empty (writeDisposition WRITE_EMPTY)")
        current = {f.name: f.field_type for f in table.schema}
        missing = [n for n in bqrows.column_order(wanted) if n not in current]
        if missing:
            table.schema = list(table.schema) + [bigquery.SchemaField(n, wanted[n]) for n in missing]
            bq.update_table(table, ["schema"])
            current.update({n: wanted[n] for n in missing})
        return current


def _quoted(ref: TableRef) -> str:
    return ".".join(local_bigquery.quote_identifier(p) for p in (ref.project, ref.dataset, ref.table))


def _has_rows(bq: bigquery.Client, ref: TableRef) -> bool:
    return bool(list(bq.query(f"SELECT 1 AS one FROM {_quoted(ref)} LIMIT 1").result()))
