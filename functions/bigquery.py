"""BigQuery for the `sql` selector: one query job, its rows streamed page by page (`SqlRunner`).

google-cloud-bigquery is imported on first use, so the other functions and the export function's
cold start do not pay for it (bench/cold_start.py). Against the local BigQuery
(`BIGQUERY_API_URL` is an http:// URL) the client sends no credentials.

Errors: a query BigQuery refuses or fails (4xx, a failed job, a timeout) becomes `SqlQueryError`,
whose reason is BigQuery's error reason and message with every quoted part blanked out (a
message may quote a literal of the query or a value: PHI); 429 and 5xx become
`TransientApiError` so the platform redelivers the request.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from typing import Any

from functions.clients import QueryResult
from functions.errors import SqlQueryError, TransientApiError, api_error
from functions.settings import DEFAULT_BIGQUERY_API_URL, Settings

_PAGE_SIZE = 10_000
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|`[^`]*`")
MAX_MESSAGE_CHARS = 300


def redact(message: str) -> str:
    """BigQuery's error message without quoted parts (they may be literals or values), cut short."""
    text = _QUOTED.sub("\"…\"", message)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def query_error(exc: Exception) -> Exception:
    """`SqlQueryError` for a refused or failed query, `TransientApiError` for a fault worth a retry."""
    code = getattr(exc, "code", None)
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    reason = str(first.get("reason") or "")
    message = str(first.get("message") or getattr(exc, "message", "") or exc)
    if isinstance(code, int) and (code in (429, 408) or code >= 500) and reason not in ("invalidQuery",):
        return api_error(code, redact(message), resource="bigquery")
    if reason in ("rateLimitExceeded", "backendError", "internalError"):
        return TransientApiError(503, redact(message), resource="bigquery")
    label = f"{code} {reason}".strip() if code or reason else type(exc).__name__
    return SqlQueryError(f"BigQuery refused or failed the sql ({label}): {redact(message)}")


class BigQueryClient:
    """Runs `sql` selector queries as query jobs in the function's project."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._settings = settings
        self._client = client

    def _bq(self) -> Any:
        if self._client is None:
            from google.api_core.client_options import ClientOptions
            bigquery = _bigquery()

            url = self._settings.bigquery_api_url
            options = ClientOptions(api_endpoint=url) if url != DEFAULT_BIGQUERY_API_URL else None
            credentials = None
            if url.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            self._client = bigquery.Client(project=self._settings.project, credentials=credentials,
                                           client_options=options)
        return self._client

    def run_query(self, sql: str, *, timeout_seconds: float) -> QueryResult:
        from google.api_core.exceptions import GoogleAPICallError
        bigquery = _bigquery()

        client = self._bq()
        config = bigquery.QueryJobConfig(use_legacy_sql=False, job_timeout_ms=int(timeout_seconds * 1000))
        job = None
        try:
            job = client.query(sql, job_config=config, timeout=self._settings.http_timeout_seconds)
            rows = job.result(timeout=timeout_seconds, page_size=_PAGE_SIZE)
        except concurrent.futures.TimeoutError:
            if job is not None:
                try:
                    job.cancel()
                except GoogleAPICallError:
                    pass  # the job times out on BigQuery's side too (job_timeout_ms)
            raise SqlQueryError(
                f"the sql did not finish within {timeout_seconds:.0f} s (DICOM_SQL_TIMEOUT_SECONDS)"
            ) from None
        except GoogleAPICallError as exc:
            raise query_error(exc) from None
        columns = tuple(field.name for field in (rows.schema or ()))
        total = rows.total_rows
        return QueryResult(columns=columns, total_rows=int(total) if total is not None else None,
                           rows=_stream(rows))


def _bigquery() -> Any:
    """google.cloud.bigquery, imported on first use (cold start). Through importlib, because the
    package is typed and mypy would then treat the `google.cloud` namespace as a regular package
    and stop resolving `from google.cloud import pubsub_v1` (untyped) elsewhere."""
    import importlib

    return importlib.import_module("google.cloud.bigquery")


def _stream(rows: Any) -> Iterator[tuple[Any, ...]]:
    from google.api_core.exceptions import GoogleAPICallError

    try:
        for row in rows:
            yield tuple(row.values())
    except GoogleAPICallError as exc:
        raise query_error(exc) from None
