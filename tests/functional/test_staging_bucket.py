"""Staged copies in a bucket of their own (`DICOM_STAGING_BUCKET`, docs/decisions/0754): copied,
imported and deleted there, and jobs queued while they went to the state bucket still finish."""

from __future__ import annotations

from dataclasses import replace

from tests import dicom_factory
from tests.functional.cloud_limits import CloudConditions, Limits
from tests.functional.scenarios import led, staging_window
from tests.functional.world import STATE, World

STAGING = "staging"


def _blocked(w: World) -> tuple[object, object]:
    """An import holding the only slot; returns it and an instance to upload with."""
    a = w.instance("a")
    w.deliver(w.upload("blocker/one.dcm"), a)
    w.sim.run_until_idle()
    [blocker] = w.hc.running
    w.sim.advance(w.settings.debounce_seconds)
    return blocker, a


def test_copies_go_to_the_staging_bucket_are_imported_from_it_and_deleted_there() -> None:
    w = World(cloud=lambda sim: CloudConditions(sim, limits=Limits()), staging_bucket=STAGING,
              max_concurrent_operations=1)
    try:
        blocker, a = _blocked(w)
        first = led(staging_window(w, 0, [a]))
        grown = led(staging_window(w, 1, [a, w.instance()]))
        assert first.staged == 2 and grown.grown == first.jobs[0] and grown.staged == 2
        copies = w.store.names(STAGING, "staging/")
        assert len(copies) == 4 and w.state("staging/") == []
        w.hc.finish(blocker.name)  # type: ignore[attr-defined]
        w.settle()
        w.check_invariants()
        staged_import = [op for op in w.hc.operations.values() if op.uri.startswith(f"gs://{STAGING}/staging/")]
        assert len(staged_import) == 1 and len(staged_import[0].objects) == 4
        assert w.store.names(STAGING, "") == [] and w.state("cleanup/") == []
        assert w.cloud is not None
        written = w.cloud.observed.writes_per_second
        assert sum(written[STAGING].values()) == 4 + 4  # a copy and a delete per staged file, nothing else
    finally:
        w.close()


def test_a_job_queued_with_its_copies_in_the_state_bucket_grows_and_is_cleaned_up_there() -> None:
    w = World(max_concurrent_operations=1)
    blocker, a = _blocked(w)
    first = led(staging_window(w, 0, [a]))
    assert len(w.state("staging/")) == 2
    # The deployment now stages into a bucket of its own: the queued job keeps its bucket.
    w.settings = replace(w.settings, staging_bucket=STAGING)
    grown = led(staging_window(w, 1, [w.instance()]))
    assert grown.grown == first.jobs[0] and len(w.state("staging/")) == 4 and w.store.names(STAGING, "") == []
    w.hc.finish(blocker.name)  # type: ignore[attr-defined]
    w.settle()
    w.check_invariants()
    assert w.state("staging/") == [] and w.state("cleanup/") == []
    # A window planned after the change stages into the staging bucket.
    w.sim.advance(w.settings.debounce_seconds)
    later = led(staging_window(w, 2, [w.instance()]))
    assert later.staged == 2 and len(w.store.names(STAGING, "staging/")) == 2 and w.state("staging/") == []
    w.settle()
    w.check_invariants()
    assert w.store.names(STAGING, "") == []


def test_a_cleanup_record_naming_another_bucket_deletes_nothing() -> None:
    w = World(staging_bucket=STAGING)
    w.store.put("uploads", "staging/keep.dcm", b"x")
    w.store.write(STATE, "cleanup/forged.json", {"prefix": "staging/", "bucket": "uploads"})
    w.poll()
    w.sim.run_until_idle()
    assert w.store.names("uploads", "staging/") == ["staging/keep.dcm"] and w.state("cleanup/") == []


def test_the_copies_of_a_growth_undone_by_a_starter_are_deleted_from_the_staging_bucket() -> None:
    w = World(staging_bucket=STAGING, max_concurrent_operations=1)
    blocker, a = _blocked(w)
    staging_window(w, 0, [a])
    w.faults.stall(w.settings.claim_lease_seconds * 3, method="write", name=".grown-")  # after the copies
    w.store.put("uploads", "mig/w01/m.dcm", dicom_factory.instance())
    w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    assert w.faults.fired
    stalled = {name.split("/")[2] for name in w.store.names(STAGING, "staging/") if name.count("/") == 3}
    assert len(stalled) == 1
    w.hc.finish(blocker.name)  # type: ignore[attr-defined]
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    w.poll()  # undoes the stalled hold (its copies go), takes the window over, grows the job anew
    batches = {name.split("/")[2] for name in w.store.names(STAGING, "staging/") if name.count("/") == 3}
    assert batches and not batches & stalled
    w.settle()
    w.check_invariants()
