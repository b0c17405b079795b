"""The pure rules of coalescing (functions/imports/job_record.py): which queued jobs may grow, and the records."""

from __future__ import annotations

from typing import Any

from functions.imports import job_record


def _pending(**job: Any) -> dict[str, Any]:
    base = {"job_id": "J", "kind": "import", "staging_prefix": "staging/J/", "manifest": "manifests/J.json",
            "object_count": 3}
    return {"job": {**base, **job}, "state": "PENDING"}


def test_only_a_never_attempted_pending_staging_import_of_the_same_storage_class_grows() -> None:
    assert job_record.growable(_pending(), None)
    assert not job_record.growable(_pending(), "ARCHIVE")
    assert job_record.growable(_pending(storage_class="ARCHIVE"), "ARCHIVE")
    assert not job_record.growable(dict(_pending(), state="STARTING"), None)
    assert not job_record.growable(dict(_pending(), state="UNCONFIRMED"), None)
    assert not job_record.growable(dict(_pending(), attempted=12.0), None)  # its LRO may yet turn up
    assert not job_record.growable(_pending(staging_prefix=""), None)  # a glob: its URI is fixed
    assert not job_record.growable(_pending(redrive_of="op"), None)
    assert not job_record.growable(_pending(kind="export"), None)
    assert not job_record.growable(_pending(object_count=job_record.MAX_GROWN_OBJECTS), None)
    assert not job_record.growable(job_record.closing(_pending()), None)  # a starter waits for it


def test_several_windows_may_hold_a_job_up_to_the_limit_also_while_a_starter_undoes_one() -> None:
    record = _pending()
    for k in range(job_record.MAX_HOLDS):
        assert job_record.growable(record, None)
        record = job_record.held(record, f"B{k}", 10.0)
    assert not job_record.growable(record, None)
    assert job_record.growable(job_record.released(record, "B0"), None)
    # A hold a starter undoes is that batch's alone: other windows grow the job meanwhile.
    assert job_record.growable(job_record.cancelled(job_record.held(_pending(), "B", 10.0), "B"), None)


def test_a_commit_takes_out_its_own_hold_only_and_records_the_batch_and_its_objects() -> None:
    held = job_record.held(job_record.held(_pending(), "B1", 10.0), "B2", 20.0)
    assert job_record.holds_of(held) == {"B1": job_record.Hold("B1", 10.0), "B2": job_record.Hold("B2", 20.0)}
    assert job_record.holds_of(job_record.cancelled(held, "B1"))["B1"] == job_record.Hold("B1", 10.0, cancelled=True)
    assert job_record.live_holds(job_record.cancelled(held, "B1"), 5.0) == [job_record.Hold("B2", 20.0)]
    assert job_record.live_holds(held, 15.0) == [job_record.Hold("B2", 20.0)]
    done = job_record.committed(held, "B1", 4)
    assert set(job_record.holds_of(done)) == {"B2"}
    assert done["job"]["grown"] == ["B1"] and done["job"]["object_count"] == 7
    both = job_record.committed(done, "B2", 1)
    assert "holds" not in both and both["job"]["grown"] == ["B1", "B2"] and both["job"]["object_count"] == 8
    assert job_record.growable(both, None)


def test_the_single_hold_of_an_older_version_is_read_and_replaced() -> None:
    legacy = dict(_pending(), hold={"batch": "B0", "until": 10.0})
    assert job_record.holds_of(legacy) == {"B0": job_record.Hold("B0", 10.0)}
    both = job_record.held(legacy, "B1", 20.0)
    assert "hold" not in both and set(job_record.holds_of(both)) == {"B0", "B1"}
    assert job_record.holds_of(job_record.released(legacy, "B0")) == {}


def test_manifest_names_say_their_job_and_growth() -> None:
    grown = job_record.grown_manifest("p/manifests/20260101T000000000Z-00000001-00.json", "B")
    assert grown == "p/manifests/20260101T000000000Z-00000001-00.grown-B.json"
    assert job_record.manifest_job_id(grown) == "20260101T000000000Z-00000001-00"
    assert job_record.manifest_batch(grown) == "B"
    assert job_record.manifest_batch("p/manifests/J.adopted-B.json") is None
    assert job_record.manifest_job_id("p/manifests/J.adopted-B.json") == "J"
    assert job_record.batch_prefix("staging/J/", "B") == "staging/J/B/"
