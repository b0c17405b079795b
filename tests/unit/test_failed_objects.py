"""functions.imports.failed_objects on plain inputs: header rules, the data set digest, bounded reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from functions.core.errors import api_error
from functions.imports import failed_objects as fo
from tests import dicom_factory

GIB = 1024**3


class HugeObjects:
    """An ObjectStore of virtual objects (a prefix, then filler up to `size`) that records reads."""

    def __init__(self, objects: dict[str, tuple[bytes, int]]) -> None:
        self.objects = objects
        self.read: dict[str, int] = {}

    def download(self, bucket: str, name: str, *, generation: int | None = None, start: int = 0,
                 end: int | None = None) -> bytes:
        prefix, size = self.objects[name]
        stop = size if end is None else min(end + 1, size)
        if stop - start > 64 * 1024 * 1024:
            raise AssertionError(f"an unbounded read of {name}: {stop - start} bytes")
        self.read[name] = self.read.get(name, 0) + max(stop - start, 0)
        body = prefix[start:stop]
        return body + b"\0" * (stop - start - len(body))


class Store:
    def __init__(self, stored: dict[str, bytes] | None = None, *, fail: bool = False) -> None:
        self.stored = stored or {}
        self.fail = fail

    def instance_exists(self, study: str, series: str, sop: str) -> bool:
        if self.fail:
            raise api_error(503, "unavailable")
        return sop in self.stored

    def retrieve_instance(self, study: str, series: str, sop: str) -> Iterator[bytes]:
        if sop not in self.stored:
            raise api_error(404, "not found", status="NOT_FOUND")
        yield self.stored[sop]


def _finder(objects: dict[str, tuple[bytes, int]], store: Store) -> tuple[fo.FailedObjectFinder, HugeObjects]:
    gcs = HugeObjects(objects)
    return fo.FailedObjectFinder(gcs, store), gcs  # type: ignore[arg-type]


def _entry(name: str) -> dict[str, Any]:
    return {"uri": f"gs://up/{name}"}


def test_a_multi_gigabyte_object_that_is_not_dicom_costs_one_small_read() -> None:
    finder, gcs = _finder({"x.dcm": (b"\x89PNG" + b"\0" * 200, 5 * GIB)}, Store())
    [fate] = finder.account([_entry("x.dcm")], api_failures=1).fates
    assert (fate.outcome, fate.reason) == (fo.FAILED, fo.NOT_DICOM)
    assert gcs.read["x.dcm"] == 64 * 1024


def test_a_huge_dicom_prefix_without_uids_is_undecided_after_at_most_the_header_limit() -> None:
    # A Part 10 preamble and meta, then filler where the data set should be: never the UIDs.
    head = dicom_factory.instance()[:200]
    finder, gcs = _finder({"big.dcm": (head, 3 * GIB)}, Store())
    [fate] = finder.account([_entry("big.dcm")], api_failures=1).fates
    assert fate.outcome == fo.UNDECIDED and fate.reason == fo.TOO_LARGE
    assert gcs.read["big.dcm"] <= 2 * fo.HEADER_LIMIT  # growing reads: 64 KiB, 256 KiB, 1 MiB, 4 MiB


def test_a_stored_object_is_compared_only_when_the_counter_leaves_failures_unnamed() -> None:
    mine = dicom_factory.instance(sop="1.2.3", study="1.2", series="1.2.9", patient_id="A")
    theirs = dicom_factory.instance(sop="1.2.3", study="1.2", series="1.2.9", patient_id="B")
    objects = {"a.dcm": (mine, len(mine))}
    finder, gcs = _finder(objects, Store({"1.2.3": theirs}))
    # The API counted no failure: the object is its own instance, read once for its header only.
    assert finder.account([_entry("a.dcm")], api_failures=0).fates == [fo.Fate("gs://up/a.dcm", fo.LANDED)]
    assert gcs.read["a.dcm"] == len(mine)
    # The API counted one failure that nothing else explains: compare, and it is the conflict.
    [fate] = finder.account([_entry("a.dcm")], api_failures=1).fates
    assert (fate.outcome, fate.reason) == (fo.FAILED, fo.UID_CONFLICT)
    # Same bytes in the store: landed.
    finder, _ = _finder(objects, Store({"1.2.3": mine}))
    assert finder.account([_entry("a.dcm")], api_failures=None).fates[0].outcome == fo.LANDED


def test_more_differences_than_the_counter_allows_are_undecided_not_failed() -> None:
    mine = dicom_factory.instance(sop="1.2.3", study="1.2", series="1.2.9", patient_id="A")
    theirs = dicom_factory.instance(sop="1.2.3", study="1.2", series="1.2.9", patient_id="B")
    other = b"not dicom" * 20
    finder, _ = _finder({"a.dcm": (mine, len(mine)), "n.dcm": (other, len(other))}, Store({"1.2.3": theirs}))
    fates = finder.account([_entry("a.dcm"), _entry("n.dcm")], api_failures=1).fates
    # The non-DICOM object explains the one failure, so the stored one counts as landed.
    assert [(f.outcome, f.reason) for f in fates] == [(fo.LANDED, None), (fo.FAILED, fo.NOT_DICOM)]
    finder, _ = _finder({"a.dcm": (mine, len(mine))}, Store({"1.2.3": theirs}))
    account = finder.account([_entry("a.dcm"), _entry("a.dcm")], api_failures=1)
    assert [f.outcome for f in account.fates] == [fo.UNDECIDED, fo.UNDECIDED]
    assert {f.reason for f in account.fates} == {fo.COUNTER_MISMATCH}


def test_an_unreadable_object_or_an_unreachable_store_is_undecided() -> None:
    data = dicom_factory.instance()
    finder, _ = _finder({}, Store())
    assert finder.account([_entry("gone.dcm")], api_failures=None).fates[0].reason == fo.UNREADABLE
    finder, _ = _finder({"a.dcm": (data, len(data))}, Store(fail=True))
    assert finder.account([_entry("a.dcm")], api_failures=None).fates[0].reason == fo.STORE_UNAVAILABLE


def test_held_entries_fail_with_their_reason_without_a_read() -> None:
    finder, gcs = _finder({}, Store())
    [fate] = finder.account([{"uri": "gs://up/c.dcm", "held": fo.UID_CONFLICT}], api_failures=0).fates
    assert (fate.outcome, fate.reason, fate.held) == (fo.FAILED, fo.UID_CONFLICT, True)
    assert gcs.read == {}


@pytest.mark.parametrize("chunk", [1, 7, 143, 144, 145, 4096])
def test_the_digest_skips_the_file_meta_group_however_the_stream_is_cut(chunk: int) -> None:
    data = dicom_factory.instance()
    start = 144 + int.from_bytes(data[140:144], "little")
    expected = hashlib.sha256(data[start:]).hexdigest()
    assert fo.digest((data[i:i + chunk] for i in range(0, len(data), chunk)), 10**9) == expected
    # Another preamble and file meta group, the same data set: the same digest.
    other = b"\x01" * 128 + data[128:]
    assert fo.digest([other], 10**9) == expected
    assert fo.digest([b"short"], 10**9) == hashlib.sha256(b"short").hexdigest()
    assert fo.digest([data], 10) is None


def test_a_beginning_cut_inside_a_uid_never_gives_a_shortened_uid() -> None:
    data = dicom_factory.instance()
    full = fo.read_uids(data)
    assert full is not None
    found = {cut: fo.read_uids(data[:cut], complete=False) for cut in range(132, len(data))}
    assert {uids for uids in found.values() if uids is not None} <= {full}
    assert found[len(data) - 1] == full  # the UIDs come before the pixel data: a prefix suffices


def test_header_rules() -> None:
    data = dicom_factory.instance()
    assert fo.read_header(data, complete=True).uids is not None
    assert fo.read_header(data[:100], complete=False).need_more
    assert fo.read_header(b"x" * 100, complete=True).reason == fo.NOT_DICOM
    assert fo.read_header(b"\0" * 128 + b"NOPE" + b"\0" * 100, complete=False).reason == fo.NOT_DICOM
    assert fo.read_header(data[:160], complete=True).reason == fo.UNPARSEABLE
    assert fo.attributes_readable(data)


def test_values_pydicom_complains_about_never_reach_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    # badVR.dcm holds an IS element of "1A"; pydicom logs each invalid value it reads, value included.
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("badVR.dcm"), "rb").read()  # noqa: SIM115 - a small test file
    finder, _ = _finder({"badVR.dcm": (data, len(data))}, Store())
    with caplog.at_level("DEBUG"):
        [fate] = finder.account([_entry("badVR.dcm")], api_failures=1).fates
    assert (fate.outcome, fate.reason) == (fo.FAILED, fo.UNPARSEABLE)
    assert not [r for r in caplog.records if "1A" in r.getMessage()], [r.getMessage() for r in caplog.records]


class _OneUnitPerRun:
    """A poller run's budget that allows one unit of each kind (a chunk), then none."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def allows(self, kind: str) -> bool:
        if kind in self.started:
            return False
        self.started.append(kind)
        return True


def _in_runs(finder: fo.FailedObjectFinder, entries: list[dict[str, Any]], api_failures: int | None,
             monkeypatch: pytest.MonkeyPatch) -> tuple[fo.Accounting, int]:
    """Accounts for `entries` one chunk per run, the progress kept as JSON between runs."""
    kept: dict[str, Any] | None = None
    for runs in range(1, 100):
        budget = fo.RunBudget(lambda: 0.0, 0.0, 1 << 30)
        once = _OneUnitPerRun()
        monkeypatch.setattr(budget, "allows", once.allows)
        progress = fo.Progress.from_json(kept, len(entries)) if kept else fo.Progress(len(entries))
        progress = finder.account_within(entries, api_failures=api_failures, progress=progress, budget=budget)
        if progress.done(api_failures):
            return progress.accounting([str(e["uri"]) for e in entries], api_failures), runs
        kept = json.loads(json.dumps(progress.to_json()))
    raise AssertionError("never done")


def test_an_accounting_cut_into_runs_ends_as_in_one_and_reads_each_object_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fo, "CHUNK", 2)
    good = {f"g{i}.dcm": dicom_factory.instance() for i in range(5)}
    objects = {name: (data, len(data)) for name, data in good.items()}
    objects["n.dcm"] = (b"not dicom" * 20, 180)
    stored = {}
    for data in good.values():
        uids = fo.read_uids(data)
        assert uids is not None
        stored[uids[2]] = data
    entries = [_entry(name) for name in objects] + [{"uri": "gs://up/held.dcm", "held": fo.UID_CONFLICT}]
    finder, _ = _finder(objects, Store(stored))
    whole = finder.account(entries, api_failures=1)
    finder, gcs = _finder(objects, Store(stored))
    cut, runs = _in_runs(finder, entries, 1, monkeypatch)
    assert runs == 4 and cut == whole  # 7 objects, 2 a run
    assert [f.reason for f in cut.fates if f.outcome != fo.LANDED] == [fo.NOT_DICOM, fo.UID_CONFLICT]
    assert set(gcs.read) == set(objects) and all(n == objects[name][1] for name, n in gcs.read.items())


def test_a_comparison_cut_into_runs_reads_the_header_again_for_the_uids_it_never_keeps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter leaves failures unnamed, so stored candidates are compared; a later run finds
    their UIDs again in their header (the progress names outcomes only), and the rule that more
    differences than the counter allows are undecided holds across runs."""
    monkeypatch.setattr(fo, "CHUNK", 1)
    mine = dicom_factory.instance(sop="1.2.3", study="1.2", series="1.2.9", patient_id="A")
    theirs = dicom_factory.instance(sop="1.2.3", study="1.2", series="1.2.9", patient_id="B")
    objects = {"a.dcm": (mine, len(mine)), "b.dcm": (mine, len(mine))}
    finder, gcs = _finder(objects, Store({"1.2.3": theirs}))
    entries = [_entry("a.dcm"), _entry("b.dcm")]
    cut, runs = _in_runs(finder, entries, 1, monkeypatch)
    assert runs == 3  # two probes, then two comparisons
    assert [(f.outcome, f.reason) for f in cut.fates] == [(fo.UNDECIDED, fo.COUNTER_MISMATCH)] * 2
    finder, _ = _finder(objects, Store({"1.2.3": theirs}))
    assert finder.account(entries, api_failures=1) == cut


def test_a_kept_progress_names_no_uid_and_one_of_another_job_size_starts_over() -> None:
    data = dicom_factory.instance(sop="1.2.840.99.7", study="1.2.840.99", series="1.2.840.99.5")
    finder, _ = _finder({"a.dcm": (data, len(data))}, Store({"1.2.840.99.7": data}))
    progress = finder.account_within([_entry("a.dcm")], api_failures=None, progress=fo.Progress(1),
                                     budget=fo.unlimited(lambda: 0.0))
    text = json.dumps(progress.to_json())
    assert "1.2.840.99" not in text and progress.done(None)
    assert fo.Progress.from_json(progress.to_json(), 2) == fo.Progress(2)
