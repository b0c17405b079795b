"""The process launchers: readiness, logs, failures and stops that leave nothing behind."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from google.cloud import pubsub_v1

from localcloud import components, provision
from localcloud.config import LocalConfig


def _group_gone(pgid: int) -> bool:
    return not components.live_group_members(pgid)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A leader that leaves a grandchild behind, like gcloud leaves its Java emulator.
    script = (
        "import http.server as h, subprocess, sys; subprocess.Popen(['sleep', '300']); "
        "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.BaseHTTPRequestHandler).serve_forever()"
    )
    port = components.free_port()
    component = components.launch(
        "parent-with-child",
        [sys.executable, "-c", script, str(port)],
        workdir=tmp_path,
        port=port,
        ready=components.http_answers,
    )
    assert not _group_gone(component.pid)
    component.stop(grace=2)
    assert _group_gone(component.pid)
    assert not component.running()


def test_a_component_that_dies_while_starting_is_named_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(components.ComponentError) as excinfo:
        components.launch(
            "doomed",
            [sys.executable, "-c", "print('bad flag --frobnicate'); raise SystemExit(3)"],
            workdir=tmp_path,
            port=components.free_port(),
            ready=components.http_answers,
        )
    message = str(excinfo.value)
    assert "doomed exited with code 3" in message
    assert "bad flag --frobnicate" in message
    assert (tmp_path / "logs" / "doomed.log").exists()


def test_a_component_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(components.ComponentError, match="did not become ready") as excinfo:
        components.launch(
            "sleeper",
            ["sleep", "300"],
            workdir=tmp_path,
            port=components.free_port(),
            ready=components.http_answers,
            timeout=0.5,
        )
    assert "sleeper" in str(excinfo.value)


def test_pubsub_emulator_accepts_admin_calls(pubsub_emulator: str, project_id: str) -> None:
    topic = f"projects/{project_id}/topics/components-probe"
    provision.create_topic(pubsub_emulator, topic)
    provision.create_topic(pubsub_emulator, topic)  # idempotent
    with provision.publisher(pubsub_emulator) as client:
        topics = [t.name for t in client.list_topics(project=f"projects/{project_id}")]
    assert topic in topics


def test_fake_gcs_publishes_a_finalize_notification_per_upload(
    fake_gcs: str, pubsub_emulator: str, gcs_notifications_topic: str, local_config: LocalConfig
) -> None:
    subscription = local_config.subscription_path("components-probe-notifications")
    provision.create_subscription(pubsub_emulator, subscription, gcs_notifications_topic)
    provision.create_bucket(fake_gcs, local_config.project, "components-probe")
    upload = requests.post(
        f"{fake_gcs}/upload/storage/v1/b/components-probe/o",
        params={"uploadType": "media", "name": "a/b.dcm"},
        data=b"DICM",
        timeout=10,
    )
    assert upload.status_code == 200, upload.text

    deadline = time.monotonic() + 60  # a failure deadline: a loaded machine may take a while
    received: list[pubsub_v1.types.PubsubMessage] = []
    with provision.subscriber(pubsub_emulator) as client:
        while not received and time.monotonic() < deadline:
            response = client.pull(subscription=subscription, max_messages=10, timeout=5)
            received = [m.message for m in response.received_messages]
    assert received, "no notification within 60 s"
    message = received[0]
    assert message.attributes["eventType"] == "OBJECT_FINALIZE"
    assert message.attributes["bucketId"] == "components-probe"
    assert json.loads(message.data)["name"] == "a/b.dcm"


def test_function_sees_only_its_settings_and_is_not_run_by_the_readiness_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "main.py"
    calls = tmp_path / "calls.log"
    source.write_text(
        textwrap.dedent(
            f"""
            import json, os
            import functions_framework

            @functions_framework.http
            def show_env(request):
                with open({str(calls)!r}, "a") as log:
                    log.write(request.path + "\\n")
                names = [k for k in os.environ if k.startswith("DICOM_") or k == "FUNCTION_TARGET"]
                return json.dumps({{k: os.environ[k] for k in names}})
            """
        )
    )
    monkeypatch.setenv("DICOM_IMPORT_PREFIXES", "leaked-from-the-shell/")
    component = components.start_function(
        "show_env", tmp_path, {"DICOM_STORE": LocalConfig().dicom_store_path}, source=source
    )
    try:
        assert not calls.exists(), "the readiness probe ran the function (a poller would start a run)"
        seen = requests.get(component.url, timeout=10).json()
    finally:
        component.stop()
    assert seen == {"DICOM_STORE": LocalConfig().dicom_store_path, "FUNCTION_TARGET": "show_env"}
    assert calls.read_text() == "/\n"
    assert _group_gone(component.pid)


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port another socket listens on (it never answers, so readiness checks on it fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((components.LOOPBACK, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_component_whose_port_is_taken_says_so(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(components.PortInUse, match="fake-gcs exited"):
        components.start_fake_gcs(tmp_path, port=taken_port)


def test_a_component_that_chose_a_taken_port_starts_on_another(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race CI met: the chosen port is taken before the process binds it.
    chosen = iter([taken_port])
    real_free_port = components.free_port
    monkeypatch.setattr(components, "free_port", lambda: next(chosen, None) or real_free_port())

    component = components.start_fake_gcs(tmp_path)
    try:
        assert component.host != f"{components.LOOPBACK}:{taken_port}"
        assert requests.get(component.url + "/storage/v1/b", timeout=10).ok
        assert "address already in use" in (tmp_path / "logs" / "fake-gcs.log").read_text().lower()
    finally:
        component.stop()


def test_a_failure_before_this_start_is_not_read_as_a_taken_port(tmp_path: Path) -> None:
    # Logs are appended to: an old bind error in the log must not make a new failure retryable.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "doomed.log").write_text("bind: address already in use\n")
    with pytest.raises(components.ComponentError) as excinfo:
        components.launch("doomed", [sys.executable, "-c", "raise SystemExit(2)"], workdir=tmp_path,
                          port=components.free_port(), ready=components.http_answers)
    assert not isinstance(excinfo.value, components.PortInUse)
