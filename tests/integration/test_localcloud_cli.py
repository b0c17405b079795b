"""`python -m localcloud up` and `env` as a user runs them, with the product's real functions."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from localcloud import components
from localcloud.components import REPO_ROOT
from localcloud.config import FUNCTION_TARGETS
from localcloud.stack import ENDPOINTS_FILE

STARTUP_BUDGET_SECONDS = 90.0  # a failure deadline, not a speed target (bench.local_stack measures it)


def _localcloud(*args: str) -> list[str]:
    return [sys.executable, "-m", "localcloud", *args]


def _group_gone(pgid: int) -> bool:
    return not components.live_group_members(pgid)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any], Path]]:
    """A running `up` in the background, its endpoints.json and its state folder."""
    state_dir = tmp_path / "state"
    process = subprocess.Popen(
        _localcloud("up", "--state-dir", str(state_dir), "--poll-interval", "1"),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_BUDGET_SECONDS
        endpoints_file = state_dir / ENDPOINTS_FILE
        while not endpoints_file.exists():
            if process.poll() is not None:
                pytest.fail(f"up exited with {process.returncode}:\n{process.stdout.read() if process.stdout else ''}")
            if time.monotonic() > deadline:
                pytest.fail("up did not write endpoints.json in time")
            time.sleep(0.1)
        yield process, json.loads(endpoints_file.read_text()), state_dir
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_up_serves_every_endpoint_and_env_prints_the_exports(
    up: tuple[subprocess.Popen[str], dict[str, Any], Path],
) -> None:
    _, endpoints, state_dir = up
    assert endpoints["startupSeconds"] > 0  # how long it takes is measured by bench.local_stack
    assert requests.get(f"{endpoints['storage']}/storage/v1/b", timeout=5).status_code == 200
    assert requests.get(f"http://{endpoints['pubsub']}/", timeout=5).text.strip() == "Ok"
    assert requests.get(f"{endpoints['healthcare']}/v1/{endpoints['dicomStore']}", timeout=5).status_code == 200
    assert set(endpoints["functions"]) == set(FUNCTION_TARGETS)
    for role in ("import", "export"):  # functions-framework serves CloudEvent functions on POST only
        assert requests.get(endpoints["functions"][role], timeout=5).status_code == 405, role
    # ... and HTTP functions on every method, except for its own 404 here: nothing of ours runs.
    assert requests.get(f"{endpoints['functions']['poll']}/robots.txt", timeout=5).status_code == 404
    # The poller is an HTTP function: a Cloud Scheduler POST runs it and gets its JSON summary.
    tick = requests.post(endpoints["functions"]["poll"], headers={"User-Agent": "Google-Cloud-Scheduler"}, timeout=30)
    assert tick.status_code == 200 and tick.json()["errors"] == [], tick.text

    printed = subprocess.run(
        _localcloud("env", "--state-dir", str(state_dir)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert f"export STORAGE_EMULATOR_HOST={endpoints['storage']}" in lines
    assert f"export PUBSUB_EMULATOR_HOST={endpoints['pubsub']}" in lines
    assert f"export HEALTHCARE_API_URL={endpoints['healthcare']}" in lines


def test_sigterm_stops_every_process_and_removes_the_endpoints(
    up: tuple[subprocess.Popen[str], dict[str, Any], Path],
) -> None:
    process, endpoints, state_dir = up
    groups = [pid for name, pid in endpoints["processes"].items() if name != "up"]
    assert groups and not any(_group_gone(g) for g in groups)

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0
    assert all(_group_gone(g) for g in groups)
    assert not (state_dir / ENDPOINTS_FILE).exists()
    after = subprocess.run(_localcloud("env", "--state-dir", str(state_dir)), cwd=REPO_ROOT, capture_output=True)
    assert after.returncode == 1


@pytest.mark.parametrize("args", [
    ("ingest", "."),
    ("ingest", ".", "--json"),
    ("export", "--query", "PatientID=P1", "--destination", "gs://dicom-export/x", "--json"),
    ("status", "--json"),
])
def test_commands_without_a_running_stack_say_how_to_start_one(args: tuple[str, ...], tmp_path: Path) -> None:
    done = subprocess.run(_localcloud(*args, "--state-dir", str(tmp_path)), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == f"no local cloud is running for {tmp_path}; start one with: python -m localcloud up"


def test_demo_goes_through_the_functions(tmp_path: Path) -> None:
    # How long the demo takes is measured by bench.local_stack, not asserted here.
    done = subprocess.run(_localcloud("demo", "--state-dir", str(tmp_path / "state")), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("event       import SUCCEEDED") for line in lines)
    assert sum(line.startswith("event       export SUCCEEDED") for line in lines) == 3
    assert any(line.endswith(".png") or ".png " in line for line in lines)
    # The SQL-selected export: the store streamed every imported instance to the local BigQuery,
    # the export function ran the seed's query on that table and exported what it selected (the
    # demo itself fails unless the objects written are exactly those instances).
    [streamed] = [line for line in lines if line.startswith("bigquery ")]
    counts = re.search(r"(\d+) of (\d+) instances streamed to local-project\.dicom_stream\.instances", streamed)
    assert counts is not None and counts[1] == counts[2] != "0", streamed
    total = int(counts[2])
    [sql_at] = [n for n, line in enumerate(lines) if line.startswith("sql         SELECT CONCAT('/studies/'")]
    assert "FROM `local-project.dicom_stream.instances` WHERE " in lines[sql_at]
    announced = re.search(r"what SQL selects \((\d+) instances", lines[sql_at - 1])
    assert announced is not None, lines[sql_at - 1]
    selected = int(announced[1])
    assert lines[sql_at + 1].startswith(f"event       export SUCCEEDED             {selected} ok, 0 failed  "
                                        "gs://dicom-export/demo/sql"), lines[sql_at + 1]
    assert lines[sql_at + 2].startswith(f"written     {selected} objects under gs://dicom-export/demo/sql/")
    assert 0 < selected < total
    assert lines[-1].startswith("demo        everything succeeded in ")
    assert not (tmp_path / "state" / ENDPOINTS_FILE).exists()


def test_down_stops_a_running_up_and_waits_for_it(
    up: tuple[subprocess.Popen[str], dict[str, Any], Path],
) -> None:
    process, endpoints, state_dir = up
    groups = [pid for name, pid in endpoints["processes"].items() if name != "up"]

    done = subprocess.run(_localcloud("down", "--state-dir", str(state_dir)), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=90)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"local cloud stopped (pid {process.pid})"
    assert process.wait(timeout=30) == 0
    assert all(_group_gone(g) for g in groups)
    assert not (state_dir / ENDPOINTS_FILE).exists()
    again = subprocess.run(_localcloud("down", "--state-dir", str(state_dir)), cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and again.stdout.strip() == f"local cloud none running for {state_dir}"
