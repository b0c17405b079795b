"""A thin client of the Cloud Healthcare API: the DICOM import/export, operations and QIDO calls.

It speaks plain REST through `requests` (an authorised session against Google, an anonymous one
against the local emulator at `HEALTHCARE_API_URL`), maps error answers onto our error classes,
and retries transient faults with the shared policy. Starting an import or export is not
idempotent: such a POST is only sent again after a fault that certainly started nothing (see
`functions.gcp.retry.start_outcome`); any other failure raises `UnknownOutcomeError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from google.api_core.exceptions import RetryError
from google.api_core.retry import Retry

from functions.core.errors import ApiError, TransientApiError, UnknownOutcomeError, api_error
from functions.gcp import retry
from functions.settings import DEFAULT_HEALTHCARE_API_URL, Settings

_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def _session(base_url: str) -> requests.Session:
    if base_url != DEFAULT_HEALTHCARE_API_URL and base_url.startswith("http://"):
        return requests.Session()  # the local emulator: no credentials
    import google.auth  # lazy: keeps cold start small
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=_SCOPES)
    return AuthorizedSession(credentials)


class HealthcareClient:
    """DICOM store calls for one store. Thread-safe (requests sessions are, for these calls)."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self._base = settings.healthcare_api_url
        self._store = settings.dicom_store
        self._timeout = settings.http_timeout_seconds
        self._retry = retry.policy(settings.retry_deadline_seconds)
        self._start_retry = retry.policy(settings.retry_deadline_seconds, retry.is_refused_start)
        self._session = session or _session(self._base)

    @property
    def store(self) -> str:
        return self._store

    def _call(self, method: str, url: str, *, json_body: Any = None,
              params: Mapping[str, str] | None = None, resource: str = "",
              policy: Retry | None = None) -> requests.Response:
        def once() -> requests.Response:
            if not params:
                response = self._session.request(method, url, json=json_body, timeout=self._timeout)
                if response.status_code >= 400:
                    raise _error(response, resource)
                return response
            # A query string holds search keys (tag values such as a PatientID): a fault of this
            # call names the path only, and an API error keeps its status, never its message
            # (it may quote a value). `from None`: no chained exception carries the URL either.
            try:
                response = self._session.request(method, url, json=json_body, params=params, timeout=self._timeout)
            except requests.RequestException as exc:
                raise type(exc)(f"{type(exc).__name__} on {method} {urlsplit(url).path} "
                                "(the query string is not shown)") from None
            if response.status_code >= 400:
                error = _error(response, resource)
                raise api_error(response.status_code, f"{method} {urlsplit(url).path} answered "
                                f"{response.status_code} (the message is not shown: it may quote the query)",
                                status=getattr(error, "status", ""), resource=resource)
            return response

        try:
            result: requests.Response = (policy or self._retry)(once)()
        except RetryError as exc:
            # The budget is spent: surface the last fault itself, so callers see a transient
            # error (and let the platform redeliver) rather than a generic one.
            cause = exc.cause
            if isinstance(cause, ApiError):
                raise cause from exc
            raise TransientApiError(503, f"{type(cause).__name__}: {cause}", resource=resource) from exc
        return result

    def _start_operation(self, url: str, body: dict[str, Any]) -> str:
        """POSTs an LRO start; re-sent only after faults that certainly started nothing."""
        try:
            response = self._call("POST", url, json_body=body, resource=self._store, policy=self._start_retry)
            return str(response.json()["name"])
        except Exception as exc:
            if retry.start_outcome(exc) == "refused":
                raise
            raise UnknownOutcomeError(f"starting an operation on {self._store} failed after the request was "
                                      f"sent ({type(exc).__name__}: {str(exc)[:200]}); it may have started") from exc

    def import_dicom(self, uri: str, *, storage_class: str | None = None) -> str:
        """Starts `dicomStores.import` of `uri`; returns the operation name.

        Raises `UnknownOutcomeError` when the operation may or may not have started.
        """
        body: dict[str, Any] = {"gcsSource": {"uri": uri}}
        version = "v1"
        if storage_class:
            # blobStorageSettings is only on the v1beta1 surface.
            version = "v1beta1"
            body["blobStorageSettings"] = {"blobStorageClass": storage_class}
        return self._start_operation(f"{self._base}/{version}/{self._store}:import", body)

    def export_dicom(self, uri_prefix: str, *, mime_type: str | None = None,
                     filter_uri: str | None = None) -> str:
        """Starts `dicomStores.export` to `uri_prefix`; returns the operation name.

        Raises `UnknownOutcomeError` when the operation may or may not have started.
        """
        destination: dict[str, str] = {"uriPrefix": uri_prefix}
        if mime_type:
            destination["mimeType"] = mime_type
        body: dict[str, Any] = {"gcsDestination": destination}
        if filter_uri:
            body["filterConfig"] = {"resourcePathsGcsUri": filter_uri}
        return self._start_operation(f"{self._base}/v1/{self._store}:export", body)

    def set_blob_storage_settings(self, filter_uri: str | None, storage_class: str) -> str:
        """Starts v1 `dicomStores.setBlobStorageSettings` on the store: the instances the filter
        file names (every instance when None) move to `storage_class`; the operation name.

        Raises `UnknownOutcomeError` when the operation may or may not have started.
        """
        body: dict[str, Any] = {"blobStorageSettings": {"blobStorageClass": storage_class}}
        if filter_uri:
            # filterConfig needs the store itself as the resource (not a study or series).
            body["filterConfig"] = {"resourcePathsGcsUri": filter_uri}
        return self._start_operation(f"{self._base}/v1/{self._store}:setBlobStorageSettings", body)

    def list_operations(self, dataset: str) -> Iterator[dict[str, Any]]:
        """`operations.list` of a dataset, every page (no server-side filter: its syntax is undocumented)."""
        url = f"{self._base}/v1/{dataset}/operations"
        token = ""
        while True:
            params = {"pageSize": "100", **({"pageToken": token} if token else {})}
            page: dict[str, Any] = self._call("GET", url, params=params, resource=dataset).json()
            yield from page.get("operations", [])
            token = str(page.get("nextPageToken") or "")
            if not token:
                return

    def get_operation(self, name: str) -> dict[str, Any]:
        """`operations.get`: the operation JSON as the API returns it."""
        result: dict[str, Any] = self._call("GET", f"{self._base}/v1/{name}", resource=name).json()
        return result

    def search(self, level: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """QIDO-RS search (`level`: studies, series or instances, optionally nested)."""
        url = f"{self._base}/v1/{self._store}/dicomWeb/{level}"
        response = self._call("GET", url, params=params, resource=self._store)
        if response.status_code == 204 or not response.content.strip():
            return []
        result: list[dict[str, Any]] = response.json()
        return result

    def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """True when the store holds the instance (a QIDO search on its three UIDs)."""
        level = f"studies/{study_uid}/series/{series_uid}/instances"
        try:
            return bool(self.search(level, {"SOPInstanceUID": sop_uid}))
        except ApiError as exc:  # a 404 for an unknown study or series means "not stored"
            if exc.status_code == 404:
                return False
            raise


    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Iterator[bytes]:
        """WADO-RS RetrieveInstance as stored (`application/dicom; transfer-syntax=*`), streamed in
        1 MiB chunks; a missing instance raises `ApiError` with status 404."""
        url = f"{self._base}/v1/{self._store}/dicomWeb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"

        def once() -> requests.Response:
            response = self._session.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"},
                                         stream=True, timeout=self._timeout)
            if response.status_code >= 400:
                response.close()
                raise _error(response, self._store)
            return response

        try:
            opened: requests.Response = self._retry(once)()
        except RetryError as exc:
            cause = exc.cause
            if isinstance(cause, ApiError):
                raise cause from exc
            raise TransientApiError(503, f"{type(cause).__name__}: {cause}", resource=self._store) from exc
        with opened:
            yield from opened.iter_content(chunk_size=1024 * 1024)


def _error(response: requests.Response, resource: str) -> Exception:
    try:
        error = response.json().get("error", {})
        message, status = str(error.get("message", "")), str(error.get("status", ""))
    except ValueError:
        message, status = response.text[:200], ""
    return api_error(response.status_code, message or response.reason, status=status, resource=resource)
