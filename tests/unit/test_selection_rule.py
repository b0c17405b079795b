"""One "importable" rule for the finalize handler and the planner (functions.core.selection)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from functions.core import planning
from functions.core.events import STORAGE_FINALIZED, StorageObjectEvent
from functions.core.gcs_wildcards import api_wildcard_match
from functions.core.selection import ignore_reason, is_importable
from functions.settings import Settings

SETTINGS = Settings.from_env({
    "DICOM_STORE": "projects/p/locations/l/datasets/d/dicomStores/s",
    "DICOM_STATE_BUCKET": "dicom-state",
    "DICOM_STATE_PREFIX": "pipeline/",
    "DICOM_IMPORT_PREFIXES": "inbox/,ward/",
}, "import_dicom_on_upload")

CORPUS = [
    ("dicom-upload", "inbox/a.dcm", 10),
    ("dicom-upload", "inbox/a.dcm", 0),
    ("dicom-upload", "inbox/A.DCM", 1),
    ("dicom-upload", "inbox/a.json", 10),
    ("dicom-upload", "inbox/sub/", 0),
    ("dicom-upload", "inbox/sub.dcm/", 10),
    ("dicom-upload", "elsewhere/a.dcm", 10),
    ("dicom-state", "pipeline/inbox/a.dcm", 10),
    ("dicom-state", "inbox/a.dcm", 10),
    ("dicom-upload", "ward/x y.dcm", 5),
]


@pytest.mark.parametrize(("bucket", "name", "size"), CORPUS)
def test_the_handler_and_the_planner_share_one_rule(bucket: str, name: str, size: int) -> None:
    event = StorageObjectEvent("1", STORAGE_FINALIZED, bucket, name, 1, size, datetime(2026, 1, 1, tzinfo=UTC), None)
    assert (ignore_reason(event, SETTINGS) is None) is is_importable(bucket, name, size, SETTINGS)


def test_a_zero_byte_dcm_is_never_matched_by_a_planned_glob() -> None:
    new = [f"inbox/s1/IM000{i}.dcm" for i in range(1, 6)]
    sizes = {"inbox/s1/IM0000.dcm": 0}  # a placeholder left next to the new uploads
    plan = planning.plan_import(new, sizes, eligible=lambda n: is_importable("dicom-upload", n, sizes[n], SETTINGS))
    for uri in plan.uris:
        assert not api_wildcard_match(uri.pattern, "inbox/s1/IM0000.dcm"), uri.pattern
    assert set(plan.staged) | {n for uri in plan.uris for n in uri.new_objects} == set(new)
    # The scenario is one where it matters: with sizes ignored, the cheapest plan is such a glob.
    careless = planning.plan_import(new, sizes, eligible=lambda n: True)
    assert any(api_wildcard_match(uri.pattern, "inbox/s1/IM0000.dcm") for uri in careless.uris)
