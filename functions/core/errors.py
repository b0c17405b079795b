"""One base class; one leaf per decision the functions take about an error.

The boundary in `functions.boundary` maps them (and every client library's exceptions, through
`functions.gcp.retry.classify`) to an outcome:
- `RetryableError` (and its children): raise -> HTTP 500 -> the platform redelivers the event.
- `DropEventError` (and its children): log one clear line, acknowledge (no retry can help).
- `ConfigurationError`: raised at cold start, so a bad deployment never serves.
- `UnknownOutcomeError`: a non-idempotent call (an LRO start) may have acted; `functions.imports.job_queue`
  finds out instead of sending it again.
"""

from __future__ import annotations


class DicomPipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigurationError(DicomPipelineError):
    """An environment variable is missing or malformed; the message names it."""


class DropEventError(DicomPipelineError):
    """The event cannot succeed on redelivery: log it and acknowledge."""


class InvalidEventError(DropEventError):
    """The CloudEvent or message is malformed (missing fields, wrong types, bad JSON)."""


class StaleEventError(DropEventError):
    """The event is older than the configured maximum age."""


class InvalidExportRequestError(DropEventError):
    """The export request breaks the contract; `reason` goes into the REJECTED event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SqlQueryError(InvalidExportRequestError):
    """BigQuery refused or failed the `sql` of a request; `reason` says why without row values."""


class RetryableError(DicomPipelineError):
    """A transient fault outlived the in-process retries: let the platform redeliver."""


class UnknownOutcomeError(DicomPipelineError):
    """A call that is not idempotent (an LRO start) failed after the server may have acted on it.

    Sending it again could do the work twice; the caller must find out what happened instead.
    """


class ApiError(DicomPipelineError):
    """A Google API answered with an error status."""

    def __init__(self, status_code: int, message: str, *, status: str = "", resource: str = "") -> None:
        super().__init__(f"HTTP {status_code} {status}: {message} ({resource})".strip())
        self.status_code = status_code
        self.status = status
        self.message = message
        self.resource = resource


class TransientApiError(ApiError, RetryableError):
    """429 or 5xx: worth retrying with backoff."""


class PermanentApiError(ApiError, DropEventError):
    """Other 4xx: retrying sends the same bad call again; log as an error and acknowledge."""


RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})


def api_error(status_code: int, message: str, *, status: str = "", resource: str = "") -> ApiError:
    """Builds the leaf class that matches the status code."""
    cls = TransientApiError if status_code in RETRYABLE_STATUS_CODES else PermanentApiError
    return cls(status_code, message, status=status, resource=resource)
