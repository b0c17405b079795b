"""Which faults are worth another try: one classification for every client, and the retry policy.

`classify` maps any exception a client raises (our Healthcare client, google-cloud-storage,
google-cloud-pubsub, requests, gRPC, google-auth, plain sockets) onto retry-or-drop. The event
boundary (`functions.boundary`) and the in-process retry predicates use it, so a fault that is
retried in-process is also the one the platform redelivers for, and nothing else is.

Transient faults (408, 429, 5xx but 501, dropped connections, timeouts) are retried with
exponential backoff and jitter (google-api-core's Retry) inside the function's time budget; when
the budget runs out the error is re-raised so the platform redelivers the event. A refusal (any
other 4xx: 400, 403, 404, 412...) fails at once and drops the event: sending the same call again
meets the same answer. Exceptions we do not know (bugs) are retried: a redelivery loses nothing
while a fix is deployed, and the event goes stale in the end.

Starting an LRO is not idempotent, so it has its own rule (`start_outcome`).
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from functions.core.errors import RETRYABLE_STATUS_CODES, ApiError, DicomPipelineError, DropEventError, RetryableError

if TYPE_CHECKING:
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry

# The client libraries' exception modules are looked up, never imported here: an exception of a
# module that is not loaded cannot exist, and importing google.api_core, grpc and requests at cold
# start would cost the functions about 100 ms before their first event.


def _loaded(name: str) -> ModuleType | None:
    return sys.modules.get(name)

# HTTP statuses a later identical call may not meet.
RETRYABLE_HTTP_STATUSES = RETRYABLE_STATUS_CODES | {499}  # 499: gRPC CANCELLED
# gRPC status names that map onto those (Pub/Sub speaks gRPC).
_RETRYABLE_GRPC = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL",
                             "UNKNOWN", "CANCELLED", "DATA_LOSS"})
_GRPC_HTTP = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
              "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
              "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
              "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}


def _permanent_request_errors() -> tuple[type[BaseException], ...]:
    """Faults of the request itself (a bad URL, a body that cannot be sent): no redelivery changes them."""
    rex: Any = _loaded("requests.exceptions")
    if rex is None:
        return ()
    return (rex.InvalidURL, rex.MissingSchema, rex.InvalidSchema, rex.InvalidHeader, rex.InvalidJSONError)


def _transport_faults() -> tuple[type[BaseException], ...]:
    """Broken or cut-off answers below requests (google-cloud-storage's media transfers meet them raw)."""
    uex: Any = _loaded("urllib3.exceptions")
    found: tuple[type[BaseException], ...] = (http.client.HTTPException,)
    if uex is not None:
        found += (uex.PoolError, uex.ProtocolError, uex.SSLError, uex.TimeoutError)
    return found


@dataclass(frozen=True)
class Fault:
    """What the boundary needs to decide and to log: never the call's payload."""

    retry: bool
    status: int | None = None  # HTTP status (gRPC codes mapped onto HTTP) when there was an answer
    resource: str = ""  # the bucket/object, topic, store or operation the call was about
    message: str = ""
    known: bool = True  # False: an exception nobody classified (a bug?): redelivered, not retried in-process
    ours: bool = False  # one of our own decisions (functions.core.errors), not a client's fault

    @property
    def refusal(self) -> bool:
        """A call was refused for good (an API's 4xx, a malformed URL): a configuration or permission
        problem worth an error log, unlike our own decisions to drop an event."""
        return not self.retry and not self.ours


def classify(exc: BaseException) -> Fault:
    """Retry or drop, for any exception a client call (or our own code) raised."""
    if isinstance(exc, ApiError):
        # The leaf class decided already (publish.py maps gRPC codes onto it); a bare ApiError by status.
        retry = isinstance(exc, RetryableError) or (not isinstance(exc, DropEventError)
                                                    and exc.status_code in RETRYABLE_HTTP_STATUSES)
        return Fault(retry, exc.status_code, exc.resource, exc.message)
    if isinstance(exc, DicomPipelineError):
        if isinstance(exc, (RetryableError, DropEventError)):
            return Fault(isinstance(exc, RetryableError), message=str(exc), ours=True)
        return Fault(True, message=str(exc), known=False)  # e.g. ConfigurationError: a redelivery, no loop
    api: Any = _loaded("google.api_core.exceptions")
    if api is not None and isinstance(exc, api.RetryError):
        # An in-process retry budget ran out: the last fault decides (it was a transient one).
        return classify(exc.cause) if exc.cause is not None else Fault(True, message=str(exc))
    if api is not None and isinstance(exc, api.GoogleAPICallError):
        return _google_api_fault(exc)
    grpc_code = _grpc_code_name(exc)
    if grpc_code is not None:
        return Fault(grpc_code in _RETRYABLE_GRPC, _GRPC_HTTP.get(grpc_code), message=_details(exc))
    rex: Any = _loaded("requests.exceptions")
    if rex is not None and isinstance(exc, rex.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        return Fault(status in RETRYABLE_HTTP_STATUSES, status, _url_resource(exc.response.url), str(exc))
    if isinstance(exc, _permanent_request_errors()):
        return Fault(False, message=str(exc))
    answered = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(answered, int):
        # Media errors of google-cloud-storage (InvalidResponse) carry the HTTP answer.
        return Fault(answered in RETRYABLE_HTTP_STATUSES, answered, message=str(exc))
    if isinstance(exc, _transport_faults()):
        return Fault(True, message=str(exc))
    # Connection errors and timeouts (requests', urllib3's, sockets', futures'), google-auth
    # transport and token refresh faults: another try may succeed.
    auth: Any = _loaded("google.auth.exceptions")
    if isinstance(exc, OSError) or (auth is not None and isinstance(exc, auth.GoogleAuthError)):
        return Fault(True, message=str(exc))
    return Fault(True, message=str(exc), known=False)


def _google_api_fault(exc: gexc.GoogleAPICallError) -> Fault:
    grpc_code = getattr(exc.grpc_status_code, "name", None)
    if grpc_code is not None:
        retry = grpc_code in _RETRYABLE_GRPC
    elif exc.code is not None:
        api: Any = _loaded("google.api_core.exceptions")  # loaded: `exc` is one of its errors
        retry = int(exc.code) in RETRYABLE_HTTP_STATUSES or isinstance(exc, api.Aborted)
    else:
        # A wrapper without a status (e.g. pubsub's PublishError): decided by what it wraps.
        cause = exc.__cause__ or (exc.errors[0] if exc.errors and isinstance(exc.errors[0], BaseException) else None)
        return classify(cause) if cause is not None else Fault(True, message=exc.message)
    status = int(exc.code) if exc.code is not None else _GRPC_HTTP.get(grpc_code or "")
    response = getattr(exc, "response", None)
    resource = _url_resource(str(getattr(response, "url", "") or "")) if response is not None else ""
    return Fault(retry, status, resource, exc.message)


def _grpc_code_name(exc: BaseException) -> str | None:
    """The status name of a raw `grpc.RpcError` (grpc is never imported for this: if it is not
    loaded, no gRPC error can exist)."""
    grpc = sys.modules.get("grpc")
    code_method = getattr(exc, "code", None)
    if grpc is None or not isinstance(exc, grpc.RpcError) or not callable(code_method):
        return None
    try:
        name = getattr(code_method(), "name", None)
    except Exception:  # a half-built error object: treat it as unknown
        return None
    return str(name) if name else None


def _details(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    try:
        return str(details()) if callable(details) else str(exc)
    except Exception:
        return str(exc)


def _url_resource(url: str) -> str:
    """The path of a Google API URL (names the bucket/object, topic or store; no query string)."""
    return urlsplit(url).path if url else ""


def is_transient(exc: BaseException) -> bool:
    """True for faults that a later identical call may not meet (the in-process retry predicate).

    Unknown exceptions are not retried in-process (a bug fails fast) but redelivered by the boundary.
    """
    fault = classify(exc)
    return fault.retry and fault.known


def policy(deadline_seconds: float, predicate: Callable[[BaseException], bool] | None = None) -> Retry:
    """Backoff 0.5 s doubling to 8 s, with jitter, until `deadline_seconds` have passed."""
    from google.api_core.retry import Retry

    return Retry(predicate=predicate or is_transient, initial=0.5, maximum=8.0, multiplier=2.0,
                 timeout=deadline_seconds)


# -- starting an LRO ------------------------------------------------------------------------------
StartOutcome = Literal["refused", "unknown"]


def start_outcome(exc: BaseException) -> StartOutcome:
    """Did a failed `:import`/`:export` POST certainly not start an operation?

    "refused": no operation exists (the request never left, or the server said no before doing
    anything): the call may be sent again. "unknown": the server may have started one; sending
    again could start a second, untracked one. See docs/decisions/0300-ambiguous-lro-starts.md.
    """
    if isinstance(exc, ApiError):
        # 429 (RESOURCE_EXHAUSTED) is a quota refusal before any work; 503 (UNAVAILABLE) means the
        # service did not take the request (Google's own retry predicate for non-idempotent calls
        # retries exactly these two). Other 4xx are answers to the request as sent: nothing started.
        # 500, 502 and 504 may come after the backend acted.
        return "unknown" if exc.status_code in (500, 502, 504) else "refused"
    rex: Any = _loaded("requests.exceptions")
    if (rex is not None and isinstance(exc, rex.ConnectTimeout)) or _never_connected(exc):
        return "refused"
    # Read timeouts, connections dropped after the request was sent, anything else.
    return "unknown"


def _never_connected(exc: BaseException) -> bool:
    """A connection that was refused or could not be resolved: the request was never sent."""
    rex: Any = _loaded("requests.exceptions")
    if rex is None or not isinstance(exc, rex.ConnectionError):
        return False
    from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (NewConnectionError, NameResolutionError))


def is_refused_start(exc: BaseException) -> bool:
    """The retry predicate of LRO starts: only faults that certainly started nothing, and transient."""
    return start_outcome(exc) == "refused" and is_transient(exc)
