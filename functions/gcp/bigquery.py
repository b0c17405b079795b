"""BigQuery for the `sql` selector: a dry run, then one query job, its rows streamed page by page
(`SqlRunner`).

google-cloud-bigquery is imported on first use, so the other functions and the export function's
cold start do not pay for it (bench/cold_start.py). Against the local BigQuery
(`BIGQUERY_API_URL` is an http:// URL) the client sends no credentials.

With `DICOM_SQL_SERVICE_ACCOUNT` set, every call runs as that account: the function's own
credentials mint its tokens (google-auth `impersonated_credentials`; the function's account holds
`roles/iam.serviceAccountTokenCreator` on that one account only). Queries then read what that
account may read, and it may write nothing (docs/decisions/0872).

Errors: a query BigQuery refuses or fails (4xx, a failed job, a timeout) becomes `SqlQueryError`
whose reason keeps BigQuery's error reason, its location and the `[line:column]` position only.
BigQuery's message is never passed on: it can quote a literal, a cast value or a row value (PHI),
and no blanking of quotes is safe against a value that holds a quote. 429 and 5xx become
`TransientApiError` (without the message either) so the platform redelivers the request.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from typing import Any

from functions.core.errors import SqlQueryError, TransientApiError, api_error
from functions.core.sql_gate import DryRun, dry_run_from_statistics
from functions.gcp.clients import QueryResult
from functions.settings import DEFAULT_BIGQUERY_API_URL, Settings

_PAGE_SIZE = 10_000
_POSITION = re.compile(r"\[(\d{1,7}):(\d{1,7})\]")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
BIGQUERY_SCOPE = "https://www.googleapis.com/auth/bigquery"
# What each reason means for the caller, in our words (BigQuery's own message is never shown).
_REASONS = {
    "invalidQuery": "the sql is not valid for BigQuery (syntax, names or types)",
    "bytesBilledLimitExceeded": "the sql would process more bytes than DICOM_SQL_MAX_BYTES_BILLED allows",
    "accessDenied": "the query account may not read what the sql names",
    "notFound": "a table or dataset the sql names does not exist",
    "resourcesExceeded": "the sql needs more resources than BigQuery gives one query",
    "responseTooLarge": "the result is too large",
    "quotaExceeded": "a BigQuery quota is used up",
    "stopped": "the query was stopped",
    "timeout": "the query took too long",
}


def describe(exc: Exception) -> tuple[int | None, str, str]:
    """(HTTP code, reason, location) of a BigQuery error: safe words only, never its message."""
    code = getattr(exc, "code", None)
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    reason = str(first.get("reason") or "")
    location = str(first.get("location") or "")
    return (code if isinstance(code, int) else None, reason if _TOKEN.fullmatch(reason) else "",
            location if _TOKEN.fullmatch(location) else "")


def position(exc: Exception) -> str:
    """`[line:column]` where BigQuery's message points into the statement, if it does."""
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    found = _POSITION.search(str(first.get("message") or getattr(exc, "message", "") or ""))
    return f"[{found.group(1)}:{found.group(2)}]" if found else ""


def query_error(exc: Exception) -> Exception:
    """`SqlQueryError` for a refused or failed query, `TransientApiError` for a fault worth a retry.

    Neither carries BigQuery's message: only the status code, the reason, the location (a field
    or parameter name) and the position in the statement.
    """
    code, reason, location = describe(exc)
    label = " ".join(part for part in (str(code) if code else "", reason) if part) or type(exc).__name__
    # The client raises a job's errorResult by reason and maps reasons it does not know to 500:
    # `bytesBilledLimitExceeded` comes as a 500 but a retry fails the same way.
    if code is not None and (code in (429, 408) or code >= 500) and reason not in _REASONS:
        return api_error(code, f"BigQuery answered {label}", resource="bigquery")
    if reason in ("rateLimitExceeded", "backendError", "internalError"):
        return TransientApiError(503, f"BigQuery answered {label}", resource="bigquery")
    where = " ".join(part for part in (f"at {position(exc)}" if position(exc) else "",
                                       f"in {location}" if location else "") if part)
    meaning = _REASONS.get(reason, "see the reason")
    return SqlQueryError(f"BigQuery refused or failed the sql ({label}{', ' + where if where else ''}): {meaning}; "
                         "BigQuery's message is not shown (it may quote patient data)")


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
            credentials: Any = None
            if url.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            elif self._settings.sql_service_account:
                credentials = query_credentials(self._settings.sql_service_account)
            self._client = bigquery.Client(project=self._settings.project, credentials=credentials,
                                           client_options=options)
        return self._client

    def dry_run(self, sql: str) -> DryRun:
        """BigQuery's dry run of `sql`: nothing runs and nothing is billed."""
        from google.api_core.exceptions import GoogleAPICallError
        bigquery = _bigquery()

        config = bigquery.QueryJobConfig(use_legacy_sql=False, dry_run=True, use_query_cache=False)
        try:
            job = self._bq().query(sql, job_config=config, timeout=self._settings.http_timeout_seconds)
        except GoogleAPICallError as exc:
            raise query_error(exc) from None
        # The job's statistics as the REST answer gave them (the client has no public accessor
        # for referencedRoutines; the other fields match its statement_type, referenced_tables...).
        statistics = (getattr(job, "_properties", {}).get("statistics") or {}).get("query") or {}
        return dry_run_from_statistics(statistics)

    def run_query(self, sql: str, *, timeout_seconds: float, max_bytes_billed: int) -> QueryResult:
        from google.api_core.exceptions import GoogleAPICallError
        bigquery = _bigquery()

        client = self._bq()
        config = bigquery.QueryJobConfig(use_legacy_sql=False, job_timeout_ms=int(timeout_seconds * 1000),
                                         maximum_bytes_billed=max_bytes_billed)
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


def query_credentials(service_account: str, source: Any = None) -> Any:
    """Credentials of `service_account`, minted from `source` (default: the function's own)."""
    import google.auth
    from google.auth import impersonated_credentials

    if source is None:
        source, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
        source_credentials=source, target_principal=service_account, target_scopes=[BIGQUERY_SCOPE],
        lifetime=3600)


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
