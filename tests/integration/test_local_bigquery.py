"""The local BigQuery through google-cloud-bigquery, as the export function and users meet it."""

from __future__ import annotations

import uuid

import pytest
from google.cloud import bigquery

from localcloud import bigquery as local_bigquery

# The seed's selection SQL: one DICOMweb path per instance row.
SEED_SQL = (
    "SELECT CONCAT('/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, "
    "'/instances/', SOPInstanceUID) AS path FROM `{table}` ORDER BY path"
)

_SCHEMA = [
    bigquery.SchemaField("StudyInstanceUID", "STRING"),
    bigquery.SchemaField("SeriesInstanceUID", "STRING"),
    bigquery.SchemaField("SOPInstanceUID", "STRING"),
    bigquery.SchemaField("Modality", "STRING"),
    bigquery.SchemaField("BlobStorageSize", "INTEGER"),
]


def _table(bq: bigquery.Client, project_id: str) -> str:
    dataset = f"{project_id}.ds_{uuid.uuid4().hex[:8]}"
    bq.create_dataset(dataset)
    table = f"{dataset}.instances"
    bq.create_table(bigquery.Table(table, schema=_SCHEMA))
    return table


def test_the_seed_sql_selects_rows_written_through_the_client(bigquery_emulator: str, project_id: str) -> None:
    bq = local_bigquery.client(bigquery_emulator, project_id)
    table = _table(bq, project_id)
    rows = [
        {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4", "Modality": "CT"},
        {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.5", "SOPInstanceUID": "1.2.5.6", "Modality": "MR"},
    ]
    local_bigquery.insert_rows(bq, table, rows, [f.name for f in _SCHEMA])

    paths = [row.path for row in bq.query(SEED_SQL.format(table=table)).result()]

    assert paths == ["/studies/1.2/series/1.2.3/instances/1.2.3.4", "/studies/1.2/series/1.2.5/instances/1.2.5.6"]
    assert [f.name for f in bq.get_table(table).schema] == [f.name for f in _SCHEMA]
    filtered = bq.query(f"SELECT SOPInstanceUID FROM `{table}` WHERE Modality = 'MR'").result()
    assert [row.SOPInstanceUID for row in filtered] == ["1.2.5.6"]


def test_values_are_written_verbatim_whatever_their_characters(bigquery_emulator: str, project_id: str) -> None:
    bq = local_bigquery.client(bigquery_emulator, project_id)
    table = _table(bq, project_id)
    awkward = "O'Brien \\ `x` \"y\"\nline; DROP TABLE t; --"
    local_bigquery.insert_rows(
        bq, table, [{"StudyInstanceUID": awkward, "BlobStorageSize": 42}, {"Modality": None}], [f.name for f in _SCHEMA]
    )

    rows = list(bq.query(f"SELECT StudyInstanceUID, BlobStorageSize, Modality FROM `{table}`").result())

    assert sorted((r.StudyInstanceUID or "", r.BlobStorageSize or 0) for r in rows) == [("", 0), (awkward, 42)]
    assert all(r.Modality is None for r in rows)


# --- dry runs and maximumBytesBilled, as BigQuery answers them (localcloud/bigquery.py) ----------


def _dry(bq: bigquery.Client, sql: str) -> bigquery.QueryJob:
    return bq.query(sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False))


def test_a_dry_run_reports_statement_type_tables_and_bytes_and_runs_nothing(bigquery_emulator: str,
                                                                            project_id: str) -> None:
    bq = local_bigquery.client(bigquery_emulator, project_id)
    table = _table(bq, project_id)
    local_bigquery.insert_rows(bq, table, [{"StudyInstanceUID": "1.2", "Modality": "CT"}], [f.name for f in _SCHEMA])
    project, dataset, name = table.split(".")

    select = _dry(bq, f"WITH s AS (SELECT * FROM `{table}`) SELECT StudyInstanceUID FROM s WHERE Modality = 'CT'")
    assert select.statement_type == "SELECT"
    assert [(t.project, t.dataset_id, t.table_id) for t in select.referenced_tables] == [(project, dataset, name)]
    assert select.total_bytes_processed is not None and select.total_bytes_processed > 0

    insert = _dry(bq, f"WITH a AS (SELECT '9' AS u) INSERT INTO `{table}` (StudyInstanceUID) SELECT u FROM a")
    assert insert.statement_type == "INSERT"
    script = _dry(bq, f"SELECT 1; SELECT StudyInstanceUID FROM `{table}`")
    assert script.statement_type == "SCRIPT"
    ddl = _dry(bq, f"CREATE TABLE `{project}.{dataset}.copy` AS SELECT * FROM `{table}`")
    assert ddl.statement_type == "CREATE_TABLE_AS_SELECT"
    schema = _dry(bq, f"SELECT table_name FROM `{project}.{dataset}.INFORMATION_SCHEMA.TABLES`")
    assert [(t.dataset_id, t.table_id) for t in schema.referenced_tables] == [(dataset, "INFORMATION_SCHEMA.TABLES")]
    region = _dry(bq, "SELECT job_id FROM `region-us`.INFORMATION_SCHEMA.JOBS")
    assert [(t.dataset_id, t.table_id) for t in region.referenced_tables] == [("INFORMATION_SCHEMA", "JOBS")]
    # Nothing of it ran: one row, no copy table.
    assert [r.StudyInstanceUID for r in bq.query(f"SELECT StudyInstanceUID FROM `{table}`").result()] == ["1.2"]
    assert [t.table_id for t in bq.list_tables(f"{project}.{dataset}")] == ["instances"]


def test_a_dry_run_of_a_bad_statement_fails_as_bigquery_fails_it(bigquery_emulator: str, project_id: str) -> None:
    from google.api_core.exceptions import BadRequest, NotFound

    bq = local_bigquery.client(bigquery_emulator, project_id)
    table = _table(bq, project_id)
    with pytest.raises(BadRequest):
        _dry(bq, f"SELECT no_such_column FROM `{table}`")
    with pytest.raises(NotFound):
        _dry(bq, f"SELECT 1 FROM `{table}_missing`")


def test_a_query_over_maximum_bytes_billed_fails_before_it_runs(bigquery_emulator: str, project_id: str) -> None:
    from google.api_core.exceptions import GoogleAPICallError

    bq = local_bigquery.client(bigquery_emulator, project_id)
    table = _table(bq, project_id)
    sql = f"INSERT INTO `{table}` (StudyInstanceUID) VALUES ('1.9')"
    with pytest.raises(GoogleAPICallError) as caught:
        bq.query(sql, job_config=bigquery.QueryJobConfig(maximum_bytes_billed=1000)).result()
    assert caught.value.errors[0]["reason"] == "bytesBilledLimitExceeded"
    assert list(bq.query(f"SELECT StudyInstanceUID FROM `{table}`").result()) == [], "nothing ran"
    rows = bq.query(f"SELECT COUNT(*) AS n FROM `{table}`",
                    job_config=bigquery.QueryJobConfig(maximum_bytes_billed=10**12)).result()
    assert [r.n for r in rows] == [0]
