"""Minimal Cloud Storage JSON API client for the emulator's own reads and writes.

Plain requests against `STORAGE_EMULATOR_HOST` (fake-gcs-server): no credentials, no client
library start-up cost, and one Session per thread (Session is not documented as thread-safe).
Object reads, the per-object cost of an import, use one plain keep-alive http.client connection
per thread instead: requests' (and urllib3's) per-call work cost more CPU than the read itself.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import requests


class GcsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


READ_TIMEOUT_SECONDS = 300.0


class GcsClient:
    def __init__(self, endpoint: str | None = None) -> None:
        base = endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or "http://127.0.0.1:4443"
        if "://" not in base:
            base = "http://" + base
        self.endpoint = base.rstrip("/")
        self._local = threading.local()
        parts = urlsplit(self.endpoint)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._base_path = parts.path

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code >= 400:
            raise GcsError(response.status_code, f"{what}: HTTP {response.status_code}")
        return response

    def list_names(self, bucket: str, prefix: str) -> Iterator[str]:
        url = f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o"
        params = {"prefix": prefix, "fields": "items(name),nextPageToken", "maxResults": "1000"}
        while True:
            body = self._check(
                self._session().get(url, params=params, timeout=60), f"list gs://{bucket}"
            ).json()
            for item in body.get("items", []):
                yield item["name"]
            token = body.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    def download(self, bucket: str, name: str) -> bytes:
        path = f"{self._base_path}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}?alt=media"
        what = f"read gs://{bucket}/{name}"
        conn: http.client.HTTPConnection | None = getattr(self._local, "reads", None)
        if conn is not None:
            try:
                status, data = _get(conn, path)
            except (OSError, http.client.HTTPException):
                # A kept-alive connection the server has closed fails on first use: retry the
                # read once on a new connection (a GET has no side effects).
                conn.close()
                conn = None
        if conn is None:
            conn = self._local.reads = self._connection()
            try:
                status, data = _get(conn, path)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.reads = None
                # The kind of failure requests raised here before: the caller's problem.
                raise requests.ConnectionError(f"{what}: {type(exc).__name__}") from None
        if status >= 400:
            raise GcsError(status, f"{what}: HTTP {status}")
        return data

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._netloc, timeout=READ_TIMEOUT_SECONDS)

    def upload(self, bucket: str, name: str, data: bytes, content_type: str) -> None:
        url = f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
        response = self._session().post(
            url,
            params={"uploadType": "media", "name": name},
            data=data,
            headers={"Content-Type": content_type},
            timeout=300,
        )
        self._check(response, f"write gs://{bucket}/{name}")


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()
