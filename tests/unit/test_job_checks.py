"""A job read back from the state bucket is checked against the deployment when it starts
(functions.core.job_checks): plain jobs and settings, no I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from functions.core.job_checks import job_problem
from functions.imports.job_queue import Job
from functions.settings import Settings

S = Settings(dicom_store="projects/p/locations/l/datasets/d/dicomStores/s", state_bucket="state",
             state_prefix="pipe/", upload_bucket="uploads", export_allowed_destinations=("gs://exports/ok",))


def _job(kind: str, **fields: object) -> Job:
    return Job(job_id="j", kind=kind, request_id="r", created_at=0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "job",
    [
        _job("export", destination="gs://exports/ok/a"),
        _job("import", import_uri="gs://state/pipe/staging/b-1/**"),
        _job("import", import_uri="gs://uploads/in/**"),
        _job("import", import_uri="gs://uploads/in/a.dcm"),
        _job("storageClass", storage_class="ARCHIVE", filter_uri="gs://state/pipe/filters/k.txt"),
        _job("storageClass", storage_class="COLDLINE", whole_store=True),
    ],
)
def test_what_the_pipeline_writes_may_start(job: Job) -> None:
    assert job_problem(job, S) is None


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (_job("export", destination="gs://evil/x"), "not inside DICOM_EXPORT_ALLOWED_DESTINATIONS"),
        (_job("export", destination="gs://exports/okay"), "not inside"),
        (_job("import", import_uri="gs://state/pipe/jobs/**"), "outside the pipeline's staging prefix"),
        (_job("import", import_uri="gs://state/pipe/staging/"), "outside the pipeline's staging prefix"),
        (_job("import", import_uri="gs://other/in/**"), "not the upload bucket"),
        (_job("import", import_uri="gs://uploads/in/../x"), "'..'"),
        (_job("import", import_uri="/local/file"), "not a gs:// URI"),
        (_job("storageClass", storage_class="ARCHIVE"), "would change the whole store"),
        (_job("storageClass", storage_class="FREEZER", whole_store=True), "storage class 'FREEZER'"),
        (_job("delete"), "kind 'delete' is unknown"),
    ],
)
def test_anything_else_is_refused_with_a_reason(job: Job, reason: str) -> None:
    problem = job_problem(job, S)
    assert problem is not None and reason in problem, problem


def test_import_prefixes_bound_the_upload_bucket_and_an_empty_upload_bucket_allows_others() -> None:
    limited = replace(S, import_prefixes=("in/",))
    assert job_problem(_job("import", import_uri="gs://uploads/in/a.dcm"), limited) is None
    assert "DICOM_IMPORT_PREFIXES" in (job_problem(_job("import", import_uri="gs://uploads/out/a.dcm"), limited) or "")
    anywhere = replace(S, upload_bucket="")
    assert job_problem(_job("import", import_uri="gs://other/in/**"), anywhere) is None
    assert job_problem(_job("import", import_uri="gs://state/x/**"), anywhere) is not None


def test_with_a_staging_bucket_imports_read_its_staging_prefix_or_the_state_buckets() -> None:
    own = replace(S, staging_bucket="staged")
    assert job_problem(_job("import", import_uri="gs://staged/pipe/staging/b-1/**"), own) is None
    assert job_problem(_job("import", import_uri="gs://state/pipe/staging/b-1/**"), own) is None  # queued before
    for uri in ("gs://staged/pipe/receipts/**", "gs://staged/staging/b-1/**", "gs://staged/pipe/staging/"):
        problem = job_problem(_job("import", import_uri=uri), own)
        assert problem is not None and "staging bucket outside the pipeline's staging prefix" in problem, uri
    # Without one, the staging bucket is the state bucket and no other bucket is one.
    assert "not the upload bucket" in (job_problem(_job("import", import_uri="gs://staged/pipe/staging/b-1/**"), S)
                                       or "")


def test_a_jobs_staging_bucket_is_its_import_uris() -> None:
    assert _job("import", import_uri="gs://staged/pipe/staging/b-1/**",
                staging_prefix="pipe/staging/b-1/").staging_bucket == "staged"
    assert _job("import", import_uri="gs://uploads/in/**").staging_bucket == ""


def test_whole_store_survives_the_job_record() -> None:
    job = _job("storageClass", storage_class="ARCHIVE", whole_store=True, claim="pipe/exports/k.json")
    assert Job.from_json(job.to_json()) == job
    assert "whole_store" not in _job("export", destination="gs://exports/ok").to_json()
