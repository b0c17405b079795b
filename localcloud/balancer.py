"""One URL in front of several instances of a function, as Cloud Run fronts a scaled-out service.

Every request goes to the live instance with the fewest requests in flight (ties in turn). A
delivery that fails there (connection refused or reset: the instance died; or a 5xx) is tried on
each other instance once before the caller gets the last failure, so the router nacks it and
Pub/Sub redelivers it later: what an instance did not acknowledge is never lost.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from localcloud.components import LOOPBACK

logger = logging.getLogger("localcloud.router")

# As long as the router waits for a function (Eventarc allows a function its whole timeout).
FORWARD_TIMEOUT_SECONDS = 300.0
# Hop-by-hop headers (RFC 9110 7.6.1) and what http.server / requests set themselves.
_NOT_FORWARDED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
     "content-length", "content-encoding", "proxy-authorization", "proxy-authenticate"}
)  # fmt: skip


def delivery_order(targets: Sequence[str], in_flight: dict[str, int], turn: int) -> list[str]:
    """Targets by requests in flight, fewest first; equal ones in round-robin order from `turn`."""
    count = len(targets)
    rotated = [targets[(turn + i) % count] for i in range(count)] if count else []
    return sorted(rotated, key=lambda t: in_flight.get(t, 0))  # sorted() is stable: keeps the turn order


class Balancer:
    """An HTTP server on 127.0.0.1:`port` that spreads requests over `targets`."""

    def __init__(self, name: str, targets: Sequence[str], port: int = 0) -> None:
        self.name = name
        self.targets = list(targets)
        self._in_flight = dict.fromkeys(self.targets, 0)
        self._turns = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._server = ThreadingHTTPServer((LOOPBACK, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"balancer-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for session in self._sessions:
                # Open keep-alive connections would hold the functions' gunicorn workers at shutdown.
                session.close()

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._in_flight)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # loopback only: no proxies, no netrc
            with self._lock:
                self._sessions.append(session)
        return session

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Deliver to one instance after another until one answers below 500."""
        with self._lock:
            order = delivery_order(self.targets, self._in_flight, next(self._turns))
        last: tuple[int, list[tuple[str, str]], bytes] = (502, [], b"no function instance answered\n")
        for target in order:
            with self._lock:
                self._in_flight[target] += 1
            try:
                response = self._session().request(
                    method, target + path, headers=headers, data=body, timeout=FORWARD_TIMEOUT_SECONDS,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                logger.warning("%s: %s %s failed on %s (%s); trying another instance",
                               self.name, method, path, target, type(exc).__name__)
                continue
            finally:
                with self._lock:
                    self._in_flight[target] -= 1
            kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _NOT_FORWARDED]
            last = (response.status_code, kept, response.content)
            if response.status_code < 500:
                return last
            logger.warning("%s: %s %s answered HTTP %s on %s; trying another instance",
                           self.name, method, path, response.status_code, target)
        return last

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the router's sessions expect

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                status, reply_headers, content = balancer.forward(self.command, self.path, headers, body)
                self.send_response(status)
                for key, value in reply_headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

            def log_message(self, format: str, *args: object) -> None:
                """Deliveries are logged by the router; one line per request here is noise."""

        return Handler
