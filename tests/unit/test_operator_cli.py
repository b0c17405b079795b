"""`dicom-events`: the deployment description, the clients it builds for a real project (without
any network), argument checks, and the README's command lines."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account

from localcloud import cli as localcloud_cli
from localcloud import operator_cli
from localcloud.connect import Connection, LocalCloud
from localcloud.deployment import TERRAFORM_OUTPUTS, Deployment, DeploymentError, load_config
from localcloud.ingest import describe_event
from localcloud.progress import aligned
from tests.infra.hcl import ROOT

PROJECT = "imaging-prod"
STORE = f"projects/{PROJECT}/locations/europe-west4/datasets/dicom-pipeline/dicomStores/dicom-store"
SA_EMAIL = f"operator@{PROJECT}.iam.gserviceaccount.com"


def terraform_outputs() -> dict[str, Any]:
    """What `terraform output -json` prints for infra/ (the outputs the CLI reads, and others)."""
    values: dict[str, Any] = {
        "project_id": PROJECT,
        "region": "europe-west4",
        "dicom_store": STORE,
        "buckets": {"upload": f"{PROJECT}-dicom-upload", "export": f"{PROJECT}-dicom-export",
                    "state": f"{PROJECT}-dicom-state", "source": f"{PROJECT}-dicom-source"},
        "export_requests_topic": f"projects/{PROJECT}/topics/dicom-export-requests",
        "completion_topic": f"projects/{PROJECT}/topics/dicom-completions",
        "export_dead_letter_topic": f"projects/{PROJECT}/topics/dicom-export-requests-dead-letter",
        "completion_subscription": f"projects/{PROJECT}/subscriptions/dicom-completions-cli",
        "export_dead_letter_subscription": f"projects/{PROJECT}/subscriptions/dicom-export-requests-dead-letter",
        "import_environment": {
            "DICOM_STORE": STORE, "DICOM_STATE_BUCKET": f"{PROJECT}-dicom-state", "DICOM_STATE_PREFIX": "pipeline/",
            "HEALTHCARE_API_URL": "https://healthcare.googleapis.com", "DICOM_IMPORT_PREFIXES": "incoming/",
            "DICOM_IMPORT_NAME_PATTERN": "(?i)\\.dcm$", "DICOM_DEBOUNCE_SECONDS": "5", "LOG_LEVEL": "INFO",
        },
        "scheduler_job": f"projects/{PROJECT}/locations/europe-west4/jobs/dicom-poll",
    }
    return {name: {"sensitive": False, "type": "string", "value": value} for name, value in values.items()}


@pytest.fixture
def fake_adc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A generated service-account key as the application default credentials, emulator variables
    that must be ignored, and no network at all."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "key.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "0" * 40, "private_key": pem,
        "client_email": SA_EMAIL, "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a client was built with network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return path


def real_deployment() -> Deployment:
    return Deployment.from_terraform_outputs(terraform_outputs(), "test outputs")


# -- a real project's clients, built offline ------------------------------------------------------

def test_a_real_project_gets_googles_endpoints_and_the_application_default_credentials(fake_adc: Path) -> None:
    with Connection(real_deployment()) as connection:
        credentials = connection.credentials
        assert isinstance(credentials, service_account.Credentials)
        assert credentials.service_account_email == SA_EMAIL
        assert "https://www.googleapis.com/auth/cloud-platform" in (credentials.scopes or ())

        # STORAGE_EMULATOR_HOST in the shell must not redirect a real deployment.
        client = connection.storage
        assert client._connection.API_BASE_URL == "https://storage.googleapis.com"
        assert client._credentials is credentials
        assert client.project == PROJECT

        with connection.publisher() as publisher:
            assert publisher._transport._host == "pubsub.googleapis.com:443"
            assert publisher._transport._credentials is credentials
        with connection.subscriber() as subscriber:
            assert subscriber._transport._host == "pubsub.googleapis.com:443"
            assert subscriber._transport._credentials is credentials

        assert isinstance(connection.http, AuthorizedSession)
        assert connection.http.credentials is credentials
        assert connection.healthcare_url == "https://healthcare.googleapis.com"
        bigquery = connection.bigquery()
        assert bigquery._connection.API_BASE_URL == "https://bigquery.googleapis.com"
        assert bigquery._credentials is credentials
        bigquery.close()

        # Names come from the outputs; the state prefix from the import function's environment.
        assert connection.state_path("done", "x.json") == "pipeline/done/x.json"
        subscription = connection.deployment.completion_subscription
        assert subscription == f"projects/{PROJECT}/subscriptions/dicom-completions-cli"
        assert connection.import_settings().import_prefixes == ("incoming/",)


def test_the_local_cloud_gets_the_emulators_and_anonymous_credentials() -> None:
    cloud = LocalCloud({
        "storage": "http://127.0.0.1:1", "pubsub": "127.0.0.1:2", "healthcare": "http://127.0.0.1:3",
        "bigquery": "http://127.0.0.1:4", "project": "local-project",
        "dicomStore": "projects/local-project/locations/l/datasets/d/dicomStores/s",
        "buckets": {"upload": "dicom-upload", "export": "dicom-export", "state": "dicom-state"},
        "topics": {"exportRequests": "projects/local-project/topics/req",
                   "completions": "projects/local-project/topics/c"},
        "subscriptions": {"completions": "projects/local-project/subscriptions/c-local"},
    })
    with cloud:
        assert isinstance(cloud.credentials, AnonymousCredentials)
        assert cloud.storage._connection.API_BASE_URL == "http://127.0.0.1:1"
        assert cloud.healthcare_url == "http://127.0.0.1:3"
        with cloud.publisher() as publisher:
            assert publisher._transport._host.startswith("127.0.0.1:2")
        assert cloud.deployment.export_requests_topic == "projects/local-project/topics/req"
        assert cloud.deployment.completion_subscription == "projects/local-project/subscriptions/c-local"
        assert cloud.deployment.is_local


def test_configure_writes_a_config_the_commands_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(terraform_outputs()))
    config = tmp_path / "conf" / "deployment.json"

    assert operator_cli.main(["configure", "--from-outputs", str(outputs), "--config", str(config)]) == 0

    assert f"configured  {config}" in capsys.readouterr().out
    loaded = load_config(config)
    expected = real_deployment()
    assert loaded.to_json() == expected.to_json()
    assert loaded.emulators is None


def test_configure_reads_terraform_output_in_the_infra_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `terraform output` reads a local state without `init` or providers: the state of an apply.
    assert shutil.which("terraform"), "Terraform is a prerequisite (README)"
    infra = tmp_path / "infra"
    infra.mkdir()
    outputs = {name: {"value": entry["value"],
                      "type": "string" if isinstance(entry["value"], str) else ["map", "string"]}
               for name, entry in terraform_outputs().items()}
    (infra / "terraform.tfstate").write_text(json.dumps({
        "version": 4, "terraform_version": "1.5.7", "serial": 1, "lineage": "6a0e4f0c-0000-4000-8000-000000000000",
        "outputs": outputs, "resources": [], "check_results": None}))
    config = tmp_path / "deployment.json"

    assert operator_cli.main(["configure", "--from-terraform", str(infra), "--config", str(config)]) == 0, \
        capsys.readouterr().err

    assert load_config(config).to_json() == real_deployment().to_json()


def test_configure_names_the_missing_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = terraform_outputs()
    del outputs["completion_subscription"], outputs["import_environment"]
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))

    assert operator_cli.main(["configure", "--from-outputs", str(path), "--config", str(tmp_path / "c.json")]) == 1

    err = capsys.readouterr().err
    assert "Terraform outputs missing: completion_subscription, import_environment" in err
    assert not (tmp_path / "c.json").exists()


def test_a_broken_import_environment_is_refused_when_read() -> None:
    outputs = terraform_outputs()
    outputs["import_environment"]["value"]["DICOM_DEBOUNCE_SECONDS"] = "soon"
    with pytest.raises(DeploymentError, match="DICOM_DEBOUNCE_SECONDS"):
        Deployment.from_terraform_outputs(outputs, "test outputs")


def test_without_a_config_the_commands_say_how_to_write_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DICOM_EVENTS_CONFIG", str(tmp_path / "none.json"))
    assert operator_cli.main(["status"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "dicom-events configure --from-terraform infra/" in captured.err


def test_the_cli_reads_exactly_the_outputs_it_documents() -> None:
    assert set(TERRAFORM_OUTPUTS) <= set(terraform_outputs())


# -- argument checks (exit 2, nothing done) -------------------------------------------------------

@pytest.mark.parametrize("prefix", ["../x", "a/../b", "./a", "a//b", "..", "a/\nb"])
def test_an_upload_prefix_with_dot_segments_is_refused_before_anything_is_uploaded(
        prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No local cloud runs for tmp_path: without the check the command would exit 1 (not running).
    assert operator_cli.main(["ingest", str(tmp_path), "--prefix", prefix, "--local",
                              "--state-dir", str(tmp_path)]) == 2
    assert "--prefix" in capsys.readouterr().err


@pytest.mark.parametrize(("prefix", "expected"), [("x", "x"), ("/in/2026/", "in/2026"), ("", ""),
                                                  ("a.b/..c", "a.b/..c")])
def test_plain_prefixes_are_kept(prefix: str, expected: str) -> None:
    assert operator_cli.checked_prefix(prefix) == expected


@pytest.mark.parametrize("args", [
    ["up", "--poll-interval", "-1"],
    ["up", "--poll-interval", "0"],
    ["status", "--events", "-1"],
    ["export", "--resources", "/studies/1", "--destination", "gs://b/x", "--timeout", "-5"],
])
def test_negative_numbers_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        localcloud_cli.build_parser().parse_args(args)
    assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_dicom_events_status_events_must_not_be_negative(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        operator_cli.main(["status", "--events", "-3", "--local"])
    assert exited.value.code == 2


def test_since_takes_durations_and_rfc3339_times() -> None:
    now = datetime(2026, 5, 27, 12, 0, tzinfo=UTC)
    assert operator_cli.since_time("30m", now=now) == datetime(2026, 5, 27, 11, 30, tzinfo=UTC)
    assert operator_cli.since_time("1d", now=now) == datetime(2026, 5, 26, 12, 0, tzinfo=UTC)
    assert operator_cli.since_time("2026-05-27T10:15:00Z") == datetime(2026, 5, 27, 10, 15, tzinfo=UTC)
    for bad in ("yesterday", "-5m", "2026-05-27T10:15:00"):
        with pytest.raises(argparse.ArgumentTypeError):
            operator_cli.since_time(bad, now=now)


def test_a_resources_file_becomes_the_resources_selector(tmp_path: Path) -> None:
    path = tmp_path / "paths.txt"
    path.write_text("# two studies\n/studies/1.2.3\n\n  /studies/4.5.6/series/7.8  \n")
    assert operator_cli.read_resources_file(str(path)) == ["/studies/1.2.3", "/studies/4.5.6/series/7.8"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(operator_cli.UsageError, match="names no resource path"):
        operator_cli.read_resources_file(str(tmp_path / "empty.txt"))


def test_a_bad_path_in_a_resources_file_is_refused_before_publishing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "paths.txt"
    path.write_text("/studies/1.2.3\n/series/4.5\n")
    assert operator_cli.main(["export", "--resources-file", str(path), "--destination", "gs://bucket/x", "--local",
                              "--state-dir", str(tmp_path)]) == 2
    assert "resources[1]" in capsys.readouterr().err


# -- what the lines say ---------------------------------------------------------------------------

def test_long_kinds_and_labels_keep_a_space() -> None:
    assert describe_event({"kind": "storageClass", "state": "SUCCEEDED"}).startswith("storageClass SUCCEEDED ")
    assert describe_event({"kind": "redrive", "state": "FAILED"}).startswith("redrive FAILED ")
    assert describe_event({"kind": "import", "state": "SUCCEEDED"}).startswith("import SUCCEEDED ")
    assert aligned("storageClass", "request") == "storageClass request"
    assert aligned("storage-class", "x") == "storage-class x"
    assert aligned("event", "x") == "event       x"


def test_error_lines_leave_the_cloud_console_link_to_the_logs_line() -> None:
    event = {"kind": "import", "state": "FAILED", "counters": {"success": 1, "failure": 1},
             "operation": "projects/p/locations/l/datasets/d/operations/123",
             "logsUrl": "https://console.cloud.google.com/logs/query/query=x?project=p",
             "error": {"code": 3, "message": "1 of 2 items failed; see the operation's logs "
                                             "(https://console.cloud.google.com/logs/query/query=x?project=p)"}}
    assert "console.cloud.google.com" not in describe_event(event)
    assert describe_event(event).endswith("error: 1 of 2 items failed; see the operation's logs")

    local = LocalCloud({"storage": "http://127.0.0.1:1", "pubsub": "127.0.0.1:2", "healthcare": "http://127.0.0.1:3",
                        "project": "p", "dicomStore": "projects/p/locations/l/datasets/d/dicomStores/s",
                        "buckets": {"upload": "u", "export": "e", "state": "s"}, "logs": "/tmp/state/logs"})
    [line] = operator_cli.logs_lines(local, [event])
    assert line == ("logs        123: http://127.0.0.1:3/_emulator/operations/123/logs "
                    "(and /tmp/state/logs/healthcare.log)")
    [line] = operator_cli.logs_lines(Connection(real_deployment()), [event])
    assert line == "logs        123: https://console.cloud.google.com/logs/query/query=x?project=p"
    assert operator_cli.logs_lines(local, [{**event, "state": "SUCCEEDED"}]) == []


# -- help text and the README's command lines -----------------------------------------------------

def _command_lines(path: Path, program: str) -> list[str]:
    """Every `program ...` command line in the file's code blocks (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"^\$ ", "", line.strip())
            line = re.sub(r"^\.venv/bin/", "", line)
            if line.startswith(program + " "):
                lines.append(line.split("  #", 1)[0].strip())
    return lines


def _parse(parser: argparse.ArgumentParser, line: str, program: str) -> argparse.Namespace:
    words = shlex.split(line, comments=True)[len(program.split()):]
    return parser.parse_args(words)


def test_the_readme_operator_commands_parse() -> None:
    lines = _command_lines(ROOT / "README.md", "dicom-events") + _command_lines(ROOT / "infra" / "README.md",
                                                                                "dicom-events")
    verbs = {shlex.split(line)[1] for line in lines}
    assert {"configure", "ingest", "export", "storage-class", "redrive", "status", "events", "receipts"} <= verbs
    for line in lines:
        args = _parse(operator_cli.build_parser(), line, "dicom-events")
        assert callable(args.handler), line


def test_the_readme_local_cloud_commands_parse() -> None:
    lines = _command_lines(ROOT / "README.md", "python -m localcloud")
    assert {shlex.split(line)[3] for line in lines} >= {"up", "down", "demo"}
    for line in lines:
        args = _parse(localcloud_cli.build_parser(), line, "python -m localcloud")
        assert callable(args.handler), line


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for parser, commands in ((operator_cli.build_parser(), ("configure", "ingest", "export", "storage-class",
                                                            "redrive", "status", "events", "receipts")),
                             (localcloud_cli.build_parser(), ("up", "down", "env", "demo", "events"))):
        for command in commands:
            with pytest.raises(SystemExit) as exited:
                parser.parse_args([command, "--help"])
            assert exited.value.code == 0
            out = capsys.readouterr().out
            assert out.startswith("usage: "), command
            if parser.prog == "dicom-events" and command != "configure":
                assert "--local" in out and "--config" in out, command


class _RecordingSubscriber:
    """Stands in for SubscriberClient.pull only: records the arguments, answers as told."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def pull(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_pulls_from_google_wait_for_messages_instead_of_returning_immediately() -> None:
    from google.api_core import exceptions as gexc

    from localcloud.connect import EventStream

    google = _RecordingSubscriber(gexc.DeadlineExceeded("no message in time"))
    assert EventStream(google, "projects/p/subscriptions/s", emulated=False).pull() == []
    [call] = google.calls
    assert "return_immediately" not in call and call["timeout"] > 0

    class _Response:
        received_messages: list[Any] = []

    emulator = _RecordingSubscriber(_Response())
    assert EventStream(emulator, "projects/p/subscriptions/s", emulated=True).pull() == []
    assert emulator.calls[0]["return_immediately"] is True
