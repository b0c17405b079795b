"""The one place that maps an outcome to retry-or-acknowledge (see functions.core.errors).

Every exception, whichever client raised it, goes through `functions.gcp.retry.classify`: the same
decision the in-process retries make. A 403/404 from Cloud Storage or Pub/Sub (a missing bucket or
topic, a missing permission) is acknowledged with one error line instead of being redelivered
until the event goes stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from functions import log
from functions.core.errors import RetryableError
from functions.gcp.retry import classify

logger = logging.getLogger(__name__)
T = TypeVar("T")


def run_event(function: str, event_id: str, action: Callable[[], T]) -> T | None:
    """Runs one event's work.

    Returns the work's result; None when the event is dropped (acknowledged without effect).
    Raises what a redelivery may cure, so the platform retries.
    """
    with log.context(function=function, event_id=event_id):
        try:
            return action()
        except Exception as exc:
            fault = classify(exc)
            if fault.retry:
                if _expected(exc):
                    logger.warning("transient failure; the event will be redelivered",
                                   extra=log.fields(error=type(exc).__name__, status=fault.status,
                                                    resource=fault.resource, reason=str(exc)[:500]))
                else:
                    logger.exception("unexpected failure; the event will be redelivered")
                raise
            if fault.refusal:
                # Messages of API errors name the call's resource and the reason, never payloads.
                logger.error("dropping the event: the API refused the call",
                             extra=log.fields(status=fault.status, resource=fault.resource,
                                              error=type(exc).__name__, reason=fault.message[:500]))
            else:
                logger.warning("dropping the event", extra=log.fields(reason=str(exc)[:500],
                                                                      error=type(exc).__name__))
            return None


def _expected(exc: BaseException) -> bool:
    """Faults of the network or of a dependency (not bugs): a warning without a stack trace."""
    return isinstance(exc, (RetryableError, OSError)) or type(exc).__module__.startswith(("google.", "grpc"))


def attributes_of(cloud_event: Any) -> dict[str, Any]:
    """CloudEvent attributes as a plain dict (works for cloudevents' CloudEvent and dicts)."""
    getter = getattr(cloud_event, "get_attributes", None)
    return dict(getter()) if getter else dict(cloud_event)
