"""The pure rules of coalescing (functions/coalescing.py): which queued jobs may grow, and the records."""

from __future__ import annotations

from typing import Any

from functions import coalescing


def _pending(**job: Any) -> dict[str, Any]:
    base = {"job_id": "J", "kind": "import", "staging_prefix": "staging/J/", "manifest": "manifests/J.json",
            "object_count": 3}
    return {"job": {**base, **job}, "state": "PENDING"}


def test_only_a_never_attempted_pending_staging_import_of_the_same_storage_class_grows() -> None:
    assert coalescing.growable(_pending(), None)
    assert not coalescing.growable(_pending(), "ARCHIVE")
    assert coalescing.growable(_pending(storage_class="ARCHIVE"), "ARCHIVE")
    assert not coalescing.growable(dict(_pending(), state="STARTING"), None)
    assert not coalescing.growable(dict(_pending(), state="UNCONFIRMED"), None)
    assert not coalescing.growable(dict(_pending(), attempted=12.0), None)  # its LRO may yet turn up
    assert not coalescing.growable(_pending(staging_prefix=""), None)  # a glob: its URI is fixed
    assert not coalescing.growable(_pending(redrive_of="op"), None)
    assert not coalescing.growable(_pending(kind="export"), None)
    assert not coalescing.growable(_pending(object_count=coalescing.MAX_GROWN_OBJECTS), None)
    assert not coalescing.growable(coalescing.held(_pending(), "B", 10.0), None)


def test_a_commit_drops_the_hold_and_records_the_batch_and_its_objects() -> None:
    held = coalescing.held(_pending(), "B1", 10.0)
    assert coalescing.hold_of(held) == coalescing.Hold("B1", 10.0)
    assert coalescing.hold_of(coalescing.cancelled(held)) == coalescing.Hold("B1", 10.0, cancelled=True)
    done = coalescing.committed(held, "B1", 4)
    assert "hold" not in done and done["job"]["grown"] == ["B1"] and done["job"]["object_count"] == 7
    again = coalescing.committed(coalescing.held(done, "B2", 20.0), "B2", 1)
    assert again["job"]["grown"] == ["B1", "B2"] and again["job"]["object_count"] == 8
    assert coalescing.growable(again, None)


def test_manifest_names_say_their_job_and_growth() -> None:
    grown = coalescing.grown_manifest("p/manifests/20260101T000000000Z-00000001-00.json", "B")
    assert grown == "p/manifests/20260101T000000000Z-00000001-00.grown-B.json"
    assert coalescing.manifest_job_id(grown) == "20260101T000000000Z-00000001-00"
    assert coalescing.manifest_batch(grown) == "B"
    assert coalescing.manifest_batch("p/manifests/J.adopted-B.json") is None
    assert coalescing.manifest_job_id("p/manifests/J.adopted-B.json") == "J"
    assert coalescing.batch_prefix("staging/J/", "B") == "staging/J/B/"
