"""The functions' environment built from the one local configuration."""

from __future__ import annotations

import pytest

from functions.settings import FUNCTION_VARIABLES, Settings
from localcloud.config import EMULATOR_VARIABLES, FUNCTION_TARGETS, LocalConfig

HOSTS = {
    "storage": "http://127.0.0.1:1001",
    "pubsub": "127.0.0.1:1002",
    "healthcare": "http://127.0.0.1:1003",
    "bigquery": "http://127.0.0.1:1004",
}


@pytest.mark.parametrize("target", sorted(FUNCTION_VARIABLES))
def test_each_function_gets_only_its_own_settings_plus_the_emulators(target: str) -> None:
    env = LocalConfig().function_env(target, **HOSTS)
    settings_names = set(env) - set(EMULATOR_VARIABLES)
    assert settings_names <= FUNCTION_VARIABLES[target]
    assert {"DICOM_STORE", "DICOM_STATE_BUCKET", "HEALTHCARE_API_URL"} <= settings_names
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:1001"
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:1002"
    assert env["GOOGLE_CLOUD_PROJECT"] == "local-project"


@pytest.mark.parametrize("target", sorted(FUNCTION_VARIABLES))
def test_the_functions_accept_the_local_environment(target: str) -> None:
    settings = Settings.from_env(LocalConfig().function_env(target, **HOSTS), target)
    assert (
        settings.dicom_store
        == "projects/local-project/locations/us-central1/datasets/local-dataset/dicomStores/local-store"
    )
    assert settings.state_bucket == "dicom-state"
    assert settings.healthcare_api_url == "http://127.0.0.1:1003"


def test_local_timings_are_short() -> None:
    import_settings = Settings.from_env(
        LocalConfig().function_env("import_dicom_on_upload", **HOSTS), "import_dicom_on_upload"
    )
    assert (import_settings.debounce_seconds, import_settings.settle_seconds) == (2.0, 1.0)
    assert import_settings.claim_lease_seconds == 10.0


def test_export_and_poll_know_the_completion_topic_and_allowed_destination() -> None:
    export = Settings.from_env(
        LocalConfig().function_env("export_dicom_on_message", **HOSTS), "export_dicom_on_message"
    )
    assert export.completion_topic == "projects/local-project/topics/dicom-completions"
    assert export.export_allowed_destinations == ("gs://dicom-export",)
    assert export.bigquery_api_url == "http://127.0.0.1:1004"  # sql selectors query the local BigQuery
    assert export.sql_datasets == ((export.project, "dicom_stream"),)  # and only the stream dataset
    poll = Settings.from_env(
        LocalConfig().function_env("poll_dicom_operations", **HOSTS), "poll_dicom_operations"
    )
    assert poll.completion_topic == "projects/local-project/topics/dicom-completions"


def test_extra_variables_reach_only_the_functions_that_read_them() -> None:
    config = LocalConfig(extra_function_env={"DICOM_IMPORT_PREFIXES": "incoming/"})
    assert config.function_env("import_dicom_on_upload", **HOSTS)["DICOM_IMPORT_PREFIXES"] == "incoming/"
    assert "DICOM_IMPORT_PREFIXES" not in config.function_env("export_dicom_on_message", **HOSTS)


def test_roles_name_the_targets_of_main() -> None:
    assert set(FUNCTION_TARGETS.values()) == set(FUNCTION_VARIABLES)
