"""Is a job read back from the state bucket one this deployment would have written? Pure.

Jobs wait in the state bucket until a slot is free, and whoever can write there could write one
(docs/decisions/0876). So every job is checked against the deployment's settings when it starts,
not only when its request was parsed:
- an export's destination lies inside `DICOM_EXPORT_ALLOWED_DESTINATIONS`;
- an import reads the upload bucket (`DICOM_UPLOAD_BUCKET`, and inside `DICOM_IMPORT_PREFIXES`
  when they are set) or the pipeline's own staging prefix in the staging bucket
  (`DICOM_STAGING_BUCKET`) or the state bucket, nothing else;
- a storage-class change has a filter file, or says `wholeStore` (its request did), and names a
  storage class the API knows.
A job that fails is refused like a start the API refused: its completion event is FAILED with
the reason, and nothing is started.
"""

from __future__ import annotations

from typing import Protocol

from functions.core.export_request import BLOB_STORAGE_CLASSES, destination_allowed


class QueuedJob(Protocol):
    """What the checks read of a job (`functions.imports.job_queue.Job` has it)."""

    @property
    def kind(self) -> str: ...

    @property
    def import_uri(self) -> str: ...

    @property
    def destination(self) -> str: ...

    @property
    def storage_class(self) -> str | None: ...

    @property
    def filter_uri(self) -> str | None: ...

    @property
    def whole_store(self) -> bool: ...


class Deployment(Protocol):
    """What the checks read of the deployment (`functions.settings.Settings` has it)."""

    @property
    def state_bucket(self) -> str: ...

    @property
    def upload_bucket(self) -> str: ...

    @property
    def import_prefixes(self) -> tuple[str, ...]: ...

    @property
    def export_allowed_destinations(self) -> tuple[str, ...]: ...

    def state_path(self, *parts: str) -> str: ...

    def is_staging_bucket(self, bucket: str) -> bool: ...


def job_problem(job: QueuedJob, settings: Deployment) -> str | None:
    """Why `job` may not start in this deployment; None when it may."""
    if job.kind == "export":
        if not destination_allowed(job.destination, settings.export_allowed_destinations):
            return (f"the job's destination {job.destination[:200]!r} is not inside "
                    "DICOM_EXPORT_ALLOWED_DESTINATIONS")
        return None
    if job.kind == "storageClass":
        if job.storage_class not in BLOB_STORAGE_CLASSES:
            return (f"the job's storage class {str(job.storage_class)[:40]!r} is not one of "
                    f"{', '.join(BLOB_STORAGE_CLASSES)}")
        if not job.filter_uri and not job.whole_store:
            return "the job has no filter file and does not say wholeStore; it would change the whole store"
        return None
    if job.kind == "import":
        return _import_source_problem(job.import_uri, settings)
    return f"the job's kind {str(job.kind)[:40]!r} is unknown"


def _import_source_problem(uri: str, settings: Deployment) -> str | None:
    if not uri.startswith("gs://"):
        return "the job's import source is not a gs:// URI"
    bucket, _, path = uri[len("gs://"):].partition("/")
    if ".." in path.split("/"):
        return "the job's import source has a '..' segment"
    if settings.is_staging_bucket(bucket):
        staging = settings.state_path("staging") + "/"
        if path.startswith(staging) and len(path) > len(staging):
            return None
        if bucket == settings.state_bucket:
            return "the job imports from the state bucket outside the pipeline's staging prefix"
        if bucket != settings.upload_bucket:
            return "the job imports from the staging bucket outside the pipeline's staging prefix"
    if settings.upload_bucket and bucket != settings.upload_bucket:
        return f"the job imports from bucket {bucket[:100]!r}, not the upload bucket (DICOM_UPLOAD_BUCKET)"
    if settings.import_prefixes and not any(path.startswith(p) for p in settings.import_prefixes):
        return "the job imports from outside DICOM_IMPORT_PREFIXES"
    return None
