"""Clients of the local BigQuery (crucible-emulator, docs/decisions/0800-local-bigquery.md).

google-cloud-bigquery talks to it unchanged: the endpoint goes into `client_options` and the
credentials are anonymous (the emulator checks none). Writing rows differs from Google: the
emulator has no `tabledata.insertAll`, so `insert_rows` writes through a DML `INSERT`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery


def client(endpoint: str, project: str) -> bigquery.Client:
    """A google-cloud-bigquery client for the local BigQuery at `endpoint` (http://host:port)."""
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def quote_identifier(name: str) -> str:
    """A BigQuery quoted identifier (project, dataset, table or column name)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def insert_rows(
    bq: bigquery.Client, table: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Appends `rows` to `table` ("project.dataset.table") with one DML INSERT.

    Columns missing from a row are NULL. The emulator ignores query parameters, so values are
    written as literals by `literal` (escaped, never spliced raw).
    """
    if not rows:
        return
    names = ", ".join(quote_identifier(c) for c in columns)
    tuples = ["(" + ", ".join(literal(row.get(c)) for c in columns) + ")" for row in rows]
    target = ".".join(quote_identifier(part) for part in table.split("."))
    bq.query(f"INSERT INTO {target} ({names}) VALUES " + ", ".join(tuples)).result()


def literal(value: Any) -> str:
    """A GoogleSQL literal for a NULL, BOOL, INT64, FLOAT64, DATE, TIMESTAMP or STRING value."""
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped + "'"
