"""The one place that maps an outcome to retry-or-acknowledge (see functions.errors)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from functions import log
from functions.errors import DropEventError, PermanentApiError, RetryableError

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
        except PermanentApiError as exc:
            logger.error("dropping the event: the API refused the call",
                         extra=log.fields(status=exc.status_code, error=exc.message, resource=exc.resource))
            return None
        except DropEventError as exc:
            logger.warning("dropping the event", extra=log.fields(reason=str(exc)[:500],
                                                                  error=type(exc).__name__))
            return None
        except RetryableError as exc:
            logger.warning("transient failure; the event will be redelivered",
                           extra=log.fields(error=str(exc)[:500]))
            raise
        except Exception:
            logger.exception("unexpected failure; the event will be redelivered")
            raise


def attributes_of(cloud_event: Any) -> dict[str, Any]:
    """CloudEvent attributes as a plain dict (works for cloudevents' CloudEvent and dicts)."""
    getter = getattr(cloud_event, "get_attributes", None)
    return dict(getter()) if getter else dict(cloud_event)
