"""Minimal Cloud Storage JSON API client for the emulator's own reads and writes.

Plain requests against `STORAGE_EMULATOR_HOST` (fake-gcs-server): no credentials, no client
library start-up cost, and one Session per thread (Session is not documented as thread-safe).
Object reads, the per-object cost of an import, use one keep-alive connection per thread instead:
requests' (and urllib3's) per-call work cost more CPU than the read itself, and so does
http.client's response parsing (a socket file and the email header parser: ~340 us of CPU per
small object against ~50 us for the few lines of HTTP/1.1 in `_HttpReader`). HTTPS endpoints
keep http.client.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Iterator
from typing import BinaryIO, cast
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
        conn: http.client.HTTPConnection | _HttpReader | None = getattr(self._local, "reads", None)
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

    def _connection(self) -> http.client.HTTPConnection | _HttpReader:
        if self._https:
            return http.client.HTTPSConnection(self._netloc, timeout=READ_TIMEOUT_SECONDS)
        return _HttpReader(self._netloc)

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


_MAX_LINE = 65536


class _HttpReader:
    """GET over one kept-alive plain HTTP/1.1 connection: a body framed by Content-Length,
    chunked, or by the server closing. One buffered reader per connection (http.client makes
    one per response); its read(n) fills the body's bytes object in place, so a large object is
    not copied. Failures raise OSError or http.client.HTTPException, as http.client's do."""

    def __init__(self, netloc: str) -> None:
        self._netloc = netloc  # the Host header
        parts = urlsplit(f"http://{netloc}")
        self._address = (parts.hostname or "", parts.port or 80)
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def get(self, path: str) -> tuple[int, bytes]:
        sock, file = self._sock, self._file
        if sock is None or file is None:
            sock = self._sock = socket.create_connection(self._address, timeout=READ_TIMEOUT_SECONDS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            file = self._file = cast(BinaryIO, sock.makefile("rb", buffering=65536))
        request = f"GET {path} HTTP/1.1\r\nHost: {self._netloc}\r\nAccept-Encoding: identity\r\n\r\n"
        sock.sendall(request.encode("latin-1"))
        status_line = self._line(file)
        if not status_line:
            raise ConnectionResetError("connection closed by the server")
        version, _, rest = status_line.decode("latin-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise http.client.BadStatusLine(status_line.decode("latin-1"))
        headers: dict[str, str] = {}
        while True:
            raw = self._line(file)
            if not raw:
                raise http.client.IncompleteRead(b"")  # closed inside the header block
            if not (line := raw.rstrip(b"\r\n")):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise http.client.HTTPException("malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(file)
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise http.client.HTTPException("bad Content-Length")
            body = self._read_exactly(file, int(length))
        else:
            body = file.read()  # framed by the server closing
            self.close()
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return int(code), body

    @staticmethod
    def _line(file: BinaryIO) -> bytes:
        line = file.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("response line")
        return line

    @staticmethod
    def _read_exactly(file: BinaryIO, size: int) -> bytes:
        data = file.read(size)
        if len(data) < size:
            raise http.client.IncompleteRead(data, size - len(data))
        return data

    def _read_chunked(self, file: BinaryIO) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self._line(file).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException("bad chunk size") from None
            if size == 0:
                while self._line(file).rstrip(b"\r\n"):  # trailers end with an empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exactly(file, size))
            if self._read_exactly(file, 2) != b"\r\n":
                raise http.client.HTTPException("bad chunk end")


_Reader = http.client.HTTPConnection | _HttpReader


def _get(conn: _Reader, path: str) -> tuple[int, bytes]:
    if isinstance(conn, _HttpReader):
        return conn.get(path)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()
