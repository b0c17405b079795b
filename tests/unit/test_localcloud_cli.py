"""CLI behaviour that needs no running stack: argument parsing, request building, rendering."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from localcloud import demo, export_cli, ingest, status
from localcloud.cli import build_parser, main
from localcloud.config import LocalConfig
from localcloud.connect import LocalCloud
from localcloud.ingest import IngestResult, UploadedObject

STORE = "projects/local-project/locations/us-central1/datasets/local-dataset/dicomStores/local-store"
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"


def _cloud() -> LocalCloud:
    return LocalCloud({
        "storage": "http://127.0.0.1:1", "pubsub": "127.0.0.1:2", "healthcare": "http://127.0.0.1:3",
        "bigquery": "http://127.0.0.1:4",
        "project": "local-project", "dicomStore": STORE,
        "buckets": {"upload": "dicom-upload", "export": "dicom-export", "state": "dicom-state"},
    })


# -- without a running stack ----------------------------------------------------------------------

def test_env_without_a_running_stack_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["env", "--state-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "start one with: python -m localcloud up" in captured.err


@pytest.mark.parametrize("args", [
    ["ingest", "."],
    ["export", "--resources", f"/studies/{STUDY}", "--destination", "gs://dicom-export/x"],
    ["status"],
    ["status", "--json"],
    ["redrive", "op-123"],
])
def test_commands_without_a_running_stack_say_how_to_start_one(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--state-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no local cloud is running for {tmp_path}; start one with: python -m localcloud up" in captured.err


def test_a_redrive_of_something_that_names_no_operation_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["redrive", "a/b/c", "--state-dir", str(tmp_path)]) == 2
    assert "invalid redrive request: receipt 'a/b/c' names no operation id" in capsys.readouterr().err


def test_ingest_of_a_missing_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(tmp_path / "nope"), "--state-dir", str(tmp_path)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_an_invalid_export_request_is_refused_before_looking_for_the_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "--resources", "/studies/1.02", "--destination", "gs://dicom-export/x",
                 "--state-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid export request" in err and "no local cloud" not in err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2


# -- argument parsing -----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["export", "--destination", "gs://b/x"],  # no selector
    ["export", "--resources", "/studies/1", "--query", "PatientID=P", "--destination", "gs://b/x"],
    ["export", "--resources", "/studies/1"],  # no destination
    ["ingest", ".", "--timeout", "0"],
    ["ingest", ".", "--timeout", "soon"],
])
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(args)
    assert excinfo.value.code == 2


def test_export_arguments() -> None:
    args = build_parser().parse_args([
        "export", "--query", "PatientID=P1", "StudyDate=20240101-20241231", "--destination", "gs://b/p",
        "--mime-type", "image/png", "--request-id", "r-1", "--timeout", "5", "--json"])
    assert args.query == ["PatientID=P1", "StudyDate=20240101-20241231"]
    assert (args.destination, args.mime_type, args.request_id, args.timeout, args.json) == (
        "gs://b/p", "image/png", "r-1", 5.0, True)
    assert args.resources is None and args.filter_uri is None
    assert args.state_dir == Path(".localcloud")


def test_up_streams_to_bigquery_unless_told_not_to() -> None:
    assert build_parser().parse_args(["up"]).no_stream is False
    assert build_parser().parse_args(["up", "--no-stream"]).no_stream is True


def test_export_takes_a_sql_selector() -> None:
    args = build_parser().parse_args(["export", "--sql", "SELECT 1", "--destination", "gs://b/p", "--json"])
    assert (args.sql, args.resources, args.query) == ("SELECT 1", None, None)


def test_storage_class_arguments_take_any_selector_or_none() -> None:
    args = build_parser().parse_args(["storage-class", "--class", "ARCHIVE", "--resources", "/studies/1"])
    assert (args.storage_class, args.resources, args.json) == ("ARCHIVE", ["/studies/1"], False)
    args = build_parser().parse_args(["storage-class", "--class", "COLDLINE", "--sql", "SELECT 1", "--json"])
    assert (args.storage_class, args.sql, args.json) == ("COLDLINE", "SELECT 1", True)
    assert build_parser().parse_args(["storage-class", "--class", "NEARLINE"]).resources is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["storage-class", "--class", "FREEZER"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["storage-class", "--resources", "/studies/1"])


def test_build_request_with_sql_and_for_a_storage_class() -> None:
    body = export_cli.build_request(destination="gs://dicom-export/a", sql="SELECT 1", request_id="s")
    assert body == {"requestId": "s", "destination": "gs://dicom-export/a", "sql": "SELECT 1"}
    body = export_cli.build_request(resources=["/studies/1/series/2"], storage_class="ARCHIVE", request_id="c")
    assert body == {"requestId": "c", "action": "setStorageClass", "storageClass": "ARCHIVE",
                    "resources": ["/studies/1/series/2"]}
    with pytest.raises(export_cli.RequestError, match="sql is empty"):
        export_cli.build_request(destination="gs://dicom-export/a", sql="  ")
    with pytest.raises(export_cli.RequestError, match="one of"):
        export_cli.build_request(destination="gs://dicom-export/a", sql="SELECT 1", resources=["/studies/1"])


def test_ingest_arguments_default_to_the_folder_name_as_prefix() -> None:
    args = build_parser().parse_args(["ingest", "some/dir"])
    assert (args.dir, args.prefix, args.timeout, args.json) == (Path("some/dir"), None, 120.0, False)


# -- export requests ------------------------------------------------------------------------------

def test_build_request_with_resources_generates_a_request_id() -> None:
    body = export_cli.build_request(destination="gs://dicom-export/a", resources=[f"/studies/{STUDY}"],
                                    mime_type="application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
    assert re.fullmatch(r"cli-[0-9a-f]{32}", body.pop("requestId"))
    assert body == {"destination": "gs://dicom-export/a", "resources": [f"/studies/{STUDY}"],
                    "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}


def test_build_request_with_a_query_and_a_request_id() -> None:
    body = export_cli.build_request(destination="gs://dicom-export/a", query=["PatientID=P=1", "ModalitiesInStudy=CT"],
                                    request_id="mine-1")
    assert body == {"requestId": "mine-1", "destination": "gs://dicom-export/a",
                    "query": {"PatientID": "P=1", "ModalitiesInStudy": "CT"}}


def test_build_request_with_a_filter_uri() -> None:
    body = export_cli.build_request(destination="gs://dicom-export", filter_uri="gs://bkt/f.txt", request_id="x")
    assert body == {"requestId": "x", "destination": "gs://dicom-export", "filterUri": "gs://bkt/f.txt"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"query": ["PatientID"]}, "KEY=VALUE"),
    ({"query": ["PatientID=a", "PatientID=b"]}, "twice"),
    ({"query": ["Color=red"]}, "invalid export request"),
    ({"resources": ["/studies/1.2/series"]}, "invalid export request"),
    ({"resources": ["/studies/1"], "mime_type": "image/gif"}, "not supported"),
    ({"resources": ["/studies/1"], "request_id": "has space"}, "requestId"),
    ({"resources": ["/studies/1"], "query": ["PatientID=P"]}, "one of"),
])
def test_build_request_refuses_what_the_function_would_reject(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(export_cli.RequestError, match=message):
        export_cli.build_request(destination="gs://dicom-export/a", **kwargs)


def test_the_allowlist_is_left_to_the_function() -> None:
    body = export_cli.build_request(destination="gs://somewhere-else/x", resources=["/studies/1"], request_id="r")
    assert body["destination"] == "gs://somewhere-else/x"


def test_export_result_is_ok_only_when_succeeded() -> None:
    request = {"requestId": "r"}
    assert export_cli.ExportResult(request, {"state": "SUCCEEDED"}, 1.0).ok
    for state in ("SUCCEEDED_WITH_ERRORS", "FAILED", "CANCELLED", "REJECTED"):
        assert not export_cli.ExportResult(request, {"state": state}, 1.0).ok
    timed_out = export_cli.ExportResult(request, None, 9.0)
    assert (timed_out.ok, timed_out.state) == (False, "TIMEOUT")
    assert "no completion event for r after 9 s" in export_cli.render_result(timed_out)[0]


# -- ingest ---------------------------------------------------------------------------------------

def test_classify_uses_the_import_functions_rule() -> None:
    settings = _cloud().import_settings()
    assert ingest.classify("dicom-upload", "a/IM1.dcm", 1, 10, settings) is None
    assert ingest.classify("dicom-upload", "a/IM1.DCM", 1, 10, settings) is None
    assert "PATTERN" in str(ingest.classify("dicom-upload", "a/study.json", 1, 10, settings))
    assert "zero-byte" in str(ingest.classify("dicom-upload", "a/empty.dcm", 1, 0, settings))


def test_classify_honours_the_configured_prefixes() -> None:
    config = LocalConfig(extra_function_env={"DICOM_IMPORT_PREFIXES": "in/"})
    settings = _cloud().import_settings(config)
    assert ingest.classify("dicom-upload", "in/IM1.dcm", 1, 10, settings) is None
    assert "prefixes" in str(ingest.classify("dicom-upload", "out/IM1.dcm", 1, 10, settings))


def test_object_names_and_local_files(tmp_path: Path) -> None:
    (tmp_path / "s" / "x").mkdir(parents=True)
    (tmp_path / "s" / "x" / "b.dcm").write_bytes(b"1")
    (tmp_path / "s" / "a.json").write_bytes(b"2")
    assert [rel for _, rel in ingest.local_files(tmp_path)] == ["s/a.json", "s/x/b.dcm"]
    assert ingest.object_name("/up/", "s/a.json") == "up/s/a.json"
    assert ingest.object_name("", "s/a.json") == "s/a.json"


def _obj(name: str) -> UploadedObject:
    return UploadedObject(path=Path(name), name=name, bucket="dicom-upload", generation=1, size=1,
                          skip_reason=None, uids=None)


@pytest.mark.parametrize(("event", "belongs"), [
    ({"kind": "import", "dicomStore": STORE, "source": "gs://dicom-upload/up/**.dcm"}, True),
    ({"kind": "import", "dicomStore": STORE, "source": "gs://dicom-upload/up/a/IM?.dcm"}, True),
    ({"kind": "import", "dicomStore": STORE, "source": "gs://dicom-upload/other/**"}, False),
    ({"kind": "import", "dicomStore": STORE, "source": "gs://dicom-upload/other/**",
      "failedObjects": ["gs://dicom-upload/up/a/IM1.dcm"]}, True),
    ({"kind": "import", "dicomStore": STORE, "source": "gs://dicom-state/staging/b/**"}, True),
    ({"kind": "import", "dicomStore": STORE + "x", "source": "gs://dicom-upload/up/**.dcm"}, False),
    ({"kind": "export", "dicomStore": STORE, "destination": "gs://dicom-upload/up"}, False),
])
def test_which_events_belong_to_an_ingest(event: dict[str, Any], belongs: bool) -> None:
    objects = [_obj("up/a/IM1.dcm"), _obj("up/b/IM2.dcm")]
    assert ingest.event_belongs(event, STORE, objects, {"dicom-state"}) is belongs


def test_ingest_json_has_exactly_the_contract_keys() -> None:
    result = IngestResult(uploaded=3, imported=1, failed=["gs://b/bad.dcm"], skipped=["gs://b/s.json"],
                          operations=[{"eventId": "op-1"}], timed_out=False, other_events=4)
    assert result.to_json() == {"uploaded": 3, "imported": 1, "instances": 0, "failed": ["gs://b/bad.dcm"],
                                "failures": [], "undecided": [], "pending": [],
                                "skipped": ["gs://b/s.json"], "operations": [{"eventId": "op-1"}]}
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    assert not result.ok
    assert IngestResult(1, 1, [], [], []).ok
    assert not IngestResult(1, 1, [], [], [], timed_out=True).ok


def test_ingest_exit_codes() -> None:
    assert ingest.exit_code(IngestResult(1, 1, [], [], [])) == 0
    assert ingest.exit_code(IngestResult(2, 1, ["gs://b/x"], [], [])) == 1
    undecided = IngestResult(1, 0, [], [], [], undecided=[{"object": "gs://b/x", "reason": "", "message": ""}])
    assert ingest.exit_code(undecided) == 1
    pending = IngestResult(2, 1, [], [], [], timed_out=True, pending=["gs://b/y"])
    assert ingest.exit_code(pending) == 3 and not pending.ok
    # A failure outranks the timeout: it is certain, the pending objects are not.
    assert ingest.exit_code(IngestResult(3, 1, ["gs://b/x"], [], [], timed_out=True, pending=["gs://b/y"])) == 1
    all_skipped = IngestResult(2, 0, [], ["gs://b/a.json", "gs://b/b.json"], [])
    assert ingest.exit_code(all_skipped) == 0 and ingest.exit_code(all_skipped, strict=True) == 4
    assert ingest.warnings_for(all_skipped) == ["warning: nothing to import: all 2 files were skipped "
                                                "(ignored by design)"]
    assert ingest.exit_code(IngestResult(0, 0, [], [], []), strict=True) == 4
    assert ingest.warnings_for(IngestResult(1, 1, [], [], [])) == []


def test_export_exit_codes_and_the_warning_for_a_selection_that_matched_nothing() -> None:
    request = {"requestId": "r"}
    nothing = export_cli.ExportResult(request, {"state": "SUCCEEDED", "counters": {"success": 0}}, 1.0)
    assert export_cli.exit_code(nothing) == 0 and export_cli.exit_code(nothing, strict=True) == 4
    assert "matched no instance" in export_cli.warnings_for(nothing)[0]
    some = export_cli.ExportResult(request, {"state": "SUCCEEDED", "counters": {"success": 3}}, 1.0)
    assert export_cli.exit_code(some, strict=True) == 0 and export_cli.warnings_for(some) == []
    failed = export_cli.ExportResult(request, {"state": "FAILED", "counters": {}}, 1.0)
    assert export_cli.exit_code(failed, strict=True) == 1
    assert export_cli.exit_code(export_cli.ExportResult(request, None, 9.0)) == 3


def test_summary_lines_are_aligned_and_name_failures_and_skips() -> None:
    skipped = [f"gs://b/up/{i}/study.json" for i in range(12)]
    result = IngestResult(uploaded=15, imported=2, failed=["gs://b/up/bad.dcm"], skipped=skipped,
                          operations=[{}], destination="gs://b/up/",
                          skip_reasons={u: "name does not match DICOM_IMPORT_NAME_PATTERN" for u in skipped},
                          seconds=3.21)
    lines = ingest.render_summary(result)
    assert lines[0] == "uploaded    15 objects to gs://b/up/"
    assert lines[1] == "imported    2 instances stored"
    assert "skipped     12 objects (ignored by design)" in lines
    assert "            gs://b/up/0/study.json  (name does not match DICOM_IMPORT_NAME_PATTERN)" in lines
    assert "            ... and 2 more" in lines
    assert "failed      1 objects not imported" in lines
    assert "            gs://b/up/bad.dcm" in lines
    assert lines[-1] == "done        with failures in 3.2 s"


def test_describe_event() -> None:
    line = ingest.describe_event({"kind": "import", "state": "SUCCEEDED_WITH_ERRORS", "source": "gs://b/x/**",
                                  "counters": {"success": 3, "failure": 1, "pending": 0},
                                  "durationSeconds": 1.25})
    assert line == "import SUCCEEDED_WITH_ERRORS 3 ok, 1 failed  gs://b/x/**  1.2 s"
    rejected = ingest.describe_event({"kind": "export", "state": "REJECTED", "destination": "gs://e/x",
                                      "reason": "destination is not allowed"})
    assert rejected.startswith("export REJECTED") and "destination is not allowed" in rejected


# -- status and demo rendering --------------------------------------------------------------------

def test_status_render() -> None:
    lines = status.render({
        "dicomStore": STORE,
        "operations": [{"name": f"{STORE.rsplit('/dicomStores', 1)[0]}/operations/42", "kind": "export",
                        "requestId": "r-1", "startedAt": "2026-01-01T00:00:00Z"}],
        "jobs": [{"id": "j-1", "kind": "import", "state": "PENDING", "requestId": "b", "createdAt": None}],
        "windows": [{"window": "20260101T000000000Z", "uploads": 3}],
        "events": [{"kind": "import", "state": "SUCCEEDED", "counters": {"success": 2}, "endTime": "t"}],
        "signals": {"lastHour": {"import": {"FAILED": 1, "SUCCEEDED": 4}}, "queuedJobs": 1, "deadLetters": 2,
                    "oldestRunningOperation": {"name": "projects/p/operations/42", "kind": "export",
                                               "startedAt": "2026-01-01T00:00:00Z", "ageSeconds": 61.0}},
    })
    assert lines[0] == f"dicom store {STORE}"
    assert "operations  1 tracked" in lines
    assert any(line.startswith("            export 42") and "r-1" in line for line in lines)
    assert "jobs        1 queued" in lines
    assert "            20260101T000000000Z  3 uploads" in lines
    assert "events      latest 1, newest first" in lines
    assert "last hour   import FAILED 1, import SUCCEEDED 4" in lines
    assert "oldest op   export 42, 61.0 s" in lines
    assert "queued jobs 1" in lines and "dlq depth   2" in lines


def test_demo_shortens_uids_in_object_names() -> None:
    name = f"demo/png/{STUDY}/{SERIES}/1.2.826.0.1.3680043.8.498.99.png"
    assert demo.short_object(name, "demo/png") == "….8.498.1/….498.1.2/…8.498.99.png"
    lines = demo.written_lines([(name, 2048), ("demo/png/readme", 5)], "demo/png")
    assert lines[0].endswith("2.0 KiB") and lines[1].endswith("5 B")
    assert len(lines[0]) == len(lines[1])


def test_demo_sql_passes_the_export_functions_check_and_its_selection_is_the_first_instance_per_series(
        tmp_path: Path) -> None:
    from functions.core.sql_selection import check_sql
    from localcloud import synthetic

    sql = demo.selection_sql("local-project.dicom_stream.instances", "MR")
    assert check_sql(sql) == sql
    assert "FROM `local-project.dicom_stream.instances` WHERE Modality = 'MR' AND InstanceNumber = 1" in sql
    studies = synthetic.generate(tmp_path, patients=2, studies_per_patient=(2, 2), instances_per_series=(2, 3))
    mr = [s for s in studies.studies if s.modality == "MR"]
    selected = demo.sql_selected(studies, "MR")
    assert len(selected) == sum(len(s.series) for s in mr)  # one instance per series
    assert {p.split("/")[1] for p in selected} == {series.uid for s in mr for series in s.series}


def test_progress_without_a_terminal_is_one_line_per_bar_and_off_is_silent() -> None:
    import io

    from localcloud.progress import Reporter

    stream = io.StringIO()
    reporter = Reporter(stream, tty=False)
    with reporter.bar("upload", 3, "files") as bar:
        bar.update_to(2)
        bar.update_to(1)  # never goes back
        reporter.say("event", "something happened")
    assert stream.getvalue().splitlines() == ["event       something happened", "upload      2/3 files"]

    quiet = Reporter.off()
    with quiet.bar("upload", 3, "files") as bar:
        bar.update_to(3)
    quiet.say("x", "y")  # nothing to check but that it does not print: stdout is captured elsewhere


def test_progress_on_a_terminal_draws_a_tqdm_bar() -> None:
    import io

    from localcloud.progress import Reporter

    stream = io.StringIO()
    reporter = Reporter(stream, tty=True)
    with reporter.bar("import", 4, "objects") as bar:
        bar.update_to(4)
        reporter.say("event", "above the bar")
    text = stream.getvalue()
    assert "4/4 objects" in text and "event       above the bar" in text


def test_a_whole_store_storage_class_change_needs_its_flag() -> None:
    with pytest.raises(export_cli.RequestError, match="wholeStore"):
        export_cli.build_request(storage_class="ARCHIVE", request_id="c")
    body = export_cli.build_request(storage_class="ARCHIVE", request_id="c", whole_store=True)
    assert body == {"requestId": "c", "action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": True}
    args = build_parser().parse_args(["storage-class", "--class", "ARCHIVE", "--whole-store"])
    assert args.whole_store is True
