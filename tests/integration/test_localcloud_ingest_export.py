"""`python -m localcloud ingest | export | status` as a user runs them, against a running stack with
the product's three functions (real functions-framework processes, the router, the poller)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from localcloud import synthetic
from localcloud.components import REPO_ROOT
from localcloud.config import LocalConfig
from localcloud.connect import LocalCloud
from localcloud.stack import Stack
from tests import dicom_factory

INGEST_KEYS = {"uploaded", "imported", "instances", "failed", "failures", "undecided", "pending", "skipped",
               "operations"}
STATUS_KEYS = {"project", "dicomStore", "functions", "operations", "jobs", "windows", "receipts", "events", "signals"}
TIMEOUT = "120"  # the commands' own failure deadline; they return as soon as the work is done


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = LocalConfig(poll_interval_seconds=0.5, debounce_seconds=1.0, settle_seconds=0.5,
                         claim_lease_seconds=6.0)
    with Stack.start(tmp_path_factory.mktemp("cli-stack") / "state", config=config) as running:
        yield running


def localcloud(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localcloud", *args, "--state-dir", str(stack.state_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def imported(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticSet:
    """A small synthetic set, ingested through the CLI (human output, not a terminal)."""
    studies = synthetic.generate(tmp_path_factory.mktemp("synthetic") / "set", seed=7, patients=2,
                                 studies_per_patient=(1, 1), instances_per_series=(2, 3))
    done = localcloud(stack, "ingest", str(studies.root), "--prefix", "synthetic", "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    count = len(studies.files)
    assert f"upload      {count + len(studies.studies)}/{count + len(studies.studies)} files" in lines
    assert f"imported    {count} instances stored" in lines
    assert any(line.startswith("event       import SUCCEEDED") for line in lines)
    assert lines[-1].startswith("done        all imported in ")
    return studies


def _written(stack: Stack, prefix: str) -> list[str]:
    client = LocalCloud(stack.endpoints).storage
    return [b.name for b in client.list_blobs(stack.config.export_bucket, prefix=prefix + "/")]


def test_ingest_reports_failed_and_skipped_objects(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    (folder / "series").mkdir(parents=True)
    for index, data in enumerate(dicom_factory.study(1, 2)):
        (folder / "series" / f"IM{index}.dcm").write_bytes(data)
    (folder / "series" / "broken.dcm").write_bytes(b"this is not DICOM at all")
    (folder / "notes.json").write_text('{"note": "a sidecar"}')

    done = localcloud(stack, "ingest", str(folder), "--prefix", "mixed", "--json", "--timeout", TIMEOUT)

    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)  # stdout holds the JSON and nothing else
    assert set(result) == INGEST_KEYS
    bucket = f"gs://{stack.config.upload_bucket}"
    assert result["uploaded"] == 4
    assert result["imported"] == 2
    assert result["failed"] == [f"{bucket}/mixed/series/broken.dcm"]
    assert [f["reason"] for f in result["failures"]] == ["NOT_DICOM"]
    assert result["skipped"] == [f"{bucket}/mixed/notes.json"]
    operations: list[dict[str, Any]] = result["operations"]
    assert operations and {e["kind"] for e in operations} == {"import"}
    assert {e["dicomStore"] for e in operations} == {stack.endpoints["dicomStore"]}
    assert sum(e["counters"]["success"] for e in operations) >= 2
    assert any(f"{bucket}/mixed/series/broken.dcm" in e.get("failedObjects", []) for e in operations)


def test_ingest_with_a_folder_name_prefix_by_default(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "by-default"
    folder.mkdir()
    (folder / "IM.dcm").write_bytes(dicom_factory.instance())
    done = localcloud(stack, "ingest", str(folder), "--json", "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["imported"] == 1
    client = LocalCloud(stack.endpoints).storage
    names = [b.name for b in client.list_blobs(stack.config.upload_bucket, prefix="by-default/")]
    assert names == ["by-default/IM.dcm"]


def test_export_by_resources(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    study = imported.studies[0]
    destination = f"gs://{stack.config.export_bucket}/cli/resources"
    done = localcloud(stack, "export", "--resources", f"/studies/{study.uid}", "--destination", destination,
                      "--mime-type", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                      "--request-id", "cli-test-resources", "--json", "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    event = json.loads(done.stdout)
    assert (event["kind"], event["state"], event["requestId"]) == ("export", "SUCCEEDED", "cli-test-resources")
    assert event["destination"] == destination
    assert event["counters"]["success"] == study.instance_count
    written = _written(stack, "cli/resources")
    assert len(written) == study.instance_count and all(n.endswith(".dcm") for n in written)

    # The same requestId again starts no second export: the earlier event is reported.
    again = localcloud(stack, "export", "--resources", f"/studies/{study.uid}", "--destination", destination,
                       "--request-id", "cli-test-resources", "--json", "--timeout", TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["eventId"] == event["eventId"]
    assert "was used before" in again.stderr


def test_export_by_query_as_png(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    patient = imported.studies[-1].patient_id
    mine = [s for s in imported.studies if s.patient_id == patient]
    destination = f"gs://{stack.config.export_bucket}/cli/query"
    done = localcloud(stack, "export", "--query", f"PatientID={patient}", "--destination", destination,
                      "--mime-type", "image/png", "--json", "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    event = json.loads(done.stdout)
    assert event["state"] == "SUCCEEDED" and event["requestId"].startswith("cli-")
    assert event["counters"]["success"] == sum(s.instance_count for s in mine)
    assert all(n.endswith(".png") for n in _written(stack, "cli/query"))


def test_export_human_output(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    series = imported.studies[0].series[0]
    done = localcloud(stack, "export", "--resources", f"/studies/{imported.studies[0].uid}/series/{series.uid}",
                      "--destination", f"gs://{stack.config.export_bucket}/cli/human", "--timeout", TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("export      request cli-")
    assert lines[-1].startswith("event       export SUCCEEDED ")


def test_export_outside_the_allowlist_is_rejected(stack: Stack) -> None:
    done = localcloud(stack, "export", "--resources", "/studies/1.2.3", "--destination", "gs://not-allowed/x",
                      "--json", "--timeout", TIMEOUT)
    assert done.returncode == 1
    event = json.loads(done.stdout)
    assert (event["kind"], event["state"]) == ("export", "REJECTED")
    assert "not inside an allowed prefix" in event["reason"]


def test_status(stack: Stack, imported: synthetic.SyntheticSet) -> None:
    done = localcloud(stack, "status", "--json", "--events", "3")
    assert done.returncode == 0, done.stderr
    current = json.loads(done.stdout)
    assert set(current) == STATUS_KEYS
    assert current["dicomStore"] == stack.endpoints["dicomStore"]
    assert current["functions"] == {role: {"instances": 1, "restarts": 0} for role in ("import", "export", "poll")}
    assert all(isinstance(current[key], list) for key in ("operations", "jobs", "windows", "events"))
    assert 1 <= len(current["events"]) <= 3
    # Operations' events, and the REJECTED ones the export function keeps too.
    assert all(e["eventId"].startswith(("op-", "rejected-")) for e in current["events"])
    ends = [e["endTime"] for e in current["events"]]
    assert ends == sorted(ends, reverse=True)  # newest first
    for op in current["operations"]:
        assert set(op) == {"name", "kind", "requestId", "startedAt"}

    signals = current["signals"]
    assert signals["lastHour"]["import"]["SUCCEEDED"] >= 1
    assert isinstance(signals["queuedJobs"], int)

    human = localcloud(stack, "status")
    assert human.returncode == 0
    assert human.stdout.splitlines()[0] == f"dicom store {stack.endpoints['dicomStore']}"
    assert any(line.startswith("last hour") and "import SUCCEEDED" in line for line in human.stdout.splitlines())


def test_status_counts_dead_letters_and_leaves_them_in_place(stack: Stack) -> None:
    with LocalCloud(stack.endpoints) as cloud:
        before = cloud.backlog(stack.endpoints["subscriptions"]["exportDeadLetter"])
        cloud.publish(stack.endpoints["topics"]["exportDeadLetter"], b'{"requestId": "dead-1"}')
    for _ in range(2):  # counting twice sees the same message: status hands it back
        done = localcloud(stack, "status", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["signals"]["deadLetters"] == before + 1


def test_redrive_of_an_import_the_api_failed(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "redrive"
    folder.mkdir()
    for index, data in enumerate(dicom_factory.study(1, 2)):
        (folder / f"IM{index}.dcm").write_bytes(data)
    faults = f"{stack.endpoints['healthcare']}/_emulator/faults/operations"
    fault = {"count": 1, "code": 14, "message": "injected: unavailable"}
    requests.post(faults, json=fault, timeout=10).raise_for_status()
    done = localcloud(stack, "ingest", str(folder), "--prefix", "redrive", "--json", "--timeout", TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [e for e in json.loads(done.stdout)["operations"] if e["state"] == "FAILED"]
    assert len(failed) == 1, done.stdout  # the fault hit exactly one operation
    event = failed[0]

    redrive = localcloud(stack, "redrive", event["eventId"], "--json", "--timeout", TIMEOUT)
    assert redrive.returncode == 0, redrive.stdout + redrive.stderr
    redriven = json.loads(redrive.stdout)
    assert (redriven["kind"], redriven["state"], redriven["redriveOf"]) == ("redrive", "SUCCEEDED", event["operation"])
    assert redriven["counters"]["success"] == event["failedObjectsTotal"]

    again = localcloud(stack, "redrive", event["eventId"], "--timeout", TIMEOUT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to redrive" in again.stdout


def _store_sops(stack: Stack) -> set[str]:
    url = f"{stack.endpoints['healthcare']}/v1/{stack.endpoints['dicomStore']}/dicomWeb/instances"
    response = requests.get(url, params={"limit": "5000"}, timeout=10)
    response.raise_for_status()
    return {i["00080018"]["Value"][0] for i in (response.json() if response.content.strip() else [])}


def test_ingest_totals_match_the_store_and_name_uid_conflicts(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "conflicts"
    folder.mkdir()
    sop = "1.2.826.0.1.3680043.8.498.99.1"
    (folder / "a.dcm").write_bytes(dicom_factory.instance(study="1.2.3.77", series="1.2.3.77.1", sop=sop,
                                                          patient_id="A"))
    (folder / "b.dcm").write_bytes(dicom_factory.instance(study="1.2.3.77", series="1.2.3.77.1", sop=sop,
                                                          patient_id="B"))  # same UIDs, other content
    same = dicom_factory.instance()
    (folder / "c.dcm").write_bytes(same)
    (folder / "c-copy.dcm").write_bytes(same)  # identical: both stored as themselves, one instance
    before = _store_sops(stack)
    done = localcloud(stack, "ingest", str(folder), "--prefix", "conflicts", "--json", "--timeout", TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads(done.stdout)
    added = _store_sops(stack) - before
    assert result["imported"] == 3 and result["instances"] == len(added) == 2
    [failure] = result["failures"]
    assert failure["reason"] == "UID_CONFLICT" and failure["object"] in result["failed"]
    assert "delete the stored instance" in failure["message"]
    assert result["undecided"] == [] and result["pending"] == []
    assert result["uploaded"] == result["imported"] + len(result["failed"]) + len(result["skipped"])


def test_ingest_timeout_reports_pending_objects_with_its_own_exit_code(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "IM.dcm").write_bytes(dicom_factory.instance())
    config = f"{stack.endpoints['healthcare']}/_emulator/config"
    requests.post(config, json={"operationDelaySeconds": 600}, timeout=10).raise_for_status()
    try:
        done = localcloud(stack, "ingest", str(folder), "--prefix", "slow", "--json", "--timeout", "3")
    finally:
        requests.post(config, json={"operationDelaySeconds": 0}, timeout=10).raise_for_status()
        _release_running(stack)
    assert done.returncode == 3, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["pending"] == [f"gs://{stack.config.upload_bucket}/slow/IM.dcm"]
    assert result["failed"] == [] and result["imported"] == 0


def _release_running(stack: Stack) -> None:
    dataset = stack.endpoints["dicomStore"].rsplit("/dicomStores/", 1)[0]
    base = stack.endpoints["healthcare"]
    listed = requests.get(f"{base}/v1/{dataset}/operations", timeout=10).json().get("operations", [])
    for op in listed:
        if not op.get("done"):
            requests.post(f"{base}/_emulator/operations/{op['name'].rsplit('/', 1)[1]}:release", timeout=10)


def test_strict_fails_when_nothing_matched(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "sidecars"
    folder.mkdir()
    (folder / "notes.json").write_text("{}")
    loose = localcloud(stack, "ingest", str(folder), "--prefix", "sidecars", "--json", "--timeout", TIMEOUT)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert "nothing to import" in loose.stderr
    strict = localcloud(stack, "ingest", str(folder), "--prefix", "sidecars", "--strict", "--timeout", TIMEOUT)
    assert strict.returncode == 4, strict.stdout + strict.stderr

    typo = ("export", "--resources", "/studies/1.2.3.4.5.6.7.8.99999", "--destination",
            f"gs://{stack.config.export_bucket}/typo", "--json", "--timeout", TIMEOUT)
    loose = localcloud(stack, *typo)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert json.loads(loose.stdout)["counters"]["success"] == 0
    assert "matched no instance" in loose.stderr
    strict = localcloud(stack, *typo, "--strict", "--request-id", "typo-strict")
    assert strict.returncode == 4, strict.stdout + strict.stderr
