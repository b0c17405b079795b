"""The `sql` selector and `"action": "setStorageClass"` on the real export function and poller.

BigQuery is `FakeBigQuery` (tests/functional/fakes.py): what a query returns is the test's input,
so these tests check what the function does with it: the filter file, the operation it starts,
the REJECTED events (and that nothing starts), the storage class of exactly the selected
instances, and the completion event of kind `storageClass`. The queries themselves run on the
local BigQuery in tests/integration.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from functions.core.errors import TransientApiError
from functions.core.events import PubsubMessage
from functions.core.sql_gate import DryRun, TableRef
from functions.exports.export_on_message import ExportOutcome
from functions.gcp.bigquery import query_error
from tests import dicom_factory
from tests.contracts import validate_completion_message
from tests.functional.fakes import FakeBigQuery, Instance
from tests.functional.world import STATE, World

SEED_SQL = ("SELECT CONCAT('/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, '/instances/', "
            "SOPInstanceUID) FROM `p.dicom_stream.instances` WHERE JSON_VALUE(Metadata, '$.Modality') = 'MR'")
_ids = iter(range(1, 1_000_000))


def _world() -> World:
    """Two studies of 2 series x 2 instances, imported."""
    w = World()
    data = dicom_factory.study(2, 2) + dicom_factory.study(2, 2)
    names = [f"in/IM{i:04d}.dcm" for i in range(len(data))]
    for name, blob in zip(names, data, strict=True):
        w.deliver(w.upload(name, blob), w.instance())
    w.settle()
    assert len(w.hc.instances) == 8
    w.publisher.events.clear()
    return w


def _send(w: World, body: dict[str, Any], bigquery: FakeBigQuery | None = None) -> ExportOutcome:
    n = next(_ids)
    message = PubsubMessage(event_id=f"m-{n}", message_id=f"m-{n}", data=json.dumps(body).encode(), attributes={},
                            publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))
    outcome: ExportOutcome = w.sim.call(lambda: w.exporter(bigquery).handle(message), name="export").value()
    return outcome


def _series(w: World) -> list[tuple[str, str]]:
    return sorted({(i.study, i.series) for i in w.hc.instances.values()})


def _of_series(w: World, study: str, series: str) -> list[Instance]:
    return [i for i in w.hc.instances.values() if (i.study, i.series) == (study, series)]


def _events(w: World) -> list[dict[str, Any]]:
    for event in w.completions():
        validate_completion_message(json.dumps(event.data).encode(), event.attributes)
    return [e.data for e in w.completions()]


def _assert_nothing_started(w: World, operations_before: int) -> None:
    assert len(w.hc.operations) == operations_before
    assert w.state("jobs/") == [] and w.state("operations/") == []
    assert w.state("filters/") == [], "a filter file of a rejected request is removed"
    assert w.state("exports/") == [], "the claim is dropped: the caller may send the request again"


def test_a_sql_export_writes_the_rows_as_the_filter_file_and_exports_exactly_them() -> None:
    w = _world()
    study, series = _series(w)[1]
    chosen = _of_series(w, study, series)
    paths = [f"/studies/{i.study}/series/{i.series}/instances/{i.sop}" for i in chosen]
    bq = FakeBigQuery(("f0_",), [(p,) for p in paths])
    outcome = _send(w, {"requestId": "mr", "destination": "gs://exports/mr", "sql": SEED_SQL}, bq)
    assert outcome.action == "started", outcome
    assert bq.queries == [SEED_SQL]
    [op] = [op for op in w.hc.operations.values() if op.kind == "export"]
    filter_name = op.uri.removeprefix(f"gs://{STATE}/")
    assert (w.store.peek(STATE, filter_name) or b"").decode().splitlines() == paths
    w.settle()
    [event] = _events(w)
    assert (event["kind"], event["state"], event["counters"]["success"]) == ("export", "SUCCEEDED", len(chosen))


def test_the_uid_columns_select_series_or_instances_by_name() -> None:
    w = _world()
    (study_a, series_a), (study_b, series_b) = _series(w)[:2]
    bq = FakeBigQuery(("SeriesInstanceUID", "studyinstanceuid"), [(series_a, study_a), (series_b, study_b)])
    assert _send(w, {"destination": "gs://exports/two", "sql": "SELECT 1"}, bq).action == "started"
    [op] = [op for op in w.hc.operations.values() if op.kind == "export"]
    lines = (w.store.peek(STATE, op.uri.removeprefix(f"gs://{STATE}/")) or b"").decode().splitlines()
    assert lines == [f"/studies/{study_a}/series/{series_a}", f"/studies/{study_b}/series/{series_b}"]
    w.settle()
    [event] = _events(w)
    assert event["counters"]["success"] == 4


def _bad_request() -> Exception:
    from google.api_core.exceptions import BadRequest

    return BadRequest("Syntax error: Unexpected string literal 'P123' at [1:30]",
                      errors=[{"reason": "invalidQuery", "message": "Syntax error: Unexpected string literal "
                                                                    "'P123' at [1:30]"}])


_TABLE = TableRef("p", "dicom_stream", "instances")
# The lexer this replaced let this script through: BigQuery applies backslash escapes inside
# triple-quoted strings, so the string ends earlier than a reader of the text thinks.
_SCRIPT = "SELECT '''a\\'''';DECLARE x INT64;EXECUTE IMMEDIATE 'SELECT 1';SELECT 'x' AS y --'"


def _dry(statement: str = "SELECT", *tables: TableRef, bytes_: int = 1000,
         routines: tuple[TableRef, ...] = ()) -> DryRun:
    return DryRun(statement, tables, routines, bytes_)


@pytest.mark.parametrize(
    ("sql", "bigquery", "reason", "dry_ran", "queried"),
    [
        (_SCRIPT, lambda: FakeBigQuery(dry=_dry("SCRIPT", _TABLE)), "statement type SCRIPT", True, False),
        ("WITH a AS (SELECT 1) INSERT INTO `p.dicom_stream.instances` (x) SELECT * FROM a",
         lambda: FakeBigQuery(dry=_dry("INSERT", _TABLE)), "statement type INSERT", True, False),
        ("EXPORT DATA OPTIONS(uri='gs://state/jobs/*.json') AS SELECT 1",
         lambda: FakeBigQuery(dry=_dry("EXPORT_DATA", _TABLE)), "statement type EXPORT_DATA", True, False),
        ("CREATE TABLE `p.dicom_stream.x` AS SELECT 1",
         lambda: FakeBigQuery(dry=_dry("CREATE_TABLE_AS_SELECT", _TABLE)), "CREATE_TABLE_AS_SELECT", True, False),
        ("SELECT * FROM `p.other.t`", lambda: FakeBigQuery(dry=_dry("SELECT", TableRef("p", "other", "t"))),
         "the table p.other.t, outside the allowed datasets (p.dicom_stream)", True, False),
        ("SELECT * FROM `q.dicom_stream.t`",
         lambda: FakeBigQuery(dry=_dry("SELECT", _TABLE, TableRef("q", "dicom_stream", "t"))),
         "the table q.dicom_stream.t", True, False),
        ("SELECT * FROM `p.dicom_stream.INFORMATION_SCHEMA.TABLES`", lambda: FakeBigQuery(dry=_dry("SELECT", _TABLE)),
         "names INFORMATION_SCHEMA", True, False),
        ("SELECT * FROM EXTERNAL_QUERY('p.us.c', 'SELECT 1')", lambda: FakeBigQuery(dry=_dry("SELECT", _TABLE)),
         "names EXTERNAL_QUERY", True, False),
        ("SELECT '/studies/1.2'", lambda: FakeBigQuery(dry=_dry("SELECT")), "lists no referenced table", True, False),
        ("SELECT 1", lambda: FakeBigQuery(dry=_dry("SELECT", _TABLE, bytes_=2001)),
         "would process 2001 bytes; at most 2000", True, False),
        ("SELECT x FROM t WHERE PatientID = 'P123",
         lambda: FakeBigQuery(dry_error=query_error(_bad_request())), "400 invalidQuery, at [1:30]", True, False),
        ("", None, "sql is empty", False, False),
        ("SELECT PatientID FROM t", lambda: FakeBigQuery(error=query_error(_bad_request())),
         "400 invalidQuery", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("path",), []), "the sql returned no rows", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("a", "b"), [("1", "2")]), "returned 2 columns", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("path",), [("/studies/1.2",), ("/studies/1.02/series/3",)]),
         "row 2: column 'path' is not a resource path", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("path",), [("/studies/1.2",), (None,)]),
         "row 2: column 'path' is not a resource path", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("StudyInstanceUID",), [("1.2",), ("Doe^Jane",)]),
         "row 2: column 'StudyInstanceUID' is not a valid DICOM UID", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("path",), [(f"/studies/1.{i}",) for i in range(6)]),
         "the sql returned 6 rows; at most 5", True, True),
        ("SELECT 1", lambda: FakeBigQuery(("path",), [(f"/studies/1.{i}",) for i in range(9)], report_total=False),
         "more than 5 rows", True, True),
    ],
    ids=["script", "with-insert", "export-data", "ddl", "other-dataset", "other-project", "information-schema",
         "external-query", "no-table", "over-bytes", "dry-run-error", "empty", "bigquery-error", "no-rows",
         "columns", "malformed-path", "null-path", "malformed-uid", "over-limit-known", "over-limit-streamed"],
)
def test_a_bad_sql_selection_is_rejected_with_a_reason_and_starts_nothing(
        sql: str, bigquery: Any, reason: str, dry_ran: bool, queried: bool) -> None:
    w = World(sql_max_rows=5, sql_max_bytes_billed=2000)
    w.deliver(w.upload("in/a.dcm"), w.instance())
    w.settle()
    w.publisher.events.clear()
    before = len(w.hc.operations)
    bq = bigquery() if bigquery else FakeBigQuery(("path",), [("/studies/1.2",)])
    outcome = _send(w, {"requestId": "q-1", "destination": "gs://exports/q", "sql": sql}, bq)
    assert outcome.action == "rejected"
    [event] = _events(w)
    assert event["state"] == "REJECTED" and event["kind"] == "export" and event["requestId"] == "q-1"
    assert reason in event["reason"], event["reason"]
    for value in ("P123", "Doe^Jane", "1.02"):
        assert value not in event["reason"], "a value of the query or a row is never echoed"
    assert bool(bq.dry_runs) == dry_ran
    assert bool(bq.queries) == queried, "a statement the dry run refuses never runs"
    assert bq.rows_read <= 6, "the row limit stops reading"
    assert bq.max_bytes_billed in ([], [2000])
    _assert_nothing_started(w, before)


def test_a_transient_bigquery_fault_is_redelivered_and_the_redelivery_exports() -> None:
    from google.api_core.exceptions import ServiceUnavailable

    w = _world()
    body = {"requestId": "retry", "destination": "gs://exports/r", "sql": "SELECT 1"}
    data = json.dumps(body).encode()
    message = PubsubMessage(event_id="m-r", message_id="m-r", data=data, attributes={},
                            publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))
    failing = FakeBigQuery(error=query_error(ServiceUnavailable("backend")))
    task = w.sim.call(lambda: w.exporter(failing).handle(message), name="export")
    assert isinstance(task.error, TransientApiError)
    study = next(iter(w.hc.instances.values())).study
    working = FakeBigQuery(("path",), [(f"/studies/{study}",)])
    outcome = w.sim.call(lambda: w.exporter(working).handle(message), name="export").value()
    assert outcome.action == "started"
    assert w.completions() == []


def test_set_storage_class_moves_exactly_the_selected_series_and_reports_kind_storage_class() -> None:
    w = _world()
    study, series = _series(w)[0]
    moved = {i.sop for i in _of_series(w, study, series)}
    outcome = _send(w, {"requestId": "archive-1", "action": "setStorageClass", "storageClass": "ARCHIVE",
                        "resources": [f"/studies/{study}/series/{series}"]})
    assert outcome.action == "started", outcome
    w.settle()
    assert {sop for sop, cls in w.hc.storage_classes.items() if cls == "ARCHIVE"} == moved
    assert len(moved) == 2 and len(w.hc.storage_classes) == 2
    [event] = _events(w)
    assert (event["kind"], event["state"], event["requestId"]) == ("storageClass", "SUCCEEDED", "archive-1")
    assert event["counters"]["success"] == 2 and "destination" not in event
    assert w.quiet()
    # The same requestId again starts no second change.
    again = _send(w, {"requestId": "archive-1", "action": "setStorageClass", "storageClass": "ARCHIVE",
                      "resources": [f"/studies/{study}/series/{series}"]})
    assert again.action == "duplicate"


def test_set_storage_class_with_a_sql_selector_and_of_the_whole_store() -> None:
    w = _world()
    sops = sorted(w.hc.instances)
    rows = [(w.hc.instances[s].study, w.hc.instances[s].series, s) for s in sops[:3]]
    bq = FakeBigQuery(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), rows)
    assert _send(w, {"action": "setStorageClass", "storageClass": "COLDLINE", "sql": "SELECT 1"}, bq).action \
        == "started"
    w.settle()
    assert sorted(w.hc.storage_classes) == sops[:3]
    # One message without a selector is no longer a whole-store change: it must say so.
    forgot = _send(w, {"requestId": "forgot", "action": "setStorageClass", "storageClass": "ARCHIVE"})
    assert forgot.action == "rejected" and "wholeStore" in forgot.detail
    assert [op for op in w.hc.running if op.kind == "storageClass"] == []
    assert _events(w)[-1]["state"] == "REJECTED"
    w.publisher.events.pop()
    assert _send(w, {"action": "setStorageClass", "storageClass": "NEARLINE", "wholeStore": True}).action == "started"
    [op] = [op for op in w.hc.running if op.kind == "storageClass"]
    assert op.uri == "", "no filter: the whole store"
    w.settle()
    assert set(w.hc.storage_classes.values()) == {"NEARLINE"} and len(w.hc.storage_classes) == 8
    kinds = [(e["kind"], e["state"]) for e in _events(w)]
    assert kinds == [("storageClass", "SUCCEEDED")] * 2


def test_a_bad_storage_class_request_is_rejected_with_kind_storage_class() -> None:
    w = _world()
    outcome = _send(w, {"requestId": "x", "action": "setStorageClass", "storageClass": "FREEZER"})
    assert outcome.action == "rejected"
    [event] = _events(w)
    assert (event["kind"], event["state"]) == ("storageClass", "REJECTED")
    assert "FREEZER" in event["reason"] and w.hc.running == []


def test_storage_class_changes_share_the_slots_with_exports() -> None:
    w = World(max_concurrent_operations=1)
    w.deliver(w.upload("in/a.dcm"), w.instance())
    w.settle()
    first = _send(w, {"destination": "gs://exports/a"})
    second = _send(w, {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": True})
    assert (first.action, second.action) == ("started", "queued")
    w.settle()
    assert w.hc.max_running == 1
    assert {e["kind"] for e in _events(w)} >= {"export", "storageClass"}
