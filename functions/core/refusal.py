"""What a REJECTED or FAILED event says about a call that was refused for good.

The reason names the HTTP status, what it usually means and the resource (a bucket, object,
topic or store name), never the service's own message: messages can quote request values
(a query key, a cast value), and the event goes to whoever subscribes to the completions topic.
"""

from __future__ import annotations

from typing import Protocol


class Refused(Protocol):
    """What the reason reads of a classified fault (`functions.gcp.retry.Fault` has it)."""

    @property
    def status(self) -> int | None: ...  # the HTTP status, when there was an answer

    @property
    def resource(self) -> str: ...  # the bucket/object, topic, store or operation the call was about


_MEANING = {
    400: "the request was invalid",
    401: "the caller was not authenticated",
    403: "permission denied",
    404: "not found (a bucket, object or the store does not exist)",
    409: "a conflict",
    412: "a precondition failed",
}


def refusal_reason(fault: Refused, what: str = "a call") -> str:
    """One sentence for an event: which call was refused, with which status, and nothing started."""
    status = f"HTTP {fault.status}" if fault.status else "an error that no retry can cure"
    meaning = _MEANING.get(fault.status or 0, "")
    resource = f" on {fault.resource[:200]}" if fault.resource else ""
    return (f"{what}{resource} was refused with {status}{': ' + meaning if meaning else ''}; "
            "nothing was started and the requestId may be sent again")
