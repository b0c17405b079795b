from __future__ import annotations

import re
from dataclasses import fields

import pytest

from functions.core.errors import ConfigurationError
from functions.settings import ALL_VARIABLES, FUNCTION_VARIABLES, Settings

BASE = {
    "DICOM_STORE": "projects/p/locations/us-central1/datasets/d/dicomStores/s",
    "DICOM_STATE_BUCKET": "state-bucket",
    "DICOM_COMPLETION_TOPIC": "projects/p/topics/dicom-completions",
}


def test_defaults_and_derived_names() -> None:
    settings = Settings.from_env(BASE)
    assert settings.dataset == "projects/p/locations/us-central1/datasets/d"
    assert settings.project == "p"
    assert settings.debounce_seconds == 5.0
    assert settings.max_concurrent_operations == 5
    assert settings.import_name_pattern.search("a/b/IM1.DCM")
    assert not settings.import_name_pattern.search("a/b/IM1.dcm.json")
    assert settings.state_path("jobs", "x.json") == "jobs/x.json"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DICOM_STORE", "projects/p/datasets/d", "DICOM_STORE"),
        ("DICOM_STATE_BUCKET", "Bad_Bucket!", "DICOM_STATE_BUCKET"),
        ("DICOM_DEBOUNCE_SECONDS", "soon", "DICOM_DEBOUNCE_SECONDS"),
        ("DICOM_DEBOUNCE_SECONDS", "0", "DICOM_DEBOUNCE_SECONDS"),
        ("DICOM_MAX_CONCURRENT_OPERATIONS", "0", "DICOM_MAX_CONCURRENT_OPERATIONS"),
        ("DICOM_IMPORT_NAME_PATTERN", "(unclosed", "DICOM_IMPORT_NAME_PATTERN"),
        ("DICOM_STORAGE_CLASS_BY_PREFIX", "cold/=FREEZER", "DICOM_STORAGE_CLASS_BY_PREFIX"),
        ("DICOM_EXPORT_ALLOWED_DESTINATIONS", "s3://x", "DICOM_EXPORT_ALLOWED_DESTINATIONS"),
        ("HEALTHCARE_API_URL", "healthcare.local", "HEALTHCARE_API_URL"),
        ("BIGQUERY_API_URL", "bigquery.local", "BIGQUERY_API_URL"),
        ("DICOM_SQL_MAX_ROWS", "0", "DICOM_SQL_MAX_ROWS"),
        ("DICOM_SQL_ALLOWED_DATASETS", "p.INFORMATION_SCHEMA", "DICOM_SQL_ALLOWED_DATASETS"),
        ("DICOM_SQL_ALLOWED_DATASETS", "a b", "DICOM_SQL_ALLOWED_DATASETS"),
        ("DICOM_SQL_MAX_BYTES_BILLED", "0", "DICOM_SQL_MAX_BYTES_BILLED"),
        ("DICOM_SQL_SERVICE_ACCOUNT", "someone@example.com", "DICOM_SQL_SERVICE_ACCOUNT"),
        ("DICOM_COMPLETION_TOPIC", "dicom-completions", "DICOM_COMPLETION_TOPIC"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({**BASE, name: value})


def test_missing_required_variable_is_named() -> None:
    env = dict(BASE)
    del env["DICOM_STATE_BUCKET"]
    with pytest.raises(ConfigurationError, match="missing required environment variable DICOM_STATE_BUCKET"):
        Settings.from_env(env)


def test_a_function_reads_only_its_own_variables() -> None:
    # The import function does not publish: a garbled topic must not stop it.
    env = {**BASE, "DICOM_COMPLETION_TOPIC": "garbage", "DICOM_POLL_CONCURRENCY": "x"}
    settings = Settings.from_env(env, "import_dicom_on_upload")
    assert settings.completion_topic == ""
    with pytest.raises(ConfigurationError, match="DICOM_COMPLETION_TOPIC"):
        Settings.from_env(env, "poll_dicom_operations")


# A valid value for every variable that differs from its default (and from BASE).
NON_DEFAULT = {
    "DICOM_STORE": "projects/p/locations/europe-west4/datasets/d2/dicomStores/s2",
    "DICOM_STATE_BUCKET": "other-state-bucket",
    "DICOM_COMPLETION_TOPIC": "projects/p/topics/other-completions",
    "DICOM_STATE_PREFIX": "pipeline",
    "DICOM_STAGING_BUCKET": "dicom-staging",
    "DICOM_UPLOAD_BUCKET": "uploads-bucket",
    "HEALTHCARE_API_URL": "http://127.0.0.1:8090",
    "DICOM_MAX_CONCURRENT_OPERATIONS": "3",
    "DICOM_CLAIM_LEASE_SECONDS": "45",
    "DICOM_HTTP_TIMEOUT_SECONDS": "20",
    "DICOM_RETRY_DEADLINE_SECONDS": "12",
    "LOG_LEVEL": "DEBUG",
    "DICOM_IMPORT_PREFIXES": "inbox/",
    "DICOM_IMPORT_NAME_PATTERN": r"\.dicom$",
    "DICOM_DEBOUNCE_SECONDS": "9",
    "DICOM_SETTLE_SECONDS": "4",
    "DICOM_IMPORT_COALESCE_SECONDS": "0",
    "DICOM_STORAGE_CLASS_BY_PREFIX": "archive/=ARCHIVE",
    "DICOM_MAX_EVENT_AGE_SECONDS": "60",
    "DICOM_EXPORT_ALLOWED_DESTINATIONS": "gs://exports",
    "DICOM_POLL_CONCURRENCY": "4",
    "DICOM_FAILED_OBJECTS_CAP": "7",
    "BIGQUERY_API_URL": "http://127.0.0.1:9050",
    "DICOM_SQL_MAX_ROWS": "5000",
    "DICOM_SQL_TIMEOUT_SECONDS": "30",
    "DICOM_SQL_ALLOWED_DATASETS": "dicom_stream, other-project.reports",
    "DICOM_SQL_MAX_BYTES_BILLED": "1000000",
    "DICOM_SQL_SERVICE_ACCOUNT": "dicom-sql@p.iam.gserviceaccount.com",
}


class RecordingEnv(dict[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def test_the_table_covers_every_variable_and_names_real_functions() -> None:
    assert set(NON_DEFAULT) == ALL_VARIABLES
    assert set(FUNCTION_VARIABLES) == {"import_dicom_on_upload", "export_dicom_on_message", "poll_dicom_operations"}


@pytest.mark.parametrize("function", sorted(FUNCTION_VARIABLES))
def test_each_function_reads_exactly_the_variables_it_declares(function: str) -> None:
    env = RecordingEnv(NON_DEFAULT)
    Settings.from_env(env, function)
    assert env.read == FUNCTION_VARIABLES[function]


def test_every_variable_sets_one_field_and_every_field_has_its_variable() -> None:
    base = Settings.from_env(BASE)
    changed = {}
    for name, value in NON_DEFAULT.items():
        settings = Settings.from_env({**BASE, name: value})
        changed[name] = [f.name for f in fields(Settings) if getattr(settings, f.name) != getattr(base, f.name)]
    assert all(len(names) == 1 for names in changed.values()), changed
    assert sorted(names[0] for names in changed.values()) == sorted(f.name for f in fields(Settings))


def test_the_readme_documents_every_variable() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = {name for line in readme.splitlines() if line.startswith("| `")
                  if re.fullmatch(r"[A-Z][A-Z_]+", name := line.split("`")[1])}
    assert documented == ALL_VARIABLES


def test_lists_and_storage_classes_parse() -> None:
    settings = Settings.from_env({
        **BASE,
        "DICOM_IMPORT_PREFIXES": "inbox/, ward/ ,",
        "DICOM_STORAGE_CLASS_BY_PREFIX": "archive/=archive,archive/cold/=COLDLINE",
        "DICOM_EXPORT_ALLOWED_DESTINATIONS": "gs://exports/, gs://research/cohorts",
        "DICOM_STATE_PREFIX": "/pipeline/",
    })
    assert settings.import_prefixes == ("inbox/", "ward/")
    assert settings.storage_class_for("archive/cold/x.dcm") == "COLDLINE"
    assert settings.storage_class_for("archive/x.dcm") == "ARCHIVE"
    assert settings.storage_class_for("inbox/x.dcm") is None
    assert settings.export_allowed_destinations == ("gs://exports", "gs://research/cohorts")
    assert settings.state_path("seen", "k") == "pipeline/seen/k"
