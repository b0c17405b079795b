"""`functions.gcp.retry.classify`: retry or drop for every exception a client can raise, and the
in-process retry predicates that must agree with it."""

from __future__ import annotations

import concurrent.futures
import http.client
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from google.cloud.pubsub_v1.publisher.exceptions import PublishError
from google.cloud.storage.exceptions import InvalidResponse
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

from functions.core.errors import (
    ConfigurationError,
    InvalidEventError,
    InvalidExportRequestError,
    PermanentApiError,
    RetryableError,
    StaleEventError,
    TransientApiError,
    UnknownOutcomeError,
    api_error,
)
from functions.gcp import gcs
from functions.gcp.retry import classify, is_refused_start, is_transient, start_outcome


class _RpcError(grpc.RpcError):
    """A raw gRPC error as grpc raises it (a RpcError that is also a Call with `code()`)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"rpc failed: {self._code.name}"


def _http_error(status: int, url: str = "https://storage.googleapis.com/storage/v1/b/bkt/o/a.dcm?alt=media") -> Any:
    response = requests.Response()
    response.status_code = status
    response.url = url
    return requests.HTTPError(f"{status} error", response=response)


def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    return response


def _google(status: int) -> gexc.GoogleAPICallError:
    response = requests.Response()
    response.status_code = status
    response.url = "https://storage.googleapis.com/upload/storage/v1/b/state-bucket/o?uploadType=multipart"
    return gexc.from_http_status(status, "refused", response=response)


RETRY: list[BaseException] = [
    TransientApiError(503, "unavailable"), api_error(429, "quota"), api_error(500, "x"), api_error(504, "x"),
    RetryableError("budget spent"),
    gexc.TooManyRequests("x"), gexc.ResourceExhausted("x"), gexc.InternalServerError("x"), gexc.BadGateway("x"),
    gexc.ServiceUnavailable("x"), gexc.GatewayTimeout("x"), gexc.DeadlineExceeded("x"), gexc.Aborted("x"),
    gexc.Cancelled("x"), gexc.Unknown("x"), _google(408), _google(503),
    gexc.RetryError("deadline", cause=gexc.ServiceUnavailable("x")),
    PublishError("publish failed"),  # no status, no cause: as transient as an unknown publish fault
    requests.ConnectionError("reset"), requests.Timeout("slow"), requests.ReadTimeout("slow"),
    requests.ConnectTimeout("slow"), requests.exceptions.ChunkedEncodingError("cut"), _http_error(502),
    _RpcError(grpc.StatusCode.UNAVAILABLE), _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
    _RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED),
    TimeoutError("t"), concurrent.futures.TimeoutError(), ConnectionResetError("r"),
    OSError("network unreachable"),
    auth_exceptions.TransportError("metadata server"), auth_exceptions.RefreshError("token"),
    http.client.IncompleteRead(b"partial"), http.client.BadStatusLine("x"), ProtocolError("Connection aborted"),
    ReadTimeoutError(None, "/o", "read timed out"),  # type: ignore[arg-type]
    InvalidResponse(_response(503), "media download failed"),
]

DROP: list[BaseException] = [
    PermanentApiError(403, "denied"), api_error(400, "bad"), api_error(404, "gone"), api_error(409, "exists"),
    gexc.NotFound("no such bucket"), gexc.Forbidden("x"), gexc.PermissionDenied("x"), gexc.BadRequest("x"),
    gexc.PreconditionFailed("x"), gexc.Unauthorized("x"), gexc.Conflict("x"), gexc.MethodNotImplemented("x"),
    gexc.InvalidArgument("x"), gexc.FailedPrecondition("x"), _google(404), _google(403),
    gexc.RetryError("deadline", cause=gexc.NotFound("x")),
    _http_error(403), _http_error(404), requests.exceptions.InvalidURL("x"), requests.exceptions.MissingSchema("x"),
    _RpcError(grpc.StatusCode.NOT_FOUND), _RpcError(grpc.StatusCode.PERMISSION_DENIED),
    _RpcError(grpc.StatusCode.INVALID_ARGUMENT), InvalidResponse(_response(404), "media download failed"),
]


@pytest.mark.parametrize("exc", RETRY, ids=lambda e: type(e).__name__)
def test_transient_faults_are_retried_in_process_and_redelivered(exc: BaseException) -> None:
    assert classify(exc).retry
    assert is_transient(exc)
    assert gcs.DEFAULT_RETRY._predicate(exc)  # Cloud Storage calls retry exactly these


@pytest.mark.parametrize("exc", DROP, ids=lambda e: f"{type(e).__name__}")
def test_refusals_are_dropped_and_not_retried(exc: BaseException) -> None:
    fault = classify(exc)
    assert not fault.retry
    assert fault.refusal, "a refusal is logged as an error"
    assert not is_transient(exc)
    assert not gcs.DEFAULT_RETRY._predicate(exc)


@pytest.mark.parametrize("exc", [InvalidEventError("x"), StaleEventError("x"), InvalidExportRequestError("x")],
                         ids=lambda e: type(e).__name__)
def test_our_drop_decisions_are_drops_without_an_api_status(exc: BaseException) -> None:
    fault = classify(exc)
    assert not fault.retry and not fault.refusal


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("bug"), ConfigurationError("X"),
                                 UnknownOutcomeError("maybe")], ids=lambda e: type(e).__name__)
def test_unknown_exceptions_are_redelivered_but_not_retried_in_process(exc: BaseException) -> None:
    fault = classify(exc)
    assert fault.retry and not fault.known
    assert not is_transient(exc)


def test_statuses_and_resources_are_named_for_the_log_line() -> None:
    assert (classify(_google(404)).status, classify(_google(404)).resource) == (
        404, "/upload/storage/v1/b/state-bucket/o")  # the bucket, never the query string
    assert classify(_http_error(403)).resource == "/storage/v1/b/bkt/o/a.dcm"
    assert classify(gexc.PermissionDenied("x")).status == 403
    assert classify(_RpcError(grpc.StatusCode.NOT_FOUND)).status == 404
    assert classify(PermanentApiError(403, "denied", resource="projects/p/topics/t")).resource == "projects/p/topics/t"
    wrapped = PublishError("publish failed")
    wrapped.__cause__ = gexc.NotFound("Topic not found")
    assert not classify(wrapped).retry and classify(wrapped).status == 404


# -- starting an LRO: only a fault that certainly started nothing is re-sent ----------------------------


def _never_connected() -> requests.ConnectionError:
    reason = NewConnectionError(None, "connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/v1/x:import", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [api_error(429, "quota"), api_error(503, "unavailable"), api_error(400, "bad"),
                                 api_error(403, "denied"), api_error(404, "no store"), requests.ConnectTimeout("x"),
                                 _never_connected()], ids=repr)
def test_refusals_before_any_work_started_nothing(exc: BaseException) -> None:
    assert start_outcome(exc) == "refused"


@pytest.mark.parametrize("exc", [api_error(500, "internal"), api_error(502, "gateway"), api_error(504, "deadline"),
                                 requests.ReadTimeout("x"), requests.ConnectionError("Connection aborted"),
                                 requests.exceptions.ChunkedEncodingError("x"), ValueError("bad JSON answer"),
                                 KeyError("name")], ids=repr)
def test_faults_after_the_request_was_sent_have_an_unknown_outcome(exc: BaseException) -> None:
    assert start_outcome(exc) == "unknown"


def test_only_transient_refusals_are_re_sent() -> None:
    assert is_refused_start(api_error(429, "quota")) and is_refused_start(api_error(503, "x"))
    assert is_refused_start(requests.ConnectTimeout("x")) and is_refused_start(_never_connected())
    assert not is_refused_start(api_error(400, "bad"))  # refused for good: no point sending it again
    assert not is_refused_start(api_error(500, "x")) and not is_refused_start(requests.ReadTimeout("x"))
