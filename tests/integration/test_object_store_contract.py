"""The functional tests' fake Cloud Storage held against the real client on fake-gcs-server.

The same assertions run on `functions.gcp.gcs.Gcs` (over HTTP to fake-gcs-server) and on
`tests.functional.fakes.FakeObjectStore`: what the functional layer assumes about generations,
`ifGenerationMatch`, listings and copies is what the real client does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from functions.gcp.clients import ObjectStore


@pytest.fixture(params=["fake-gcs-server", "in-memory fake"])
def store(request: pytest.FixtureRequest, fake_gcs: str) -> Iterator[tuple[ObjectStore, str]]:
    bucket = f"contract-{uuid.uuid4().hex[:10]}"
    if request.param == "fake-gcs-server":
        from google.cloud import storage

        from functions.gcp.gcs import Gcs

        client = storage.Client(project="local-project")
        client.create_bucket(bucket)
        yield Gcs(client, timeout=20), bucket
    else:
        from tests.functional.fakes import FakeObjectStore
        from tests.functional.faults import Faults
        from tests.functional.sim import Simulation

        sim = Simulation(1_767_225_600.0)
        yield FakeObjectStore(sim.clock, Faults(sim)), bucket


def test_create_is_create_if_absent_and_read_returns_the_generation(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    generation = s.create(bucket, "claims/w.json", {"holder": "a"})
    assert isinstance(generation, int) and generation > 0
    assert s.create(bucket, "claims/w.json", {"holder": "b"}) is None
    record = s.read(bucket, "claims/w.json")
    assert record is not None and (record.data, record.generation) == ({"holder": "a"}, generation)
    assert s.read(bucket, "claims/missing.json") is None


def test_replace_and_delete_only_at_the_generation(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    first = s.create(bucket, "jobs/j.json", {"state": "PENDING"})
    assert first is not None
    assert s.replace(bucket, "jobs/j.json", {"state": "X"}, first + 1) is None
    second = s.replace(bucket, "jobs/j.json", {"state": "STARTING"}, first)
    assert second is not None and second != first
    record = s.read(bucket, "jobs/j.json")
    assert record is not None and record.data == {"state": "STARTING"}
    assert s.replace(bucket, "jobs/missing.json", {"state": "X"}, first) is None
    assert s.delete(bucket, "jobs/j.json", second) is True
    assert s.delete(bucket, "jobs/j.json") is False
    s.write(bucket, "jobs/j.json", {"state": "again"})
    s.write(bucket, "jobs/j.json", {"state": "over"})
    record = s.read(bucket, "jobs/j.json")
    assert record is not None and record.data == {"state": "over"}


def test_a_delete_at_a_stale_generation_is_refused(store: tuple[ObjectStore, str], request: pytest.FixtureRequest
                                                   ) -> None:
    if "fake-gcs-server" in request.node.name:
        # Cloud Storage answers 412; the bundled fake-gcs-server ignores ifGenerationMatch on
        # DELETE (fsouza/fake-gcs-server#1282). Strict: a fixed server makes this test fail until
        # the marker goes. Until then the integration tests cannot show a refused stale delete;
        # the functional tests (on the in-memory fake, which refuses it) do.
        request.applymarker(pytest.mark.xfail(strict=True, reason="fake-gcs-server: no ifGenerationMatch on DELETE"))
    s, bucket = store
    first = s.create(bucket, "slots/0", {"job": "a"})
    assert first is not None
    second = s.replace(bucket, "slots/0", {"job": "b"}, first)
    assert second is not None
    assert s.delete(bucket, "slots/0", first) is False
    record = s.read(bucket, "slots/0")
    assert record is not None and record.data == {"job": "b"}


def test_listings_by_prefix_delimiter_and_page_size(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    for name in ("w/b/2.json", "w/a/1.json", "w/a/0.json", "w/top.json", "x/other.json"):
        s.create(bucket, name, b"", metadata={"name": name})
    listed = list(s.list(bucket, "w/"))
    assert [i.name for i in listed] == ["w/a/0.json", "w/a/1.json", "w/b/2.json", "w/top.json"]
    assert all(i.metadata == {"name": i.name} and i.time_created > 0 and i.generation > 0 for i in listed)
    assert [i.name for i in s.list(bucket, "w/", recursive=False)] == ["w/top.json"]
    assert [i.name for i in s.list(bucket, "w/", max_results=2)] == ["w/a/0.json", "w/a/1.json"]
    assert s.list_prefixes(bucket, "w/") == ["w/a/", "w/b/"]
    assert s.list_prefixes(bucket, "") == ["w/", "x/"]
    assert list(s.list(bucket, "none/")) == []


def test_copy_and_download_address_one_generation(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    first = s.create(bucket, "up/a.dcm", b"0123456789")
    assert first is not None
    s.copy(bucket, "up/a.dcm", first, bucket, "staging/0.dcm")
    assert s.download(bucket, "staging/0.dcm") == b"0123456789"
    assert s.download(bucket, "up/a.dcm", generation=first, end=3) == b"0123"
    s.write(bucket, "up/a.dcm", b"replaced")
    with pytest.raises(gexc.NotFound):
        s.copy(bucket, "up/a.dcm", first, bucket, "staging/1.dcm")
    with pytest.raises(gexc.NotFound):
        s.download(bucket, "up/a.dcm", generation=first)
    with pytest.raises(gexc.NotFound):
        s.download(bucket, "up/missing.dcm")


def test_a_streamed_text_object_reads_back(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    writer: Any = s.open_writer(bucket, "filters/f.txt")
    with writer as out:
        out.write("/studies/1\n")
        out.write("/studies/2\n")
    assert s.download(bucket, "filters/f.txt") == b"/studies/1\n/studies/2\n"


def test_a_range_read_returns_only_that_range(store: tuple[ObjectStore, str]) -> None:
    s, bucket = store
    s.write(bucket, "up/big.dcm", b"0123456789")
    assert s.download(bucket, "up/big.dcm", start=3, end=5) == b"345"
    assert s.download(bucket, "up/big.dcm", start=8, end=100) == b"89"  # short at the end
    assert s.download(bucket, "up/big.dcm", start=7) == b"789"
    assert s.download(bucket, "up/big.dcm", start=10, end=19) == b""  # at the end: nothing, no error


def test_a_group_window_record_comes_back_from_a_listing_with_every_upload(store: tuple[ObjectStore, str]) -> None:
    """A leader learns a window from one listing: the group record's metadata (decision 0770) must
    come back whole from a list call, long non-ASCII names included, next to a one-upload record."""
    from functions.imports import window_records
    from functions.imports.window_records import Entry

    s, bucket = store
    group = [Entry("uploads", f"studie/ü/{i:03d}/" + "x" * 80 + ".dcm", 1_700_000_000_000_000 + i, 1_767_225_600.25 + i)
             for i in range(window_records.MAX_GROUP_UPLOADS)]
    while window_records.group_bytes(group) > window_records.MAX_GROUP_BYTES:
        group.pop()
    assert len(group) >= 20
    s.create(bucket, "windows/W/group.json", {}, metadata=window_records.encode(group))
    s.create(bucket, "windows/W/0123abcd.json", {}, metadata={
        "bucket": "uploads", "name": "old/one.dcm", "generation": "7", "timeCreated": "1767225600.000000"})
    listed = {i.name: window_records.parse(i.metadata) for i in s.list(bucket, "windows/W/")}
    assert listed == {"windows/W/group.json": group,
                      "windows/W/0123abcd.json": [Entry("uploads", "old/one.dcm", 7, 1_767_225_600.0)]}
