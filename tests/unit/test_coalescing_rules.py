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
    assert not coalescing.growable(coalescing.closing(_pending()), None)  # a starter waits for it


def test_several_windows_may_hold_a_job_up_to_the_limit_but_not_one_a_starter_undoes() -> None:
    record = _pending()
    for k in range(coalescing.MAX_HOLDS):
        assert coalescing.growable(record, None)
        record = coalescing.held(record, f"B{k}", 10.0)
    assert not coalescing.growable(record, None)
    assert coalescing.growable(coalescing.released(record, "B0"), None)
    assert not coalescing.growable(coalescing.cancelled(coalescing.held(_pending(), "B", 10.0), "B"), None)


def test_a_commit_takes_out_its_own_hold_only_and_records_the_batch_and_its_objects() -> None:
    held = coalescing.held(coalescing.held(_pending(), "B1", 10.0), "B2", 20.0)
    assert coalescing.holds_of(held) == {"B1": coalescing.Hold("B1", 10.0), "B2": coalescing.Hold("B2", 20.0)}
    assert coalescing.holds_of(coalescing.cancelled(held, "B1"))["B1"] == coalescing.Hold("B1", 10.0, cancelled=True)
    assert coalescing.live_holds(coalescing.cancelled(held, "B1"), 5.0) == [coalescing.Hold("B2", 20.0)]
    assert coalescing.live_holds(held, 15.0) == [coalescing.Hold("B2", 20.0)]
    done = coalescing.committed(held, "B1", 4)
    assert set(coalescing.holds_of(done)) == {"B2"}
    assert done["job"]["grown"] == ["B1"] and done["job"]["object_count"] == 7
    both = coalescing.committed(done, "B2", 1)
    assert "holds" not in both and both["job"]["grown"] == ["B1", "B2"] and both["job"]["object_count"] == 8
    assert coalescing.growable(both, None)


def test_the_single_hold_of_an_older_version_is_read_and_replaced() -> None:
    legacy = dict(_pending(), hold={"batch": "B0", "until": 10.0})
    assert coalescing.holds_of(legacy) == {"B0": coalescing.Hold("B0", 10.0)}
    both = coalescing.held(legacy, "B1", 20.0)
    assert "hold" not in both and set(coalescing.holds_of(both)) == {"B0", "B1"}
    assert coalescing.holds_of(coalescing.released(legacy, "B0")) == {}


def test_manifest_names_say_their_job_and_growth() -> None:
    grown = coalescing.grown_manifest("p/manifests/20260101T000000000Z-00000001-00.json", "B")
    assert grown == "p/manifests/20260101T000000000Z-00000001-00.grown-B.json"
    assert coalescing.manifest_job_id(grown) == "20260101T000000000Z-00000001-00"
    assert coalescing.manifest_batch(grown) == "B"
    assert coalescing.manifest_batch("p/manifests/J.adopted-B.json") is None
    assert coalescing.manifest_job_id("p/manifests/J.adopted-B.json") == "J"
    assert coalescing.batch_prefix("staging/J/", "B") == "staging/J/B/"
