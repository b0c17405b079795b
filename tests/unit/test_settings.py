from __future__ import annotations

import pytest

from functions.errors import ConfigurationError
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


def test_every_function_variable_is_known() -> None:
    assert set(FUNCTION_VARIABLES) == {"import_dicom_on_upload", "export_dicom_on_message", "poll_dicom_operations"}
    assert all(names <= ALL_VARIABLES for names in FUNCTION_VARIABLES.values())


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
