"""Variable validations of infra/, held against the code and the provider that consume the values.

A value that passes `terraform plan` must not fail later: at apply (the provider's own id
parsers), or at the functions' cold start (functions/settings.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from functions.core.errors import ConfigurationError
from functions.settings import Settings
from tests.infra.hcl import INFRA, load_dir, validator

BASE_ENV = {
    "DICOM_STORE": "projects/p/locations/us-central1/datasets/d/dicomStores/s",
    "DICOM_STATE_BUCKET": "state-bucket",
    "DICOM_COMPLETION_TOPIC": "projects/p/topics/dicom-completions",
}


@pytest.fixture(scope="module")
def variables() -> dict[str, Any]:
    return load_dir(INFRA)["variable"]


def _function_accepts_allowlist(entries: list[str]) -> bool:
    env = {**BASE_ENV, "DICOM_EXPORT_ALLOWED_DESTINATIONS": ",".join(entries)}
    try:
        Settings.from_env(env, "export_dicom_on_message")
    except ConfigurationError:
        return False
    return True


ALLOWLIST_CORPUS = [
    "gs://exports",
    "gs://exports/",
    "gs://exports/research/cohort-1",
    "gs://exports/a/",
    "gs://exports/a//",
    "gs://my.exports.example/a b/c",
    "gs://" + "a" * 63,
    "gs://" + "a" * 64,
    "gs://" + ".".join(["a" * 63] * 3),
    "gs://" + ".".join(["a" * 64, "b"]),
    "gs://a..b",
    "gs://exports/a//b",
    "gs://exports//a",
    "gs://exports/./a",
    "gs://exports/a/.",
    "gs://exports/../a",
    "gs://exports/a..b",
    "gs://exports/.hidden",
    "gs://exports/a*",
    "gs://exports/a?",
    "gs://exports/[a]",
    "gs://exports/a#b",
    "gs://exports/a,b",
    "gs://exports/a\tb",
    "gs://Exports",
    "gs://ex",
    "gs://-exports",
    "gs://exports-",
    "gs://google-exports",
    "gs://goog-exports",
    "gs://my-googlebucket",
    "gs://192.168.0.1",
    "gs://192.168.0.1x",
    "s3://exports",
    "gs:/exports",
    "gs://",
]


@pytest.mark.parametrize("entry", ALLOWLIST_CORPUS)
def test_export_allowlist_validation_agrees_with_the_function(variables: dict[str, Any], entry: str) -> None:
    accepts = validator(variables["export_allowed_destinations"], "export_allowed_destinations")
    assert accepts([entry]) == _function_accepts_allowlist([entry]), entry


def test_the_allowlist_corpus_holds_both_verdicts(variables: dict[str, Any]) -> None:
    accepts = validator(variables["export_allowed_destinations"], "export_allowed_destinations")
    verdicts = {accepts([entry]) for entry in ALLOWLIST_CORPUS}
    assert verdicts == {True, False}
    assert accepts(None), "null means: the export bucket only"
