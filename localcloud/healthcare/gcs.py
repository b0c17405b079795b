"""Minimal Cloud Storage JSON API client for the emulator's own reads and writes.

Plain requests against `STORAGE_EMULATOR_HOST` (fake-gcs-server): no credentials, no client
library start-up cost, and one Session per thread (Session is not documented as thread-safe).
Object reads, the per-object cost of an import, go through one thread-safe urllib3 pool instead:
requests' per-call work (settings merge, netrc and proxy lookups) cost more than the read itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from urllib.parse import quote

import requests
import urllib3


class GcsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Keep-alive connections for object reads: at least one per import reader thread.
READ_CONNECTIONS = 16


class GcsClient:
    def __init__(self, endpoint: str | None = None) -> None:
        base = endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or "http://127.0.0.1:4443"
        if "://" not in base:
            base = "http://" + base
        self.endpoint = base.rstrip("/")
        self._local = threading.local()
        # No retries: a failed read is reported per object, as before (requests did not retry).
        self._reads = urllib3.PoolManager(maxsize=READ_CONNECTIONS, block=False, retries=False)

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
        url = f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}?alt=media"
        what = f"read gs://{bucket}/{name}"
        try:
            response = self._reads.request("GET", url, timeout=300.0)
        except urllib3.exceptions.HTTPError as exc:
            # The same family of failure requests raised; callers handle it like a 503.
            raise requests.ConnectionError(f"{what}: {type(exc).__name__}") from None
        if response.status >= 400:
            raise GcsError(response.status, f"{what}: HTTP {response.status}")
        return bytes(response.data)

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
