"""DICOM_EXPORT_ALLOWED_DESTINATIONS: an entry accepted at start-up is one a destination can match."""

from __future__ import annotations

import json

import pytest

from functions.core.errors import ConfigurationError, InvalidExportRequestError
from functions.core.export_request import destination_allowed, parse_export_request
from functions.settings import Settings

BASE = {
    "DICOM_STORE": "projects/p/locations/us-central1/datasets/d/dicomStores/s",
    "DICOM_STATE_BUCKET": "state-bucket",
    "DICOM_COMPLETION_TOPIC": "projects/p/topics/dicom-completions",
}

# Entries that can never match any destination: the function must refuse to start with them.
NEVER_MATCH = [
    "gs://exports/a//b",
    "gs://exports//a",
    "gs://exports/./a",
    "gs://exports/a/..",
    "gs://exports/a*",
    "gs://exports/a?b",
    "gs://exports/[ab]",
    "gs://exports/a#b",
    "gs://Exports",
    "gs://ex",
    "gs://a..b",
    "gs://google-exports",
    "gs://192.168.0.1",
    "gs://" + "a" * 64,
    "s3://exports",
    "gs:/exports",
]

ACCEPTED = [
    "gs://exports",
    "gs://exports/",
    "gs://exports/research/cohort-1",
    "gs://exports/research/cohort-1//",
    "gs://my.exports.example/a b/ü",
    "gs://" + "a" * 63,
    "gs://" + ".".join(["a" * 63] * 3),
]


@pytest.mark.parametrize("entry", NEVER_MATCH)
def test_an_entry_that_cannot_match_stops_the_function_at_start(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="DICOM_EXPORT_ALLOWED_DESTINATIONS"):
        Settings.from_env({**BASE, "DICOM_EXPORT_ALLOWED_DESTINATIONS": f"gs://fine, {entry}"},
                          "export_dicom_on_message")


@pytest.mark.parametrize("entry", ACCEPTED)
def test_an_accepted_entry_admits_itself_and_what_lies_below_it(entry: str) -> None:
    settings = Settings.from_env({**BASE, "DICOM_EXPORT_ALLOWED_DESTINATIONS": entry}, "export_dicom_on_message")
    (allowed,) = settings.export_allowed_destinations
    assert not allowed.endswith("/")
    for destination in (allowed, allowed + "/x", allowed + "/x/y"):
        assert destination_allowed(destination, settings.export_allowed_destinations), destination
        request = json.dumps({"destination": destination}).encode()
        parsed = parse_export_request(request, allowed_destinations=settings.export_allowed_destinations)
        assert parsed.destination == destination
    # Whole segments only: a sibling with the same leading characters stays outside.
    sibling = allowed + "x" if "/" in allowed[5:] else None
    if sibling:
        with pytest.raises(InvalidExportRequestError, match="not inside an allowed prefix"):
            parse_export_request(json.dumps({"destination": sibling}).encode(),
                                 allowed_destinations=settings.export_allowed_destinations)
