"""The in-process retry policy: which faults are worth another try, and for how long.

Transient faults (429, 5xx, dropped connections) are retried with exponential backoff and jitter
(google-api-core's Retry) inside the function's time budget; when the budget runs out the error is
re-raised so the platform redelivers the event. Everything else fails at once.
"""

from __future__ import annotations

import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from functions.errors import TransientApiError

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientApiError,
    requests.ConnectionError,
    requests.Timeout,
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """True for faults that a later identical call may not meet."""
    return isinstance(exc, _TRANSIENT_TYPES)


def policy(deadline_seconds: float) -> Retry:
    """Backoff 0.5 s doubling to 8 s, with jitter, until `deadline_seconds` have passed."""
    return Retry(predicate=is_transient, initial=0.5, maximum=8.0, multiplier=2.0, timeout=deadline_seconds)
