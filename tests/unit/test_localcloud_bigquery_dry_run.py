"""The local BigQuery's dry-run answer from a parsed statement (localcloud.bigquery): statement
type and referenced tables, as BigQuery's JobStatistics2 reports them (localcloud/BIGQUERY.md)."""

from __future__ import annotations

import pytest
import sqlglot

from localcloud.bigquery import referenced_tables, statement_type


def _tree(sql: str) -> object:
    return sqlglot.parse(sql, read="bigquery")[0]


@pytest.mark.parametrize(
    ("sql", "kind", "tables"),
    [
        ("WITH a AS (SELECT * FROM `p.d.t`) SELECT * FROM a", "SELECT", [("p", "d", "t")]),
        ("(SELECT 1) UNION ALL (SELECT x FROM t)", "SELECT", [("p", "d", "t")]),
        ("SELECT * FROM `p.d.t` a JOIN `q.e.u` b ON TRUE", "SELECT", [("p", "d", "t"), ("q", "e", "u")]),
        ("WITH a AS (SELECT 1 AS x) INSERT INTO `p.d.t` (x) SELECT x FROM a", "INSERT", [("p", "d", "t")]),
        ("UPDATE `p.d.t` SET x = 1 WHERE TRUE", "UPDATE", [("p", "d", "t")]),
        ("DELETE FROM `p.d.t` WHERE TRUE", "DELETE", [("p", "d", "t")]),
        ("MERGE `p.d.t` T USING `p.d.s` S ON T.x = S.x WHEN MATCHED THEN DELETE", "MERGE",
         [("p", "d", "t"), ("p", "d", "s")]),
        ("CREATE TABLE `p.d.c` AS SELECT * FROM `p.d.t`", "CREATE_TABLE_AS_SELECT", [("p", "d", "t")]),
        ("CREATE TABLE `p.d.c` (x INT64)", "CREATE_TABLE", []),
        ("CREATE VIEW `p.d.v` AS SELECT 1", "CREATE_VIEW", []),
        ("DROP TABLE `p.d.t`", "DROP_TABLE", [("p", "d", "t")]),
        ("ALTER TABLE `p.d.t` ADD COLUMN y STRING", "ALTER_TABLE", [("p", "d", "t")]),
        ("TRUNCATE TABLE `p.d.t`", "TRUNCATE_TABLE", [("p", "d", "t")]),
        ("EXPORT DATA OPTIONS(uri='gs://b/*.json', format='JSON') AS SELECT * FROM `p.d.t`", "EXPORT_DATA",
         [("p", "d", "t")]),
        ("DECLARE x INT64", "SCRIPT", []),
        ("EXECUTE IMMEDIATE 'SELECT 1'", "SCRIPT", []),
        ("SELECT * FROM EXTERNAL_QUERY('p.us.c', 'SELECT 1')", "SELECT", []),
        ("SELECT * FROM `p.d.INFORMATION_SCHEMA.TABLES`", "SELECT", [("p", "d", "INFORMATION_SCHEMA.TABLES")]),
        ("SELECT * FROM `region-us`.INFORMATION_SCHEMA.JOBS", "SELECT", [("p", "INFORMATION_SCHEMA", "JOBS")]),
    ],
)
def test_statement_type_and_referenced_tables(sql: str, kind: str, tables: list[tuple[str, str, str]]) -> None:
    tree = _tree(sql)
    assert statement_type(tree) == kind
    assert referenced_tables(tree, "p", "d") == tables
