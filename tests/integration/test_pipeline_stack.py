"""The whole pipeline as deployed locally: real function processes under functions-framework,
the router playing Eventarc and Cloud Scheduler, and a function process killed mid-batch."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import storage

from localcloud import provision
from localcloud.config import LocalConfig
from localcloud.stack import Stack
from tests import dicom_factory
from tests.contracts import validate_completion_message
from tests.integration.harness import wait_for


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = LocalConfig(poll_interval_seconds=0.5, debounce_seconds=2.0, settle_seconds=0.5,
                         claim_lease_seconds=6.0)
    with Stack.start(tmp_path / "stack", config=config) as running, pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", running.endpoints["storage"])
        yield running


def _completions(stack: Stack, events: list[dict[str, Any]]) -> int:
    subscription = stack.config.subscription_path(stack.config.completions_subscription)
    with provision.subscriber(stack.endpoints["pubsub"]) as subscriber:
        response = subscriber.pull(subscription=subscription, max_messages=50, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages])
    events.extend(validate_completion_message(m.message.data, m.message.attributes) for m in response.received_messages)
    return len(events)


def _stored(stack: Stack) -> int:
    url = f"{stack.endpoints['healthcare']}/v1/{stack.endpoints['dicomStore']}/dicomWeb/instances"
    response = requests.get(url, params={"limit": "5000"}, timeout=10)
    return len(response.json()) if response.status_code == 200 and response.content.strip() else 0


def _upload(stack: Stack, files: dict[str, bytes]) -> None:
    bucket = storage.Client(project=stack.config.project).bucket(stack.config.upload_bucket)
    for name, data in files.items():
        bucket.blob(name).upload_from_string(data)


def test_uploads_flow_through_the_function_processes(stack: Stack) -> None:
    files = {f"study{s}/IM{i}.dcm": data for s in range(2) for i, data in enumerate(dicom_factory.study(1, 3))}
    files["study0/notes.txt"] = b"a sidecar"
    _upload(stack, files)
    events: list[dict[str, Any]] = []

    def imported_and_reported() -> bool:
        _completions(stack, events)
        reported = sum(e["counters"]["success"] for e in events if e["kind"] == "import")
        return reported == 6 and _stored(stack) == 6

    wait_for(imported_and_reported, timeout=60, what="6 instances imported and reported")
    assert all(e["state"] == "SUCCEEDED" for e in events)
    assert {e["dicomStore"] for e in events} == {stack.endpoints["dicomStore"]}


def test_a_function_killed_between_claim_and_import_loses_nothing(stack: Stack) -> None:
    healthcare = stack.endpoints["healthcare"]
    # The import call hangs long enough to kill the function process while it waits for it.
    requests.post(f"{healthcare}/_emulator/faults", json={"method": "import", "count": 1, "delaySeconds": 8},
                  timeout=5).raise_for_status()
    files = {f"crash/IM{i}.dcm": data for i, data in enumerate(dicom_factory.study(1, 4))}
    _upload(stack, files)
    import_function = next(c for c in stack.components if c.name.endswith("import_dicom_on_upload"))
    wait_for(lambda: requests.get(f"{healthcare}/_emulator/stats", timeout=5).json()["calls"].get("import", 0) >= 1,
             timeout=30, what="the leader's import call")
    os.killpg(import_function.pid, signal.SIGKILL)

    events: list[dict[str, Any]] = []
    # The poller takes the window over once the dead leader's lease expires.
    wait_for(lambda: _stored(stack) == 4 and _completions(stack, events) >= 1, timeout=90,
             what="the batch imported after the crash")
    assert any(e["kind"] == "import" and e["state"] == "SUCCEEDED" for e in events)
    # The dead leader's import started (late): the poller adopted it instead of starting a second one.
    stats = requests.get(f"{healthcare}/_emulator/stats", timeout=5).json()
    assert stats["calls"]["import"] == 1, stats
