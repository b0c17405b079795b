"""`dicom-events VERB --local` against a running local cloud: the installed console script, the
deployment code path of a real project with the emulators' endpoints and anonymous credentials."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud import synthetic
from localcloud.components import REPO_ROOT
from localcloud.config import LocalConfig
from localcloud.connect import LocalCloud
from localcloud.stack import Stack
from tests import dicom_factory

DICOM_EVENTS = Path(sys.executable).parent / "dicom-events"
TIMEOUT = "120"  # the commands' own failure deadline; they return as soon as the work is done


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert DICOM_EVENTS.is_file(), f"{DICOM_EVENTS} is missing: `make install` installs the console script"
    config = LocalConfig(poll_interval_seconds=0.5, debounce_seconds=1.0, settle_seconds=0.5,
                         claim_lease_seconds=6.0)
    with Stack.start(tmp_path_factory.mktemp("operator") / "state", config=config) as running:
        yield running


def dicom_events(stack: Stack, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DICOM_EVENTS), *args, "--local", "--state-dir", str(stack.state_dir)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def imported(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticSet:
    studies = synthetic.generate(tmp_path_factory.mktemp("synthetic") / "set", seed=11, patients=2,
                                 studies_per_patient=(1, 1), instances_per_series=(2, 2))
    done = dicom_events(stack, "ingest", str(studies.root), "--prefix", "incoming/2026", "--json",
                        "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["imported"] == len(studies.files) and result["failed"] == []
    assert done.stderr == ""
    return studies


def _written(stack: Stack, prefix: str) -> list[str]:
    with LocalCloud(stack.endpoints) as cloud:
        return [b.name for b in cloud.storage.list_blobs(stack.config.export_bucket, prefix=prefix + "/")]


def _export(stack: Stack, *args: str) -> dict[str, Any]:
    done = dicom_events(stack, "export", *args, "--json", "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    event: dict[str, Any] = json.loads(done.stdout)
    assert event["state"] == "SUCCEEDED"
    return event


def test_every_selector_exports_through_the_deployment_path(
        stack: Stack, imported: synthetic.SyntheticSet, tmp_path: Path) -> None:
    first, last = imported.studies[0], imported.studies[-1]
    bucket = stack.config.export_bucket

    paths = tmp_path / "studies.txt"
    paths.write_text(f"# one study\n/studies/{first.uid}\n\n")
    event = _export(stack, "--resources-file", str(paths), "--destination", f"gs://{bucket}/op/file")
    assert event["counters"]["success"] == first.instance_count == len(_written(stack, "op/file"))

    event = _export(stack, "--resources", f"/studies/{last.uid}", "--destination", f"gs://{bucket}/op/resources")
    assert event["counters"]["success"] == last.instance_count

    event = _export(stack, "--query", f"PatientID={last.patient_id}", "--mime-type", "image/png",
                    "--destination", f"gs://{bucket}/op/png")
    assert all(name.endswith(".png") for name in _written(stack, "op/png"))

    with LocalCloud(stack.endpoints) as cloud:
        cloud.storage.bucket(bucket).blob("filters/first.txt").upload_from_string(f"/studies/{first.uid}\n")
    event = _export(stack, "--filter-uri", f"gs://{bucket}/filters/first.txt", "--destination",
                    f"gs://{bucket}/op/filter")
    assert event["counters"]["success"] == first.instance_count

    # The store streams its instances to the local BigQuery in the background: wait for the rows.
    with LocalCloud(stack.endpoints) as cloud:
        while cloud.streamed_instances() < len(imported.files):
            pass
    sql = (f"SELECT CONCAT('/studies/', StudyInstanceUID) FROM `{stack.endpoints['streamTable']}` "
           f"WHERE StudyInstanceUID = '{first.uid}'")
    event = _export(stack, "--sql", sql, "--destination", f"gs://{bucket}/op/sql")
    assert event["counters"]["success"] == first.instance_count

    done = dicom_events(stack, "storage-class", "--class", "ARCHIVE", "--resources", f"/studies/{first.uid}",
                        "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("storageClass request cli-")  # a space after the label
    assert done.stdout.splitlines()[-1].startswith("event       storageClass SUCCEEDED ")


def test_a_rejected_request_is_in_status_and_in_the_kept_events(stack: Stack) -> None:
    done = dicom_events(stack, "export", "--resources", "/studies/1.2.3", "--destination", "gs://not-allowed/x",
                        "--request-id", "op-cli-rejected", "--json", "--timeout", TIMEOUT)
    assert done.returncode == 1
    event = json.loads(done.stdout)
    assert (event["state"], event["requestId"]) == ("REJECTED", "op-cli-rejected")

    status = dicom_events(stack, "status", "--json", "--events", "50")
    assert status.returncode == 0, status.stderr
    current = json.loads(status.stdout)
    assert event["eventId"] in [e["eventId"] for e in current["events"]]
    assert current["signals"]["lastHour"]["export"]["REJECTED"] >= 1
    assert current["signals"]["deadLettersExact"] is True
    assert current["project"] == stack.config.project

    kept = dicom_events(stack, "events", "--since", "1h", "--json")
    assert kept.returncode == 0, kept.stderr
    assert event["eventId"] in [json.loads(line)["eventId"] for line in kept.stdout.splitlines()]


def test_a_timed_out_export_still_prints_json(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    done = dicom_events(stack, "export", "--resources", f"/studies/{imported.studies[0].uid}", "--destination",
                        f"gs://{stack.config.export_bucket}/op/late", "--request-id", "op-cli-late",
                        "--json", "--timeout", "0.001")
    assert done.returncode == 3  # pending: no event before the timeout
    assert json.loads(done.stdout) == {"requestId": "op-cli-late", "state": "TIMEOUT",
                                       "waitedSeconds": json.loads(done.stdout)["waitedSeconds"],
                                       "repeatedRequestId": False}
    assert "no completion event for op-cli-late" in done.stderr


def test_events_are_kept_for_the_cli_and_read_once(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    # Events published while nobody read the subscription are still there.
    first = dicom_events(stack, "events", "--json")
    assert first.returncode == 0, first.stderr
    ids = [json.loads(line)["eventId"] for line in first.stdout.splitlines()]
    assert any(i.startswith("op-") for i in ids) and len(ids) == len(set(ids))
    # ... and what was printed is acknowledged: the next read starts after it.
    second = dicom_events(stack, "events", "--json")
    assert second.returncode == 0
    assert not set(ids) & {json.loads(line)["eventId"] for line in second.stdout.splitlines()}


def test_events_with_a_limit_take_only_what_they_print_from_the_mailbox(
        stack: Stack, imported: synthetic.SyntheticSet) -> None:
    assert dicom_events(stack, "events").returncode == 0  # empty the mailbox
    study = f"/studies/{imported.studies[0].uid}"
    done = [_export(stack, "--resources", study, "--destination", f"gs://{stack.config.export_bucket}/limit/{n}")
            for n in range(3)]
    one = dicom_events(stack, "events", "--json", "--max-events", "1")
    assert one.returncode == 0, one.stderr
    assert len(one.stdout.splitlines()) == 1
    rest = dicom_events(stack, "events", "--json")
    printed = {json.loads(line)["eventId"] for line in [*one.stdout.splitlines(), *rest.stdout.splitlines()]}
    assert {event["eventId"] for event in done} <= printed, "an event beyond the limit was taken and lost"


def test_events_follow_prints_new_events_until_interrupted(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    follower = subprocess.Popen([str(DICOM_EVENTS), "events", "--follow", "--json", "--local", "--state-dir",
                                 str(stack.state_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        _export(stack, "--resources", f"/studies/{imported.studies[0].uid}", "--request-id", "op-cli-followed",
                "--destination", f"gs://{stack.config.export_bucket}/op/followed")
        assert follower.stdout is not None
        while True:  # the test's own timeout bounds this
            line = follower.stdout.readline()
            assert line, "events --follow ended by itself"
            if json.loads(line).get("requestId") == "op-cli-followed":
                break
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_receipts_and_redrive(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "ward"
    folder.mkdir()
    (folder / "IM1.dcm").write_bytes(dicom_factory.instance())
    (folder / "broken.dcm").write_bytes(b"not DICOM at all")
    done = dicom_events(stack, "ingest", str(folder), "--prefix", "ward", "--timeout", TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    # The local reasons are at the emulator, not in the Cloud console.
    [logs] = [line for line in done.stdout.splitlines() if line.startswith("logs        ")]
    assert f"{stack.endpoints['healthcare']}/_emulator/operations/" in logs
    assert "console.cloud.google.com" not in done.stdout

    listed = dicom_events(stack, "receipts", "--json")
    assert listed.returncode == 0, listed.stderr
    receipts = json.loads(listed.stdout)["receipts"]
    assert receipts and receipts[0]["failedObjects"] == 1
    event_id = receipts[0]["eventId"]

    one = dicom_events(stack, "receipts", event_id, "--json")
    assert one.returncode == 0, one.stderr
    broken = f"gs://{stack.config.upload_bucket}/ward/broken.dcm"
    assert json.loads(one.stdout)["failedObjects"] == [broken]

    status = json.loads(dicom_events(stack, "status", "--json").stdout)
    assert event_id in [r["eventId"] for r in status["receipts"]]

    redrive = dicom_events(stack, "redrive", event_id, "--json", "--timeout", TIMEOUT)
    assert redrive.returncode == 1, redrive.stdout + redrive.stderr  # the file is still broken
    redriven = json.loads(redrive.stdout)
    assert (redriven["kind"], redriven["redriveOf"]) == ("redrive", receipts[0]["operation"])
    assert redriven["failedObjects"] == [broken]
    # Without --json the held-back file is named with what to do.
    again = dicom_events(stack, "redrive", event_id, "--timeout", TIMEOUT)
    assert again.returncode == 1 and f"{broken}  (NOT_DICOM: " in again.stdout, again.stdout

    missing = dicom_events(stack, "receipts", "op-0")
    assert missing.returncode == 1 and "no receipt for operation 0" in missing.stderr


def test_pydicom_warnings_stay_out_of_the_output(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    # A UID pydicom warns about when ingest reads it back (the warning would print the value).
    (folder / "IM1.dcm").write_bytes(dicom_factory.instance(study="1.2.3.4x"))
    done = dicom_events(stack, "ingest", str(folder), "--prefix", "odd", "--json", "--timeout", TIMEOUT)
    assert "1.2.3.4x" not in done.stderr and "UserWarning" not in done.stderr, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["uploaded"] == 1


def test_an_unsafe_prefix_uploads_nothing(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "IM1.dcm").write_bytes(dicom_factory.instance())
    done = dicom_events(stack, "ingest", str(tmp_path), "--prefix", "../x")
    assert done.returncode == 2 and "'..' segment" in done.stderr
    with LocalCloud(stack.endpoints) as cloud:
        assert not [b.name for b in cloud.storage.list_blobs(stack.config.upload_bucket) if ".." in b.name]


def test_the_console_script_runs_from_anywhere(stack: Stack, tmp_path: Path) -> None:
    done = subprocess.run([str(DICOM_EVENTS), "status", "--local", "--state-dir", str(stack.state_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"dicom store {stack.endpoints['dicomStore']}"


def test_events_since_then_follow_prints_the_kept_then_the_new_each_once(
        stack: Stack, imported: synthetic.SyntheticSet) -> None:
    study = imported.studies[0].uid
    bucket = stack.config.export_bucket
    _export(stack, "--resources", f"/studies/{study}", "--request-id", "op-cli-kept",
            "--destination", f"gs://{bucket}/op/kept")
    follower = subprocess.Popen([str(DICOM_EVENTS), "events", "--since", "1h", "--follow", "--json", "--local",
                                 "--state-dir", str(stack.state_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    printed: list[dict[str, Any]] = []

    def read_until(request_id: str) -> None:
        assert follower.stdout is not None
        while not any(e.get("requestId") == request_id for e in printed):  # the test's timeout bounds this
            line = follower.stdout.readline()
            assert line, "events --follow ended by itself"
            printed.append(json.loads(line))

    try:
        read_until("op-cli-kept")  # from the state bucket's records
        _export(stack, "--resources", f"/studies/{study}", "--request-id", "op-cli-new",
                "--destination", f"gs://{bucket}/op/new")
        read_until("op-cli-new")  # from the private subscription
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    ids = [e["eventId"] for e in printed]
    assert len(ids) == len(set(ids)), "an event both kept and delivered is printed once"
    kept = [e["endTime"] for e in printed[:[e.get("requestId") for e in printed].index("op-cli-kept") + 1]]
    assert kept == sorted(kept), "the kept events come oldest first"
