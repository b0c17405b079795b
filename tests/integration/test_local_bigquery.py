"""The local BigQuery through google-cloud-bigquery, as the export function and users meet it."""

from __future__ import annotations

import uuid

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
