"""What a window record says (both shapes) and how uploads are grouped into one (decision 0770)."""

from __future__ import annotations

import json

import pytest

from functions.core.windows import object_key
from functions.imports import window_records
from functions.imports.window_records import MAX_GROUP_BYTES, MAX_GROUP_UPLOADS, Entry, encode, fits, parse

# Cloud Storage's limits on one object's custom metadata: keys and values together, and one value.
GCS_CUSTOM_METADATA_BYTES = 8 * 1024
GCS_CUSTOM_METADATA_VALUE_BYTES = 4 * 1024


def _entry(i: int, name: str = "") -> Entry:
    return Entry("uploads", name or f"study/series/IM{i:05d}.dcm", 1_700_000_000_000_000 + i, 1_767_225_600.5 + i)


def _grouped(entries: list[Entry]) -> list[list[Entry]]:
    groups: list[list[Entry]] = []
    for entry in entries:
        if not groups or not fits(groups[-1], entry):
            groups.append([])
        groups[-1].append(entry)
    return groups


def test_a_group_record_lists_its_uploads_with_their_keys() -> None:
    entries = [_entry(i) for i in range(3)]
    assert parse(encode(entries)) == entries
    keys = [object_key(e.bucket, e.name, e.generation) for e in entries]
    assert [e.key for e in parse(encode(entries)) or []] == keys
    assert [e.time_created for e in parse(encode(entries)) or []] == [e.time_created for e in entries]


def test_a_one_upload_record_written_before_groups_is_still_read() -> None:
    old = {"bucket": "uploads", "name": "a/b.dcm", "generation": "17", "timeCreated": "1767225600.250000"}
    assert parse(old) == [Entry("uploads", "a/b.dcm", 17, 1767225600.25)]
    assert parse({"bucket": "uploads", "name": "a/b.dcm", "generation": "17"}) == [Entry("uploads", "a/b.dcm", 17)]


@pytest.mark.parametrize("metadata", [
    None, {}, {"bucket": "uploads", "name": "x.dcm"}, {"bucket": "uploads", "name": "x", "generation": "g"},
    {"uploads": "not json"}, {"uploads": "[]"}, {"uploads": '{"a": 1}'}, {"uploads": '[["uploads", "x"]]'},
    {"uploads": '[["uploads", "x", "nan-gen", ""]]'}, {"uploads": '[["", "x", "1", ""]]'},
])
def test_a_record_that_says_nothing_readable_is_none(metadata: dict[str, str] | None) -> None:
    assert parse(metadata) is None


def test_groups_are_capped_by_count() -> None:
    groups = _grouped([_entry(i, name=f"s/{i}.dcm") for i in range(3 * MAX_GROUP_UPLOADS + 1)])
    assert [len(g) for g in groups] == [MAX_GROUP_UPLOADS] * 3 + [1]


def test_groups_of_long_names_are_capped_by_bytes_under_cloud_storages_limit() -> None:
    entries = [_entry(i, name=f"{i:04d}/" + "ü" * 300 + ".dcm") for i in range(40)]  # ~620 bytes each
    groups = _grouped(entries)
    assert len(groups) > 1 and all(len(g) < MAX_GROUP_UPLOADS for g in groups)
    for group in groups:
        metadata = encode(group)
        size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        assert size <= MAX_GROUP_BYTES < GCS_CUSTOM_METADATA_VALUE_BYTES
        assert parse(metadata) == group
    assert [e for g in groups for e in g] == entries


def test_a_lone_upload_with_the_longest_escaped_name_still_fits_cloud_storages_limit() -> None:
    longest = Entry("b" * 222, "\x01" * 1024, 2**63 - 1, 4_102_444_800.123456)  # 6 bytes per byte in JSON
    metadata = encode([longest])
    assert sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) <= GCS_CUSTOM_METADATA_BYTES
    assert all(len(v.encode()) <= GCS_CUSTOM_METADATA_VALUE_BYTES for v in metadata.values())
    other = Entry("b" * 222, "\x02" * 1024, 2**63 - 2, 4_102_444_800.0)
    assert fits([], longest) and not fits([longest], other)
    assert parse(metadata) == [longest]


def test_the_encoding_is_one_json_array_per_upload() -> None:
    [row] = json.loads(encode([_entry(7)])[window_records.UPLOADS_KEY])
    assert row == ["uploads", "study/series/IM00007.dcm", str(1_700_000_000_000_007), "1767225607.500000"]


def test_record_names_are_never_reused() -> None:
    names = {window_records.record_name("windows/W/") for _ in range(1000)}
    assert len(names) == 1000 and all(n.startswith("windows/W/") and n.endswith(".json") for n in names)
