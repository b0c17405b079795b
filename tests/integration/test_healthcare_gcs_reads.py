"""The emulator's own object reads: its few lines of HTTP/1.1 against a real HTTP server that
frames bodies every way HTTP/1.1 allows, closes kept-alive connections, and answers errors; and
against fake-gcs-server with an object larger than any socket buffer."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud import components
from localcloud.healthcare.gcs import GcsClient, GcsError

BODY = bytes(range(256)) * 40


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a response says otherwise
    connections: set[int] = set()
    lock = threading.Lock()

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.lock:
            self.connections.add(self.client_address[1])  # one source port per connection
        name = unquote(self.path.split("?")[0]).rsplit("/", 1)[-1]
        if name == "length":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif name == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BODY), 3000):
                part = BODY[start : start + 3000]
                self.wfile.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif name == "to-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        elif name == "drops-connection":
            # Keep-alive announced, then the connection is closed anyway (as an idle timeout does).
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        else:
            message = b"no such object"
            self.send_response(404)
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.connections = set()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("name", ["length", "chunked", "to-close", "drops-connection"])
def test_every_body_framing_reads_the_exact_bytes_again_and_again(server: str, name: str) -> None:
    client = GcsClient(server)
    for _ in range(3):
        assert client.download("bucket-a", f"dir/{name}") == BODY


def test_a_kept_alive_connection_is_reused(server: str) -> None:
    client = GcsClient(server)
    for name in ("length", "chunked", "missing", "length"):
        try:
            client.download("bucket-a", name)
        except GcsError:
            pass
    assert len(Handler.connections) == 1


def test_a_connection_the_server_closed_is_replaced_and_the_read_still_succeeds(server: str) -> None:
    client = GcsClient(server)
    assert client.download("bucket-a", "drops-connection") == BODY
    assert client.download("bucket-a", "length") == BODY  # first try fails on the closed socket
    assert len(Handler.connections) == 2


def test_an_http_error_is_a_gcs_error_with_its_status_and_the_connection_stays_usable(server: str) -> None:
    client = GcsClient(server)
    with pytest.raises(GcsError) as raised:
        client.download("bucket-a", "missing")
    assert raised.value.status == 404
    assert client.download("bucket-a", "length") == BODY


def test_an_object_larger_than_socket_buffers_reads_whole_from_fake_gcs(tmp_path: Path) -> None:
    gcs = components.start_fake_gcs(tmp_path)
    try:
        storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs.url}
        ).create_bucket("reads-large")
        data = os.urandom(9 * 1024 * 1024 + 7)
        client = GcsClient(gcs.url)
        client.upload("reads-large", "big/one object.bin", data, "application/octet-stream")
        client.upload("reads-large", "small", b"x", "application/octet-stream")
        assert client.download("reads-large", "big/one object.bin") == data
        assert client.download("reads-large", "small") == b"x"
        with pytest.raises(GcsError) as raised:
            client.download("reads-large", "absent")
        assert raised.value.status == 404
    finally:
        gcs.stop()
