"""The `sql` selector's pure parts: which statements run, how rows become paths, how BigQuery
errors become reasons (functions.sql_selection, functions.bigquery)."""

from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as gexc

from functions.bigquery import query_error, redact
from functions.errors import InvalidExportRequestError, SqlQueryError, TransientApiError
from functions.export_request import SqlSelector, parse_export_request
from functions.sql_selection import MAX_SQL_CHARS, SqlResultError, check_sql, paths_from_rows, row_shape


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("  select 1 ;  ", "select 1"),
        ("SELECT 1;;", "SELECT 1"),
        ("WITH s AS (SELECT 1) SELECT * FROM s", "WITH s AS (SELECT 1) SELECT * FROM s"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)"),
        ("-- a comment; with a semicolon\nSELECT 1", "-- a comment; with a semicolon\nSELECT 1"),
        ("/* DROP TABLE x; */ SELECT 1", "/* DROP TABLE x; */ SELECT 1"),
        ("# hash comment;\nSELECT 'a;b'", "# hash comment;\nSELECT 'a;b'"),
        ("SELECT \"x;y\", `t;u`.c FROM `p.d.t;`", "SELECT \"x;y\", `t;u`.c FROM `p.d.t;`"),
        ("SELECT 'it\\'s;' FROM t", "SELECT 'it\\'s;' FROM t"),
        ("SELECT '''a;\nb''' FROM t;", "SELECT '''a;\nb''' FROM t"),
        ("SELECT 1 WHERE x = 'MR'", "SELECT 1 WHERE x = 'MR'"),
    ],
)
def test_one_select_statement_is_accepted_as_written(sql: str, expected: str) -> None:
    assert check_sql(sql) == expected


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "empty"),
        ("  \n ", "empty"),
        ("DELETE FROM t WHERE TRUE", "not DELETE"),
        ("insert into t values (1)", "not INSERT"),
        ("CREATE TABLE t AS SELECT 1", "not CREATE"),
        ("MERGE t USING s ON TRUE WHEN MATCHED THEN DELETE", "not MERGE"),
        ("DECLARE x INT64; SELECT x", "more than one statement"),
        ("SELECT 1; DROP TABLE t", "more than one statement"),
        ("SELECT 1; -- trailing\nSELECT 2", "more than one statement"),
        ("EXECUTE IMMEDIATE 'SELECT 1'", "not EXECUTE"),
        ("CALL p()", "not CALL"),
        ("'SELECT 1'", "no keyword"),
        ("SELECT 'open", "unterminated quoted"),
        ("SELECT 1 /* open", "unterminated /*"),
        ("SELECT '''open", "unterminated triple"),
        ("SELECT 'a\nb'", "unterminated quoted"),
        ("SELECT '\x00'", "NUL"),
        ("SELECT " + "1" * MAX_SQL_CHARS, "characters long"),
    ],
)
def test_anything_but_one_select_statement_is_refused_before_it_runs(sql: str, reason: str) -> None:
    with pytest.raises(InvalidExportRequestError) as caught:
        check_sql(sql)
    assert reason in caught.value.reason


def test_the_parser_keeps_the_checked_statement() -> None:
    request = parse_export_request(json.dumps({"destination": "gs://exports/x", "sql": " SELECT 1; "}).encode())
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


def test_bigquery_errors_become_reasons_without_quoted_parts() -> None:
    bad = gexc.BadRequest("x", errors=[{"reason": "invalidQuery",
                                        "message": "No matching signature for 'P123' and \"Doe\" at [1:8]"}])
    error = query_error(bad)
    assert isinstance(error, SqlQueryError)
    assert "400 invalidQuery" in error.reason and "[1:8]" in error.reason
    assert "P123" not in error.reason and "Doe" not in error.reason
    assert isinstance(query_error(gexc.NotFound("Not found: Table p:d.t")), SqlQueryError)
    assert isinstance(query_error(gexc.Forbidden("denied")), SqlQueryError)
    assert isinstance(query_error(gexc.ServiceUnavailable("later")), TransientApiError)
    assert isinstance(query_error(gexc.TooManyRequests("slow down")), TransientApiError)
    limited = gexc.Forbidden("x", errors=[{"reason": "rateLimitExceeded", "message": "too many"}])
    assert isinstance(query_error(limited), TransientApiError)


def test_redact_cuts_long_messages() -> None:
    assert len(redact("x" * 5000)) == 300
    assert redact("a `p.d.t` b") == 'a "…" b'
