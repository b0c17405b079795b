"""The whole stack in-process, with the functions replaced by receivers this test controls."""

from __future__ import annotations

import base64
import json
import os
import socket
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from localcloud import components, provision
from localcloud.config import LocalConfig
from localcloud.router import PUBLISHED_EVENT_TYPE
from localcloud.stack import ENDPOINTS_FILE, Stack, StackError
from tests.integration.conftest import HttpReceiver


@dataclass
class RoutedStack:
    stack: Stack
    receivers: dict[str, HttpReceiver]  # role -> the receiver standing in for that function

    @property
    def endpoints(self) -> dict[str, Any]:
        return self.stack.endpoints


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedStack]:
    receivers = {role: HttpReceiver() for role in ("import", "export", "poll")}
    stack = Stack.start(
        tmp_path_factory.mktemp("routed-stack"),
        config=LocalConfig(poll_interval_seconds=0.2),
        external_functions={role: r.url for role, r in receivers.items()},
    )
    try:
        yield RoutedStack(stack, receivers)
    finally:
        stack.stop()
        for receiver in receivers.values():
            receiver.close()


def _group_gone(pgid: int) -> bool:
    return not components.live_group_members(pgid)


def test_endpoints_file_names_everything(routed: RoutedStack) -> None:
    on_disk = json.loads((routed.stack.state_dir / ENDPOINTS_FILE).read_text())
    assert on_disk == routed.endpoints
    for key in ("storage", "pubsub", "healthcare", "project", "location", "dataset", "dicomStore", "logs"):
        assert on_disk[key], key
    assert on_disk["storage"].startswith("http://") and not on_disk["pubsub"].startswith("http")
    assert set(on_disk["buckets"]) == {"upload", "export", "state"}
    assert {"exportRequests", "completions"} <= set(on_disk["topics"])
    assert "completions" in on_disk["subscriptions"]
    assert on_disk["functions"] == {role: r.url for role, r in routed.receivers.items()}
    assert Path(on_disk["logs"]).is_dir()


def test_every_resource_exists_on_its_emulator(routed: RoutedStack) -> None:
    endpoints = routed.endpoints
    listed = requests.get(f"{endpoints['storage']}/storage/v1/b", timeout=10).json()
    assert set(endpoints["buckets"].values()) <= {b["name"] for b in listed["items"]}

    with provision.publisher(endpoints["pubsub"]) as publisher:
        topics = {t.name for t in publisher.list_topics(project=f"projects/{endpoints['project']}")}
    assert set(endpoints["topics"].values()) <= topics
    with provision.subscriber(endpoints["pubsub"]) as subscriber:
        completions = subscriber.get_subscription(subscription=endpoints["subscriptions"]["completions"])
    assert completions.topic == endpoints["topics"]["completions"]

    store = requests.get(f"{endpoints['healthcare']}/v1/{endpoints['dicomStore']}", timeout=10)
    assert store.status_code == 200
    assert store.json()["name"] == endpoints["dicomStore"]
    # The store streams to the local BigQuery, whose dataset exists (the table comes with the first row).
    streams = store.json()["streamConfigs"]
    assert streams == [{"bigqueryDestination": {"tableUri": f"bq://{endpoints['streamTable']}"}}]
    project, dataset, _ = endpoints["streamTable"].split(".")
    found = requests.get(f"{endpoints['bigquery']}/bigquery/v2/projects/{project}/datasets/{dataset}", timeout=10)
    assert found.status_code == 200, found.text


def test_provisioning_again_gives_a_store_without_streams_its_stream_and_keeps_the_rest(
        routed: RoutedStack) -> None:
    # A state folder from before the stream existed: its store has no streamConfigs.
    endpoints = routed.endpoints
    config = LocalConfig(dicom_store="older-store")
    created = requests.post(f"{endpoints['healthcare']}/v1/{config.dataset_path}/dicomStores",
                            params={"dicomStoreId": config.dicom_store}, json={"labels": {"kept": "yes"}}, timeout=10)
    assert created.status_code == 200, created.text
    for _ in range(2):  # idempotent
        provision.create_stream_dataset(endpoints["bigquery"], config)
        provision.create_dicom_store(endpoints["healthcare"], config)
    store = requests.get(f"{endpoints['healthcare']}/v1/{config.dicom_store_path}", timeout=10).json()
    assert store["streamConfigs"] == provision.stream_configs(config) != []
    assert store["labels"] == {"kept": "yes"}
    # `up --no-stream` on the same state folder: the store stops streaming.
    provision.create_dicom_store(endpoints["healthcare"], replace(config, stream_to_bigquery=False))
    store = requests.get(f"{endpoints['healthcare']}/v1/{config.dicom_store_path}", timeout=10).json()
    assert not store.get("streamConfigs") and store["labels"] == {"kept": "yes"}


def test_an_upload_becomes_a_storage_event_for_the_import_function(routed: RoutedStack) -> None:
    endpoints = routed.endpoints
    bucket = endpoints["buckets"]["upload"]
    upload = requests.post(
        f"{endpoints['storage']}/upload/storage/v1/b/{bucket}/o",
        params={"uploadType": "media", "name": "stack-test/IM0001.dcm"},
        data=b"DICM",
        timeout=10,
    )
    assert upload.status_code == 200

    (event,) = routed.receivers["import"].wait_for(1)
    assert event.headers["ce-type"] == PUBLISHED_EVENT_TYPE
    assert event.headers["ce-source"] == f"//pubsub.googleapis.com/{routed.endpoints['topics']['notifications']}"
    resource = json.loads(base64.b64decode(json.loads(event.body)["message"]["data"]))
    assert (resource["bucket"], resource["name"]) == (bucket, "stack-test/IM0001.dcm")


def test_an_export_request_is_pushed_to_the_export_function(routed: RoutedStack) -> None:
    topic = routed.endpoints["topics"]["exportRequests"]
    with provision.publisher(routed.endpoints["pubsub"]) as publisher:
        publisher.publish(topic, b'{"requestId": "r1"}').result(10)

    (push,) = routed.receivers["export"].wait_for(1)
    assert push.path == f"/{topic}"
    assert json.loads(push.body)["message"]["messageId"]


def test_export_requests_that_keep_failing_are_dead_lettered(routed: RoutedStack) -> None:
    config = routed.stack.config
    with provision.subscriber(routed.endpoints["pubsub"]) as subscriber:
        push = subscriber.get_subscription(subscription=config.subscription_path(config.export_push_subscription))
    assert push.dead_letter_policy.dead_letter_topic == routed.endpoints["topics"]["exportDeadLetter"]
    assert push.dead_letter_policy.max_delivery_attempts == 5
    assert push.retry_policy.minimum_backoff.total_seconds() == 1
    assert push.retry_policy.maximum_backoff.total_seconds() == 10


def test_storage_events_back_off_in_the_router_not_in_the_emulator(routed: RoutedStack) -> None:
    # The emulator's backed-off messages wedge a busy subscription (provision_pubsub says why).
    config = routed.stack.config
    with provision.subscriber(routed.endpoints["pubsub"]) as subscriber:
        notifications = subscriber.get_subscription(
            subscription=config.subscription_path(config.notifications_subscription))
    assert not type(notifications).pb(notifications).HasField("retry_policy")


def test_the_scheduler_calls_the_poller(routed: RoutedStack) -> None:
    calls = routed.receivers["poll"].wait_for(2, timeout=5)
    assert all(c.headers["x-cloudscheduler"] == "true" for c in calls)


def test_stop_leaves_no_process_and_no_endpoints_file(tmp_path: Path) -> None:
    stack = Stack.start(tmp_path, roles=())
    groups = [c.pid for c in stack.components]
    # Pub/Sub, Cloud Storage, BigQuery, Healthcare
    assert len(groups) == 4 and not any(_group_gone(g) for g in groups)

    stack.stop()

    assert all(_group_gone(g) for g in groups)
    assert not (tmp_path / ENDPOINTS_FILE).exists()


def test_a_function_that_cannot_start_is_named_and_the_rest_is_stopped(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(
        textwrap.dedent(
            """
            raise RuntimeError("broken deployment: DICOM_STORE is nonsense")

            def import_dicom_on_upload(event): ...
            """
        )
    )
    with pytest.raises(StackError) as excinfo:
        Stack.start(tmp_path / "state", source=source)
    message = str(excinfo.value)
    assert "function import_dicom_on_upload" in message
    assert "broken deployment: DICOM_STORE is nonsense" in message
    assert _processes_using(tmp_path) == []


def _processes_using(folder: Path) -> list[int]:
    """PIDs whose command line or working directory mentions `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(int(entry.name))
    return found


def test_a_port_taken_during_start_up_starts_the_stack_again_on_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # CI met this race: fake-gcs-server's port was taken between reservation and bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((components.LOOPBACK, 0))
        taken.listen()
        taken_port = int(taken.getsockname()[1])
        real_free_port = components.free_port
        calls = iter(range(1_000))
        # The second port start-up reserves is Cloud Storage's (pubsub, storage, healthcare, bigquery).
        monkeypatch.setattr(components, "free_port", lambda: taken_port if next(calls) == 1 else real_free_port())

        with Stack.start(tmp_path, roles=()) as stack:
            assert stack.endpoints["storage"] != f"http://{components.LOOPBACK}:{taken_port}"
            assert requests.get(stack.endpoints["storage"] + "/storage/v1/b", timeout=10).ok

    assert any("starting again on new ports" in r.getMessage() for r in caplog.records)
