"""The `sql` selector's pure parts: which statements run, how rows become paths, how BigQuery
errors become reasons (functions.core.sql_selection, functions.gcp.bigquery)."""

from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as gexc

from functions.core.errors import InvalidExportRequestError, SqlQueryError, TransientApiError
from functions.core.export_request import SqlSelector, parse_export_request
from functions.core.sql_selection import MAX_SQL_CHARS, SqlResultError, check_sql, paths_from_rows, row_shape
from functions.gcp.bigquery import query_error


@pytest.mark.parametrize(
    ("sql", "reason"),
    [("", "empty"), ("  \n ", "empty"), ("SELECT '\x00'", "NUL"), ("SELECT " + "1" * MAX_SQL_CHARS, "characters long")],
)
def test_an_empty_over_long_or_nul_holding_sql_is_refused_when_parsed(sql: str, reason: str) -> None:
    with pytest.raises(InvalidExportRequestError) as caught:
        check_sql(sql)
    assert reason in caught.value.reason


def test_the_text_is_left_to_bigquerys_dry_run() -> None:
    # What a statement is, BigQuery's dry run says (functions.core.sql_gate): the text is only trimmed.
    for sql in ("DELETE FROM t WHERE TRUE", "SELECT 1; DROP TABLE t", "SELECT 'open"):
        assert check_sql(f" {sql} ") == sql


def test_the_parser_keeps_the_checked_statement() -> None:
    request = parse_export_request(json.dumps({"destination": "gs://exports/x", "sql": " SELECT 1 "}).encode())
    assert request.selector == SqlSelector("SELECT 1")
    assert request.to_dict() == {"destination": "gs://exports/x", "sql": "SELECT 1"}


@pytest.mark.parametrize(
    ("columns", "depth"),
    [(("f0_",), 0), (("StudyInstanceUID",), 1), (("seriesinstanceuid", "StudyInstanceUID"), 2),
     (("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"), 3)],
)
def test_the_columns_say_how_rows_are_read(columns: tuple[str, ...], depth: int) -> None:
    assert row_shape(columns) == depth


@pytest.mark.parametrize("columns", [("a", "b"), ("StudyInstanceUID", "SOPInstanceUID"), ()])
def test_other_columns_are_refused(columns: tuple[str, ...]) -> None:
    with pytest.raises(SqlResultError, match="columns"):
        row_shape(columns)


def test_uid_rows_become_paths_in_level_order_and_lazily() -> None:
    rows = iter([("3", "1.2", "4.5"), ("x", "1.2", "4.5")])
    paths = paths_from_rows(("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"), rows, max_rows=10)
    assert next(paths) == "/studies/1.2/series/4.5/instances/3"
    with pytest.raises(SqlResultError, match="row 2: column 'SOPInstanceUID'"):
        next(paths)


def test_the_row_limit_stops_reading_at_the_first_row_too_many() -> None:
    read = []

    def rows():  # type: ignore[no-untyped-def]
        for i in range(100):
            read.append(i)
            yield (f"/studies/1.{i}",)

    with pytest.raises(SqlResultError, match="more than 3 rows"):
        list(paths_from_rows(("p",), rows(), max_rows=3))
    assert len(read) == 4


@pytest.mark.parametrize("value", ["/studies/1.2\n/studies/3", "/studies/1.2/", "/studies/" + "1" * 65, 12, b"/s"])
def test_a_malformed_path_is_refused_without_its_value(value: object) -> None:
    with pytest.raises(SqlResultError) as caught:
        list(paths_from_rows(("p",), [(value,)], max_rows=3))
    assert str(value)[:8] not in caught.value.reason.replace("/studies/UID", "")


@pytest.mark.parametrize(
    "message",
    [
        # A value BigQuery quotes back: an ERROR() of a column, a failed cast, a value with a quote
        # (which broke the old blanking of quoted parts).
        "ERROR: x Doe^Jane at [1:8]",
        "Bad int64 value: Doe^Jane at [1:8]",
        "No matching signature for 'O'Doe^Jane' at [1:8]",
        'Syntax error: Unexpected string literal "Doe^Jane at [1:8]',
    ],
)
def test_bigquery_error_messages_are_never_passed_on(message: str) -> None:
    bad = gexc.BadRequest(message, errors=[{"reason": "invalidQuery", "location": "query", "message": message}])
    error = query_error(bad)
    assert isinstance(error, SqlQueryError)
    assert "400 invalidQuery" in error.reason and "at [1:8]" in error.reason and "in query" in error.reason
    assert "Doe" not in error.reason and "Jane" not in error.reason and "Doe" not in str(error)


def test_bigquery_errors_are_classified_without_their_message() -> None:
    assert isinstance(query_error(gexc.NotFound("Not found: Table p:d.t")), SqlQueryError)
    assert isinstance(query_error(gexc.Forbidden("denied")), SqlQueryError)
    assert isinstance(query_error(gexc.ServiceUnavailable("later")), TransientApiError)
    assert isinstance(query_error(gexc.TooManyRequests("slow down")), TransientApiError)
    limited = gexc.Forbidden("x Doe^Jane", errors=[{"reason": "rateLimitExceeded", "message": "x Doe^Jane"}])
    transient = query_error(limited)
    assert isinstance(transient, TransientApiError) and "Doe" not in str(transient)
    # The client maps a job's errorResult reason it does not know to 500; this one is not transient.
    over = gexc.InternalServerError("x", errors=[{"reason": "bytesBilledLimitExceeded", "message": "limit"}])
    assert isinstance(query_error(over), SqlQueryError)
    assert "DICOM_SQL_MAX_BYTES_BILLED" in query_error(over).reason  # type: ignore[attr-defined]
    forged = gexc.BadRequest("x", errors=[{"reason": "Doe^Jane", "location": "O'Doe", "message": "m"}])
    assert "Doe" not in str(query_error(forged)), "a reason or location that is not a plain token is dropped"
