"""Pure parts of the stack: endpoints.json, shell exports, target discovery, stale state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud.config import LocalConfig
from localcloud.stack import (
    ENDPOINTS_FILE,
    Stack,
    StackError,
    defined_targets,
    env_exports,
    read_endpoints,
    render_endpoints,
)


def _endpoints(up_pid: int) -> dict[str, object]:
    return render_endpoints(
        LocalConfig(),
        storage="http://127.0.0.1:1001",
        pubsub="127.0.0.1:1002",
        healthcare="http://127.0.0.1:1003",
        bigquery="http://127.0.0.1:1005",
        functions={"import": "http://127.0.0.1:1004"},
        logs=Path("/tmp/state/logs"),
        processes={"up": up_pid},
    )


def test_endpoints_name_every_resource() -> None:
    endpoints = _endpoints(1)
    assert endpoints["storage"] == "http://127.0.0.1:1001"
    assert endpoints["pubsub"] == "127.0.0.1:1002"
    assert endpoints["healthcare"] == "http://127.0.0.1:1003"
    assert endpoints["bigquery"] == "http://127.0.0.1:1005"
    assert endpoints["streamTable"] == "local-project.dicom_stream.instances"
    assert (endpoints["project"], endpoints["location"]) == ("local-project", "us-central1")
    assert endpoints["dicomStore"] == (
        "projects/local-project/locations/us-central1/datasets/local-dataset/dicomStores/local-store"
    )
    assert endpoints["buckets"] == {
        "upload": "dicom-upload",
        "export": "dicom-export",
        "state": "dicom-state",
    }
    topics = endpoints["topics"]
    assert isinstance(topics, dict)
    assert topics["exportRequests"] == "projects/local-project/topics/dicom-export-requests"
    assert topics["completions"] == "projects/local-project/topics/dicom-completions"
    subscriptions = endpoints["subscriptions"]
    assert isinstance(subscriptions, dict)
    assert subscriptions["completions"] == "projects/local-project/subscriptions/dicom-completions-local"
    assert endpoints["functions"] == {"import": "http://127.0.0.1:1004"}
    assert endpoints["logs"] == "/tmp/state/logs"
    json.dumps(endpoints)  # it is written as JSON


def test_without_the_stream_endpoints_name_no_stream_table() -> None:
    endpoints = render_endpoints(
        LocalConfig(stream_to_bigquery=False), storage="http://s", pubsub="p:1", healthcare="http://h",
        bigquery="http://b", functions={}, logs=Path("/tmp/logs"), processes={},
    )
    assert endpoints["streamTable"] is None and endpoints["bigquery"] == "http://b"


def test_env_exports_point_clients_at_the_emulators() -> None:
    lines = env_exports(_endpoints(1)).splitlines()
    assert "export STORAGE_EMULATOR_HOST=http://127.0.0.1:1001" in lines
    assert "export PUBSUB_EMULATOR_HOST=127.0.0.1:1002" in lines
    assert "export HEALTHCARE_API_URL=http://127.0.0.1:1003" in lines
    assert "export BIGQUERY_EMULATOR_URL=http://127.0.0.1:1005" in lines


def test_endpoints_of_a_dead_up_process_are_ignored(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps(_endpoints(dead_pid)))
    assert read_endpoints(tmp_path) is None


def test_endpoints_of_a_live_up_process_are_read(tmp_path: Path) -> None:
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps(_endpoints(os.getpid())))
    endpoints = read_endpoints(tmp_path)
    assert endpoints is not None and endpoints["pubsub"] == "127.0.0.1:1002"


def test_no_endpoints_file_means_no_stack(tmp_path: Path) -> None:
    assert read_endpoints(tmp_path) is None


def test_targets_are_found_without_importing_the_module(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(
        "raise SystemExit('must not be imported')\n"
        "from functions.entry import export_dicom_on_message\n"
        "def import_dicom_on_upload(event): ...\n"
        "def _helper(): ...\n"
    )
    assert {"import_dicom_on_upload", "export_dicom_on_message"} <= defined_targets(source)
    assert "poll_dicom_operations" not in defined_targets(source)
    assert defined_targets(tmp_path / "missing.py") == set()


def test_a_second_stack_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps(_endpoints(os.getpid())))
    with pytest.raises(StackError, match="already running"):
        Stack.start(tmp_path)
    assert (tmp_path / ENDPOINTS_FILE).exists()  # the running stack's file is left alone
