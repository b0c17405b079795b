"""Every file accounted for: pydicom's whole test-file set through the pipeline on the emulators.

Every file `pydicom.data.get_testdata_files()` lists (the deliberately broken ones, the copies of
one image in other encodings that share its UIDs, and the files that are not DICOM at all) is
uploaded and imported by the import function and the poller. Then each file is either stored as
itself (the store's instance with its UIDs has its very bytes) or named in a completion event
and its receipt with the right reason, each event's object counts add up and agree with the
API's counters, and a redrive after fixing two files stores them while the UID conflicts it
cannot fix stay named with what to do.

`ACCOUNTING_TABLE=path` writes the table of files and outcomes (markdown) to `path`.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_files
from pydicom.uid import generate_uid

from functions.exports.redrive import Redriver
from functions.imports.failed_objects import attributes_readable, read_uids
from tests import dicom_factory
from tests.integration.harness import Deployment, clear_faults, deliver_all, distinct, pubsub_message

TEST_FILES = sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())
ROOT = Path(pydicom.data.__file__).parent / "test_files"
PREFIX = "pydicom/"


@pytest.fixture
def d(healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> Iterator[Deployment]:
    # Every name is imported (pydicom's files have many suffixes), every failure is listed.
    d = Deployment.create(healthcare_emulator, import_name_pattern=re.compile("."), failed_objects_cap=1000)
    yield d
    clear_faults(d)


def _name(path: Path) -> str:
    return PREFIX + path.relative_to(ROOT).as_posix()


def _stored_bytes(d: Deployment, uids: tuple[str, str, str]) -> bytes | None:
    study, series, sop = uids
    url = (f"{d.healthcare_url}/v1/{d.settings.dicom_store}/dicomWeb/studies/{study}/series/{series}"
           f"/instances/{sop}")
    response = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.content


def _receipts(d: Deployment) -> list[dict[str, Any]]:
    bucket = d.storage_client.bucket(d.settings.state_bucket)
    return [json.loads(bucket.blob(name).download_as_bytes()) for name in d.state_objects("receipts/")]


def _manifests(d: Deployment) -> list[dict[str, Any]]:
    bucket = d.storage_client.bucket(d.settings.state_bucket)
    return [json.loads(bucket.blob(name).download_as_bytes()) for name in d.state_objects("manifests/")]


def _import(d: Deployment, files: dict[str, bytes]) -> list[dict[str, Any]]:
    deliver_all(d.handler(), [d.upload(name, data) for name, data in files.items()])
    return [e for e in distinct(d.completions_until_quiet(timeout=240)) if e["kind"] in ("import", "redrive")]


def _check_counts(events: list[dict[str, Any]]) -> None:
    for event in events:
        objects = event["objects"]
        event = {k: event[k] for k in ("eventId", "state", "counters", "objects", "failures", "failedObjects",
                                        "failedObjectsTotal", "undecidedObjects", "undecidedObjectsTotal", "error")
                 if k in event}
        assert objects["total"] == objects["landed"] + objects["failed"] + objects["undecided"], event
        assert objects["failed"] == event.get("failedObjectsTotal", 0), event
        assert objects["undecided"] == event.get("undecidedObjectsTotal", 0), event
        assert [f["object"] for f in event.get("failures", [])] == event.get("failedObjects", []), event
        assert objects["countersAgree"], event
        assert objects["landed"] == event["counters"]["success"], event
        assert objects["failed"] - objects.get("heldBack", 0) == event["counters"]["failure"], event


def test_every_pydicom_test_file_is_stored_as_itself_or_named_with_its_reason(d: Deployment) -> None:
    files = {_name(path): path.read_bytes() for path in TEST_FILES}
    assert len(files) == len(TEST_FILES) > 150
    events = _import(d, files)
    _check_counts(events)
    assert sum(e["objects"]["total"] for e in events) == len(files)

    failures = {f["object"]: f for e in events for f in e.get("failures", [])}
    undecided = [u for e in events for u in e.get("undecidedObjects", [])]
    assert undecided == []
    # The receipts name the same objects with the same reasons.
    assert {f["object"]: f for r in _receipts(d) for f in r["failures"]} == failures

    outcomes: dict[str, tuple[str, str]] = {}
    landed_uids: set[tuple[str, str, str]] = set()
    for name, data in files.items():
        uri = f"gs://{d.upload_bucket}/{name}"
        uids = read_uids(data)
        stored = _stored_bytes(d, uids) if uids else None
        failure = failures.get(uri)
        if failure is None:
            # Not named: it must be in the store as itself.
            assert uids is not None and stored == data, f"{name} is counted landed but not stored as itself"
            landed_uids.add(uids)
            outcomes[name] = ("stored", "")
            continue
        reason = failure["reason"]
        outcomes[name] = ("failed", reason)
        assert stored != data, f"{name} is stored as itself but named {reason}"
        if reason == "NOT_DICOM":
            assert data[128:132] != b"DICM", name
        elif reason == "UID_CONFLICT":
            assert uids is not None and stored is not None and stored != data, name
        elif reason == "UNPARSEABLE":
            assert uids is None or not attributes_readable(data), name
        else:
            assert reason == "NOT_STORED" and stored is None, (name, reason)
    # The store holds exactly the landed files' instances: nothing else came in.
    assert {i["00080018"]["Value"][0] for i in d.stored_instances()} == {u[2] for u in landed_uids}
    reasons = Counter(reason for _, reason in outcomes.values())
    # The three other encodings of MR_small share its UIDs; pydicom's files hold a few such families.
    assert reasons["UID_CONFLICT"] >= 3 and reasons["NOT_DICOM"] >= 10, reasons
    failures_total = sum(e["counters"]["failure"] for e in events)
    assert failures_total == len(failures)
    # The emulator's per-file error entries (Google's ImportDicomLogEntry) name the same objects.
    staged = {entry.get("staged") or entry["uri"]: entry["uri"] for manifest in _manifests(d)
              for entry in manifest.get("objects", [])}
    for event in events:
        op_id = event["operation"].rsplit("/", 1)[1]
        entries = d.emulator(f"operations/{op_id}/logs")["entries"]
        logged = {staged.get(e["jsonPayload"]["source"], e["jsonPayload"]["source"]) for e in entries}
        assert logged == set(event.get("failedObjects", [])), event["eventId"]
    if os.environ.get("ACCOUNTING_TABLE"):
        _write_table(Path(os.environ["ACCOUNTING_TABLE"]), outcomes, failures)

    # Fix two files: a non-DICOM one becomes DICOM, a UID conflict gets new UIDs. Redrive every receipt.
    not_dicom = next(f["object"] for f in failures.values() if f["reason"] == "NOT_DICOM")
    conflict = next(f["object"] for f in failures.values() if f["reason"] == "UID_CONFLICT")
    bucket = d.storage_client.bucket(d.upload_bucket)
    bucket.blob(not_dicom.split("/", 3)[3]).upload_from_string(dicom_factory.instance())
    renamed = pydicom.dcmread(io.BytesIO(files[conflict.split("/", 3)[3]]))
    renamed.SOPInstanceUID = renamed.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    fixed = io.BytesIO()
    renamed.save_as(fixed, enforce_file_format=True)
    bucket.blob(conflict.split("/", 3)[3]).upload_from_string(fixed.getvalue())

    redriver = Redriver.from_deps(d.deps)
    receipts = [e for e in events if e.get("failedObjects")]
    actions = [redriver.handle(pubsub_message(
        f'{{"action": "redrive", "receipt": "{e["eventId"]}", "requestId": "fix-{n}"}}'.encode())).action
        for n, e in enumerate(receipts)]
    assert set(actions) <= {"started", "queued", "nothing"}, actions
    redriven = [e for e in distinct(d.completions_until_quiet(timeout=240)) if e["kind"] == "redrive"]
    assert len(redriven) == len(receipts)
    started = [e for e in redriven if "operation" in e]
    _check_counts(started)
    assert _stored_bytes(d, read_uids(_current_bytes(d, not_dicom))) is not None  # type: ignore[arg-type]
    assert _stored_bytes(d, read_uids(fixed.getvalue())) == fixed.getvalue()  # type: ignore[arg-type]
    # Conflicts that nobody fixed are not imported again: each stays named with what to do.
    for receipt in receipts:
        [answer] = [e for e in redriven if e["redriveOf"] == receipt["operation"]]
        kept = {f["object"] for f in receipt["failures"] if f["reason"] == "UID_CONFLICT" and f["object"] != conflict}
        if "operation" in answer:
            named = {f["object"]: f for f in answer.get("failures", [])}
            assert all(named[uri]["reason"] == "UID_CONFLICT" for uri in kept), answer
            assert all("delete the stored instance" in named[uri]["message"] for uri in kept)
        elif kept:
            assert f"{len(kept)} held back as UID_CONFLICT" in answer["reason"], answer
            assert "delete the stored instance" in answer["reason"]
    held = ("UID_CONFLICT", "NOT_DICOM", "UNPARSEABLE")
    assert sum(e["objects"].get("heldBack", 0) for e in started) == sum(
        1 for e in started for f in e.get("failures", []) if f["reason"] in held)


def _current_bytes(d: Deployment, uri: str) -> bytes:
    return d.storage_client.bucket(d.upload_bucket).blob(uri.split("/", 3)[3]).download_as_bytes()


def _write_table(path: Path, outcomes: dict[str, tuple[str, str]], failures: dict[str, dict[str, str]]) -> None:
    lines = ["| file | outcome | reason |", "|---|---|---|"]
    for name, (outcome, reason) in sorted(outcomes.items()):
        lines.append(f"| {name.removeprefix(PREFIX)} | {outcome} | {reason} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
