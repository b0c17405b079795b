"""The `sql` gate's decision from a dry-run answer (functions.core.sql_gate): plain inputs, no BigQuery."""

from __future__ import annotations

import pytest

from functions.core.sql_gate import (
    REFERENCED_TABLES_LIMIT,
    DryRun,
    SqlRefusedError,
    TableRef,
    decide,
    dry_run_from_statistics,
    parse_allowed_datasets,
)

ALLOWED = (("p", "dicom_stream"),)
STREAM = TableRef("p", "dicom_stream", "instances")


def _decide(dry: DryRun, sql: str = "SELECT path FROM t", max_bytes: int = 10_000) -> None:
    decide(dry, sql=sql, allowed_datasets=ALLOWED, max_bytes_billed=max_bytes)


def test_a_select_of_allowed_tables_within_the_byte_limit_may_run() -> None:
    _decide(DryRun("SELECT", (STREAM, TableRef("p", "dicom_stream", "other")), (), 10_000))
    _decide(DryRun("SELECT", (STREAM,), (TableRef("p", "dicom_stream", "f"),), 0))


@pytest.mark.parametrize(
    ("dry", "sql", "reason"),
    [
        (DryRun("SCRIPT", (STREAM,), (), 1), "SELECT 1; SELECT 2", "statement type SCRIPT"),
        (DryRun("INSERT", (STREAM,), (), 1), "WITH a AS (SELECT 1) INSERT ...", "statement type INSERT"),
        (DryRun("UPDATE", (STREAM,), (), 1), "UPDATE ...", "statement type UPDATE"),
        (DryRun("DROP_TABLE", (STREAM,), (), 1), "DROP TABLE ...", "statement type DROP_TABLE"),
        (DryRun("EXPORT_DATA", (STREAM,), (), 1), "EXPORT DATA ...", "statement type EXPORT_DATA"),
        (DryRun("", (STREAM,), (), 1), "x", "statement type unknown"),
        (DryRun("SELECT", (STREAM, TableRef("p", "secrets", "t")), (), 1), "x", "the table p.secrets.t, outside"),
        (DryRun("SELECT", (TableRef("other-project", "dicom_stream", "instances"),), (), 1), "x",
         "other-project.dicom_stream.instances"),
        (DryRun("SELECT", (TableRef("p", "INFORMATION_SCHEMA", "JOBS"),), (), 1), "x", "INFORMATION_SCHEMA.JOBS"),
        (DryRun("SELECT", (TableRef("p", "dicom_stream", "INFORMATION_SCHEMA.TABLES"),), (), 1), "x",
         "p.dicom_stream.INFORMATION_SCHEMA.TABLES"),
        (DryRun("SELECT", (STREAM,), (), 1), "SELECT * FROM `region-us`.information_schema.jobs",
         "names INFORMATION_SCHEMA"),
        (DryRun("SELECT", (STREAM,), (), 1), "SELECT * FROM EXTERNAL_QUERY('c', 'SELECT 1')", "names EXTERNAL_QUERY"),
        (DryRun("SELECT", (STREAM,), (TableRef("p", "udfs", "leak"),), 1), "x", "the routine p.udfs.leak"),
        (DryRun("SELECT", (), (), 0), "SELECT 1", "lists no referenced table"),
        (DryRun("SELECT", tuple(TableRef("p", "dicom_stream", f"t{i}") for i in range(REFERENCED_TABLES_LIMIT)),
                (), 1), "x", f"references {REFERENCED_TABLES_LIMIT} tables"),
        (DryRun("SELECT", (STREAM,), (), 10_001), "x", "would process 10001 bytes; at most 10000"),
        (DryRun("SELECT", (STREAM,), (), None), "x", "did not say how many bytes"),
    ],
    ids=["script", "with-insert", "update", "ddl", "export-data", "no-type", "other-dataset", "other-project",
         "information-schema-dataset", "information-schema-view", "information-schema-text", "external-query",
         "routine-outside", "no-table", "too-many-tables", "over-bytes", "no-bytes"],
)
def test_anything_else_is_refused_with_a_reason(dry: DryRun, sql: str, reason: str) -> None:
    with pytest.raises(SqlRefusedError) as caught:
        _decide(dry, sql)
    assert reason in caught.value.reason, caught.value.reason


def test_no_allowed_dataset_refuses_every_sql() -> None:
    with pytest.raises(SqlRefusedError, match="DICOM_SQL_ALLOWED_DATASETS is empty"):
        decide(DryRun("SELECT", (STREAM,), (), 1), sql="x", allowed_datasets=(), max_bytes_billed=10)


def test_the_dry_run_is_read_from_the_jobs_rest_statistics() -> None:
    statistics = {"statementType": "SELECT", "totalBytesProcessed": "1234",
                  "referencedTables": [{"projectId": "p", "datasetId": "d", "tableId": "t"}],
                  "referencedRoutines": [{"projectId": "p", "datasetId": "d", "routineId": "f"}]}
    assert dry_run_from_statistics(statistics) == DryRun("SELECT", (TableRef("p", "d", "t"),),
                                                         (TableRef("p", "d", "f"),), 1234)
    assert dry_run_from_statistics({}) == DryRun("", (), (), None)


def test_allowed_datasets_are_bare_or_project_qualified() -> None:
    assert parse_allowed_datasets(["dicom_stream", "other-proj.reports"], "p") == \
        (("p", "dicom_stream"), ("other-proj", "reports"))
    for bad in ("", "a b", "p.INFORMATION_SCHEMA", "p.d-x"):
        with pytest.raises(ValueError):
            parse_allowed_datasets([bad], "p")


def test_queries_run_as_the_query_account_by_impersonation(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.auth import impersonated_credentials
    from google.auth.credentials import AnonymousCredentials

    from functions.gcp import bigquery as bq_module
    from functions.settings import Settings

    account = "dicom-sql@p.iam.gserviceaccount.com"
    credentials = bq_module.query_credentials(account, source=AnonymousCredentials())  # type: ignore[no-untyped-call]
    assert isinstance(credentials, impersonated_credentials.Credentials)
    assert credentials.service_account_email == account
    assert bq_module.BIGQUERY_SCOPE in credentials._target_scopes  # noqa: SLF001 - no public accessor

    made: list[str] = []

    def fake(service_account: str, source: object = None) -> object:
        made.append(service_account)
        return credentials

    monkeypatch.setattr(bq_module, "query_credentials", fake)
    settings = Settings(dicom_store="projects/p/locations/l/datasets/d/dicomStores/s", state_bucket="state",
                        sql_service_account=account)
    client = bq_module.BigQueryClient(settings)._bq()
    assert made == [account] and client._credentials is credentials  # noqa: SLF001
    local = bq_module.BigQueryClient(Settings(dicom_store=settings.dicom_store, state_bucket="state",
                                              sql_service_account=account, bigquery_api_url="http://127.0.0.1:1"))
    local._bq()  # noqa: SLF001 - the local BigQuery checks no credentials: nothing is impersonated
    assert made == [account]
