"""Google API error shape: every error the emulator returns is `{"error": {code, message, status}}`."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# google.rpc.Code numbers used in operation errors (Operation.error.code).
RPC_CANCELLED = 1
RPC_INVALID_ARGUMENT = 3
RPC_NOT_FOUND = 5
RPC_FAILED_PRECONDITION = 9
RPC_ABORTED = 10
RPC_INTERNAL = 13
RPC_UNAVAILABLE = 14

# HTTP status -> canonical status string, as Google's front end maps them.
_STATUS_BY_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_name(http_code: int) -> str:
    return _STATUS_BY_HTTP.get(http_code, "UNKNOWN")


class ApiError(Exception):
    """An error answered to the caller as Google's error JSON."""

    def __init__(
        self,
        http_code: int,
        message: str,
        status: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_code = http_code
        self.message = message
        self.status = status or status_name(http_code)
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.http_code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid_argument(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message)


def not_found(message: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, message)


def already_exists(message: str) -> ApiError:
    return ApiError(HTTPStatus.CONFLICT, message, "ALREADY_EXISTS")


def unimplemented(message: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_IMPLEMENTED, message)


def aborted(message: str) -> ApiError:
    """409 ABORTED: a concurrency conflict (e.g. an IAM policy etag that is no longer current)."""
    return ApiError(HTTPStatus.CONFLICT, message, "ABORTED")


def failed_precondition(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, "FAILED_PRECONDITION")
