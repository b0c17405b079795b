"""The export request contract: every rejection reason, every selector, every MIME type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.core.errors import DropEventError, InvalidEventError, InvalidExportRequestError
from functions.core.export_request import (
    DICOM_TRANSFER_SYNTAXES,
    MAX_REQUEST_BYTES,
    ExportRequest,
    FilterUriSelector,
    QuerySelector,
    ResourcesSelector,
    WholeStore,
    dedup_key,
    destination_allowed,
    filter_lines,
    parse_export_request,
    uid_problem,
)

DEST = "gs://exports/out"


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def request(**fields: Any) -> bytes:
    return encode({"destination": DEST, **fields})


def reason_of(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(InvalidExportRequestError) as info:
        parse_export_request(data, **kwargs)
    assert info.value.reason == str(info.value)
    return info.value.reason


# --- happy paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "selector"),
    [
        ({}, WholeStore()),
        ({"resources": ["/studies/1.2.3"]}, ResourcesSelector(("/studies/1.2.3",))),
        (
            {"resources": ["/studies/1.2.3", "/studies/1.2/series/3.4", "/studies/1.2/series/3/instances/4"]},
            ResourcesSelector(
                ("/studies/1.2.3", "/studies/1.2/series/3.4", "/studies/1.2/series/3/instances/4")
            ),
        ),
        # duplicates dropped, first-seen order kept
        (
            {"resources": ["/studies/2", "/studies/1", "/studies/2", "/studies/1", "/studies/3"]},
            ResourcesSelector(("/studies/2", "/studies/1", "/studies/3")),
        ),
        # single-digit zero components are valid
        ({"resources": ["/studies/0.0.10.0"]}, ResourcesSelector(("/studies/0.0.10.0",))),
        # exactly 64 characters
        (
            {"resources": ["/studies/" + "1." * 31 + "12"]},
            ResourcesSelector(("/studies/" + "1." * 31 + "12",)),
        ),
        ({"filterUri": "gs://filters/a/b/filter.txt"}, FilterUriSelector("gs://filters/a/b/filter.txt")),
        (
            {"query": {"StudyDate": "20240101-20241231", "PatientID": "P1", "ModalitiesInStudy": "CT"}},
            QuerySelector(
                (("ModalitiesInStudy", "CT"), ("PatientID", "P1"), ("StudyDate", "20240101-20241231"))
            ),
        ),
        ({"query": {"StudyDate": "20240229"}}, QuerySelector((("StudyDate", "20240229"),))),
        ({"query": {"StudyDate": "20240101-"}}, QuerySelector((("StudyDate", "20240101-"),))),
        ({"query": {"StudyDate": "-20241231"}}, QuerySelector((("StudyDate", "-20241231"),))),
        ({"query": {"StudyDate": "20240101-20240101"}}, QuerySelector((("StudyDate", "20240101-20240101"),))),
        ({"query": {"StudyInstanceUID": "1.2.840.1"}}, QuerySelector((("StudyInstanceUID", "1.2.840.1"),))),
        ({"query": {"AccessionNumber": "A-0001"}}, QuerySelector((("AccessionNumber", "A-0001"),))),
        ({"query": {"PatientID": "Ünïcode ID 7"}}, QuerySelector((("PatientID", "Ünïcode ID 7"),))),
    ],
)
def test_selectors(fields: dict[str, Any], selector: Any) -> None:
    parsed = parse_export_request(request(**fields))
    assert parsed == ExportRequest(destination=DEST, selector=selector)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("application/dicom", "application/dicom"),
        ("application/dicom; transfer-syntax=*", "application/dicom; transfer-syntax=*"),
        *[
            (f"application/dicom; transfer-syntax={uid}", f"application/dicom; transfer-syntax={uid}")
            for uid in DICOM_TRANSFER_SYNTAXES
        ],
        (
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
        ),
        ("application/octet-stream; transfer-syntax=*", "application/octet-stream; transfer-syntax=*"),
        (
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
            "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
        ),
        ("image/png", "image/png"),
        # normalisation: spacing, case of type and parameter name, quotes
        (
            "application/dicom;transfer-syntax=1.2.840.10008.1.2.1",
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        ),
        (
            "  Application/DICOM ;  Transfer-Syntax = 1.2.840.10008.1.2.1  ",
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        ),
        (
            'application/dicom; transfer-syntax="1.2.840.10008.1.2.4.90"',
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90",
        ),
        ("IMAGE/PNG", "image/png"),
    ],
)
def test_mime_types(given: str, expected: str) -> None:
    assert parse_export_request(request(mimeType=given)).mime_type == expected


def test_full_request_and_round_trip() -> None:
    body = {
        "requestId": "job-2024.01:A_b-9",
        "destination": "gs://exports/out/",
        "resources": ["/studies/1.2.3"],
        "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
    }
    parsed = parse_export_request(encode(body))
    assert parsed.request_id == "job-2024.01:A_b-9"
    assert parsed.destination == "gs://exports/out"
    assert parse_export_request(encode(parsed.to_dict())) == parsed


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"filterUri": "gs://filters/x.txt"},
        {"query": {"PatientID": "P"}},
        {"requestId": "r", "mimeType": "image/png"},
    ],
)
def test_to_dict_round_trips(fields: dict[str, Any]) -> None:
    parsed = parse_export_request(request(**fields))
    assert parse_export_request(encode(parsed.to_dict())) == parsed


@pytest.mark.parametrize(
    ("destination", "normalised"),
    [
        ("gs://exports", "gs://exports"),
        ("gs://exports/", "gs://exports"),
        ("gs://exports/a/b/", "gs://exports/a/b"),
        ("gs://exports/a/b///", "gs://exports/a/b"),
        ("gs://my.bucket.example/x", "gs://my.bucket.example/x"),
        ("gs://exports/dír ü/x", "gs://exports/dír ü/x"),
    ],
)
def test_destination_normalised(destination: str, normalised: str) -> None:
    assert parse_export_request(encode({"destination": destination})).destination == normalised


def test_byte_order_mark_is_tolerated() -> None:
    assert parse_export_request(b"\xef\xbb\xbf" + request()).destination == DEST


def test_error_is_a_drop_event_error() -> None:
    with pytest.raises(DropEventError):
        parse_export_request(b"not json")


# --- rejections ----------------------------------------------------------------------------------

LONG_UID = "1." * 32 + "1"  # 65 characters


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # not bytes / not UTF-8 / not JSON / not an object
        (b"", "message data is empty"),
        (b'{"destination": "gs://exports/\xff"}', "not UTF-8 (byte 0xff at offset 30)"),
        (b"\xef\xbb\xbf\xc3\x28", "not UTF-8 (byte 0xc3 at offset 3)"),
        (b"not json", "message data is not JSON (Expecting value at line 1 column 1)"),
        (b'{"destination": "gs://exports"', "message data is not JSON"),
        (b'["gs://exports"]', "must be a JSON object, got an array"),
        (b'"gs://exports"', "must be a JSON object, got a string"),
        (b"42", "must be a JSON object, got a number"),
        (b"null", "must be a JSON object, got null"),
        (b'{"destination": "gs://exports", "destination": "gs://evil"}', "duplicate key 'destination'"),
        (
            b'{"destination": "gs://exports", "query": {"PatientID": "a", "PatientID": "b"}}',
            "duplicate key 'PatientID'",
        ),
        (b'{"destination": "gs://exports", "x": NaN}', "NaN is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        # unknown fields, nulls, missing destination
        (request(extra=1), "unknown field(s) 'extra'; allowed fields: requestId, destination"),
        (request(Destination="gs://x"), "unknown field(s) 'Destination'"),
        (encode({"destination": DEST, **{f"f{i}": 1 for i in range(7)}}), "'f4' and 2 more;"),
        (request(requestId=None), "requestId is null; leave the field out instead"),
        (request(resources=None), "resources is null"),
        (encode({"resources": ["/studies/1"]}), "destination is required"),
        # wrong types
        (request(requestId=5), "requestId must be a string, got a number"),
        (encode({"destination": ["gs://exports"]}), "destination must be a string, got an array"),
        (request(filterUri=True), "filterUri must be a string, got a boolean"),
        (request(mimeType={}), "mimeType must be a string, got an object"),
        (request(resources="/studies/1"), "resources must be an array of resource paths, got a string"),
        (request(resources={"a": 1}), "resources must be an array of resource paths, got an object"),
        (request(resources=[1]), "resources[0]: must be a string, got a number"),
        (request(query=["PatientID"]), "query must be an object of QIDO-RS matching keys, got an array"),
        (request(query={"PatientID": 7}), "query.PatientID must be a string, got a number"),
        # requestId grammar
        (request(requestId=""), "requestId '' must be 1-256 characters of A-Z a-z 0-9 . _ - :"),
        (request(requestId="a" * 257), "must be 1-256 characters"),
        (request(requestId="a/b"), "requestId 'a/b' must be"),
        (request(requestId="a b"), "must be 1-256 characters"),
        (request(requestId="é"), "must be 1-256 characters"),
        # selectors
        (
            request(resources=["/studies/1"], query={"PatientID": "P"}),
            "at most one of resources, filterUri, query, sql (got resources and query)",
        ),
        (request(resources=["/studies/1"], filterUri="gs://filters/x"), "(got resources and filterUri)"),
        (request(filterUri="gs://filters/x", query={"PatientID": "P"}), "(got filterUri and query)"),
        (
            request(resources=[], filterUri="gs://filters/x", query={}),
            "(got resources and filterUri and query)",
        ),
        (request(resources=[]), "resources is empty; leave out resources, filterUri and query"),
        (request(query={}), "query is empty"),
    ],
)
def test_rejected_input(data: bytes, expected: str) -> None:
    assert expected in reason_of(data)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "resources[1]: is empty"),
        ("/studies/1.2/", "ends with '/'"),
        ("/studies/1.2?includefield=all", "has a query string or fragment"),
        ("/studies/1.2#frag", "has a query string or fragment"),
        ("studies/1.2", "does not start with '/'"),
        (" /studies/1.2", "does not start with '/'"),
        ("/studies/1.2/../3", "has a '..' segment"),
        ("/studies/../1.2", "has a '..' segment"),
        ("/studies/1.2/series/./3", "has a '.' segment"),
        ("/studies//1.2", "has an empty segment"),
        ("//studies/1.2", "has an empty segment"),
        ("/studies/1/series/2/instances/3/frames/1", "has extra segments after the instance UID"),
        ("/studies/1/x/2", "has 'x' where 'series' belongs"),
        ("/studies", "has no UID after 'studies'"),
        ("/studies/1/series", "has no UID after 'series'"),
        ("/studies/1/series/2/instances", "has no UID after 'instances'"),
        ("/studies/1/instances/2", "has 'instances' where 'series' belongs"),
        ("/series/1", "has 'series' where 'studies' belongs"),
        ("/Studies/1", "has 'Studies' where 'studies' belongs"),
        ("/studies/1.02.3", "the studies UID has a leading zero in component 2 ('02')"),
        ("/studies/01", "leading zero in component 1"),
        ("/studies/1..2", "has an empty component (number 2)"),
        ("/studies/.1", "has an empty component (number 1)"),
        ("/studies/1.", "has an empty component (number 2)"),
        ("/studies/1.2a", "contains characters other than digits and dots"),
        ("/studies/1.2 ", "contains characters other than digits and dots"),
        ("/studies/1.2\n", "contains characters other than digits and dots"),
        ("/studies/-1", "contains characters other than digits and dots"),
        ("/studies/１.２", "contains characters other than digits and dots"),  # full-width digits
        (f"/studies/{LONG_UID}", "the studies UID is 65 characters long; at most 64"),
        (f"/studies/1/series/{LONG_UID}", "the series UID is 65 characters long"),
        (f"/studies/1/series/2/instances/{LONG_UID}", "the instances UID is 65 characters long"),
    ],
)
def test_rejected_resource_path(path: str, expected: str) -> None:
    reason = reason_of(request(resources=["/studies/9", path]))
    assert reason.startswith("resources[1]: ")
    assert expected in reason


def test_rejected_path_reports_index_and_count() -> None:
    reason = reason_of(request(resources=["/studies/1", "/studies/x", "/studies/2", "/studies/y/", "bad"]))
    assert reason.startswith("resources[1]: '/studies/x'")
    assert reason.endswith("(and 2 more invalid path(s))")


def test_reason_truncates_huge_input() -> None:
    huge = "/studies/1/" + "x" * 100_000
    reason = reason_of(request(resources=[huge]))
    assert len(reason) < 400
    assert "100011 characters" in reason
    reason = reason_of(request(requestId="é" * 50_000))
    assert len(reason) < 400
    reason = reason_of(encode({"destination": DEST, "k" * 10_000: 1}))
    assert len(reason) < 400


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/x", "filterUri 's3://bucket/x' must start with gs://"),
        ("gs://bucket", "names no object"),
        ("gs://bucket/", "names no object"),
        ("gs://bucket/dir/", "ends with '/'; it must name an object"),
        ("gs://bucket/*.txt", "contains a wildcard or '#'"),
        ("gs://bucket/a?.txt", "contains a wildcard"),
        ("gs://bucket/[ab].txt", "contains a wildcard"),
        ("gs://bucket/a.txt#123", "contains a wildcard or '#'"),
        ("gs://bucket/../x.txt", "has a '..' path segment"),
        ("gs://bucket/a//x.txt", "has an empty path segment"),
        ("gs://bucket/a/\nx.txt", "contains a control character"),
        ("gs://Bucket/x.txt", "bucket 'Bucket' has an invalid bucket name"),
        ("gs:///x.txt", "has no bucket"),
        ("gs://b/x.txt", "has an invalid bucket name"),
        ("gs://bucket/" + "a" * 1100, "object name is longer than 1024 bytes"),
    ],
)
def test_rejected_filter_uri(uri: str, expected: str) -> None:
    assert expected in reason_of(request(filterUri=uri))


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("", "destination '' must start with gs://"),
        ("exports/out", "must start with gs://"),
        ("GS://exports", "must start with gs://"),
        ("gs://", "has no bucket"),
        ("gs://ex", "has an invalid bucket name"),
        ("gs://-exports", "has an invalid bucket name"),
        ("gs://exports_", "has an invalid bucket name"),
        ("gs://ex ports", "has an invalid bucket name"),
        ("gs://" + "a" * 64, "longer than 63 characters"),
        ("gs://a..b", "empty or over-long dot-separated part"),
        ("gs://" + "a" * 64 + ".com", "empty or over-long dot-separated part"),
        ("gs://192.168.1.1/x", "does not allow"),
        ("gs://google-exports", "does not allow"),
        ("gs://goog-exports", "does not allow"),
        ("gs://exports/../other", "has a '..' path segment"),
        ("gs://exports/a/./b", "has a '.' path segment"),
        ("gs://exports//a", "has an empty path segment"),
        ("gs://exports/out*", "contains a wildcard"),
        ("gs://exports/a\tb", "contains a control character"),
        ("gs://exports/a\ud800", "contains a control character"),
        ("gs://exports/" + "a" * 800, "destination prefix is longer than 768 bytes"),
    ],
)
def test_rejected_destination(destination: str, expected: str) -> None:
    assert expected in reason_of(encode({"destination": destination}))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            {"PatientName": "DOE^JOHN"},
            "query key 'PatientName' is not supported; use PatientID, StudyInstanceUID",
        ),
        ({"patientid": "P"}, "query key 'patientid' is not supported"),
        ({"includefield": "all"}, "is not supported"),
        ({"PatientID": ""}, "query.PatientID is empty"),
        ({"PatientID": " P1"}, "query.PatientID has leading or trailing spaces"),
        ({"PatientID": "P*"}, "query.PatientID contains a wildcard"),
        ({"AccessionNumber": "A?1"}, "query.AccessionNumber contains a wildcard"),
        ({"PatientID": "P1\\P2"}, "contains a backslash; multiple values are not supported"),
        ({"PatientID": "P\x001"}, "contains a control character"),
        ({"PatientID": "P" * 65}, "query.PatientID is longer than 64 characters"),
        ({"AccessionNumber": "A" * 17}, "query.AccessionNumber is longer than 16 characters"),
        ({"ModalitiesInStudy": "ct"}, "query.ModalitiesInStudy must be a modality code"),
        ({"ModalitiesInStudy": "CT,MR"}, "must be a modality code"),
        ({"StudyInstanceUID": "1.02"}, "query.StudyInstanceUID is not a valid UID: it has a leading zero"),
        ({"StudyInstanceUID": "1.2,1.3"}, "is not a valid UID: it contains characters other than digits"),
        ({"StudyDate": "2024-01-01"}, "query.StudyDate must be YYYYMMDD, or a range"),
        ({"StudyDate": "2024010"}, "must be YYYYMMDD"),
        ({"StudyDate": "-"}, "must be YYYYMMDD"),
        ({"StudyDate": "20240101-20240102-20240103"}, "must be YYYYMMDD"),
        ({"StudyDate": "20241301"}, "with real calendar dates"),
        ({"StudyDate": "20230229-"}, "with real calendar dates"),
        ({"StudyDate": "20241231-20240101"}, "is a range whose start is after its end"),
    ],
)
def test_rejected_query(query: dict[str, Any], expected: str) -> None:
    assert expected in reason_of(request(query=query))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PatientID", "DOE*SECRET"),
        ("PatientID", " SECRET"),
        ("PatientID", "SECRET\\X"),
        ("PatientID", "S" * 70 + "SECRET"),
        ("AccessionNumber", "SECRET-ACCESSION-1"),
        ("StudyDate", "SECRET"),
        ("StudyInstanceUID", "1.2.SECRET"),
        ("ModalitiesInStudy", "SECRET-MODALITY"),
    ],
)
def test_query_reasons_never_echo_values(key: str, value: str) -> None:
    """Query values are DICOM tag values (PHI): a reason names the key, never the value."""
    reason = reason_of(request(query={key: value}))
    assert f"query.{key}" in reason
    assert "SECRET" not in reason


@pytest.mark.parametrize(
    ("mime", "expected"),
    [
        (
            "text/plain",
            "mimeType 'text/plain' is not supported; "
            "use one of application/dicom, application/octet-stream, image/jpeg, image/png",
        ),
        ("application/json", "is not supported"),
        ("dicom", "is not of the form type/subtype"),
        ("", "is not of the form type/subtype"),
        ("application/dicom; charset=utf-8", "mimeType parameter 'charset' is not supported"),
        (
            "application/dicom; transfer-syntax=1.2.3",
            "transfer-syntax '1.2.3' is not supported for application/dicom export",
        ),
        ("application/dicom; transfer-syntax=", "transfer-syntax '' is not supported"),
        (
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.100",
            "is not supported for application/dicom",
        ),
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1; x=y", "is not of the form"),
        (
            "application/octet-stream",
            "mimeType application/octet-stream needs a transfer-syntax (1.2.840.10008.1.2.1 or *)",
        ),
        (
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2",
            "is not supported for application/octet-stream",
        ),
        ("image/jpeg", "mimeType image/jpeg needs a transfer-syntax (1.2.840.10008.1.2.4.50)"),
        ("image/jpeg; transfer-syntax=*", "transfer-syntax '*' is not supported for image/jpeg"),
        ("image/png; transfer-syntax=1.2.840.10008.1.2.1", "mimeType image/png takes no transfer-syntax"),
    ],
)
def test_rejected_mime_type(mime: str, expected: str) -> None:
    assert expected in reason_of(request(mimeType=mime))


def test_oversized_message_is_rejected_before_parsing() -> None:
    reason = reason_of(b" " * (MAX_REQUEST_BYTES + 1))
    assert (
        reason == f"message data is {MAX_REQUEST_BYTES + 1} bytes; at most {MAX_REQUEST_BYTES} are accepted"
    )


# --- allowlist -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "allowlist", "allowed"),
    [
        ("gs://exports", ["gs://exports"], True),
        ("gs://exports/", ["gs://exports"], True),
        ("gs://exports", ["gs://exports/"], True),
        ("gs://exports/a", ["gs://exports"], True),
        ("gs://exports/a/b/c", ["gs://exports/a"], True),
        ("gs://exports/a/", ["gs://exports/a"], True),
        ("gs://other/x", ["gs://exports", "gs://other/"], True),
        # prefix only by string, not by segment
        ("gs://exports-evil/x", ["gs://exports"], False),
        ("gs://exportsx", ["gs://exports"], False),
        ("gs://exports/ab", ["gs://exports/a"], False),
        ("gs://exports/a-b", ["gs://exports/a"], False),
        # outside
        ("gs://exports", ["gs://exports/a"], False),
        ("gs://evil/exports", ["gs://exports"], False),
        ("gs://exports/a", [], False),
        # traversal or malformed destination never matches
        ("gs://exports/../evil", ["gs://exports"], False),
        ("gs://exports/a/../../evil", ["gs://exports/a"], False),
        ("gs://exports/./a", ["gs://exports"], False),
        ("gs://exports//a", ["gs://exports"], False),
        ("exports/a", ["gs://exports"], False),
        ("gs://exports/*", ["gs://exports"], False),
        # malformed allowlist entries are skipped, not fatal
        ("gs://exports/a", ["not-a-uri", "gs://exports/../", "gs://exports"], True),
        ("gs://exports/a", ["gs://exports/a/../b"], False),
        ("gs://exports/a", ["gs://"], False),
    ],
)
def test_destination_allowed(destination: str, allowlist: list[str], allowed: bool) -> None:
    assert destination_allowed(destination, allowlist) is allowed


def test_allowlist_enforced_by_parse() -> None:
    ok = parse_export_request(
        encode({"destination": "gs://exports/a/b"}), allowed_destinations=["gs://exports/a"]
    )
    assert ok.destination == "gs://exports/a/b"
    reason = reason_of(encode({"destination": "gs://exports/ab"}), allowed_destinations=["gs://exports/a"])
    assert reason == "destination 'gs://exports/ab' is not inside an allowed prefix ('gs://exports/a')"
    reason = reason_of(encode({"destination": "gs://exports-evil/x"}), allowed_destinations=["gs://exports"])
    assert "is not inside an allowed prefix" in reason
    reason = reason_of(encode({"destination": "gs://exports"}), allowed_destinations=[])
    assert reason.endswith("(none configured)")


# --- filter lines, dedup keys, UIDs --------------------------------------------------------------


def test_filter_lines() -> None:
    paths = ["/studies/1.2", "/studies/1.2/series/3", "/studies/01.2/series/3/instances/4"]
    assert (
        "".join(filter_lines(paths))
        == "/studies/1.2\n/studies/1.2/series/3\n/studies/01.2/series/3/instances/4\n"
    )
    assert list(filter_lines([])) == []


@pytest.mark.parametrize("path", ["/studies/1\n/studies/2", "/studies/1\r", "/series/1", "", "1.2"])
def test_filter_lines_refuse_forged_lines(path: str) -> None:
    with pytest.raises(ValueError):
        list(filter_lines(["/studies/9", path]))


def test_dedup_key() -> None:
    with_id = parse_export_request(request(requestId="r-1"))
    without_id = parse_export_request(request())
    key = dedup_key(with_id, "m-1")
    assert key == dedup_key(with_id, "m-2")  # the requestId wins over the message id
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)
    assert dedup_key(without_id, "m-1") == dedup_key(without_id, "m-1")
    assert dedup_key(without_id, "m-1") != dedup_key(without_id, "m-2")
    # a requestId equal to a message id lives in another namespace
    same = parse_export_request(request(requestId="m-1"))
    assert dedup_key(same, "x") != dedup_key(without_id, "m-1")
    with pytest.raises(InvalidEventError):
        dedup_key(without_id, "")


@pytest.mark.parametrize(
    ("uid", "problem"),
    [
        ("1.2.840.10008.1.2.1", None),
        ("0", None),
        ("2.25.329800735698586629295641978511506172918", None),
        ("1" * 64, None),
        ("1" * 65, "is 65 characters long; at most 64 are allowed"),
        ("", "is empty"),
        ("1.2.", "has an empty component (number 3)"),
        ("1.00", "has a leading zero in component 2 ('00')"),
        ("1.2x", "contains characters other than digits and dots"),
    ],
)
def test_uid_problem(uid: str, problem: str | None) -> None:
    assert uid_problem(uid) == problem


# --- size ----------------------------------------------------------------------------------------


def test_100k_paths_validate() -> None:
    """How long this takes is measured by bench.export_request (no timing assertion here)."""
    paths = [f"/studies/1.2.840.{i}/series/1.2.{i}.1/instances/1.2.{i}.1.{i % 7}" for i in range(100_000)]
    parsed = parse_export_request(request(resources=paths))
    assert isinstance(parsed.selector, ResourcesSelector)
    assert parsed.selector.paths == tuple(paths)
