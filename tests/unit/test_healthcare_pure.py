"""Pure pieces of the Healthcare API emulator: import URI wildcards, export filter files, export
mimeType parsing, multipart bodies. (DICOMweb's pure pieces: test_dicomweb_pure.py.)"""

from __future__ import annotations

import pytest

from localcloud.healthcare.errors import ApiError
from localcloud.healthcare.exporter import parse_export_request, parse_mime_type
from localcloud.healthcare.filters import FilterFileError, ResourcePath, parse_filter_file
from localcloud.healthcare.multipart import decode, encode
from localcloud.healthcare.wildcards import parse_source_uri

# --- import source URIs --------------------------------------------------------------------------

MATCH_CASES = [
    # (uri, object name, matches)
    ("gs://b/a/x.dcm", "a/x.dcm", True),
    ("gs://b/a/x.dcm", "a/x.dcmz", False),
    ("gs://b/a/*.dcm", "a/x.dcm", True),
    ("gs://b/a/*.dcm", "a/.dcm", True),
    ("gs://b/a/*.dcm", "a/s/x.dcm", False),
    ("gs://b/a/*", "a/x", True),
    ("gs://b/a/*", "a/s/x", False),
    ("gs://b/a/*/x.dcm", "a/s/x.dcm", True),
    ("gs://b/a/*/x.dcm", "a/s/t/x.dcm", False),
    ("gs://b/a/Example*.dcm", "a/Example.dcm", True),
    ("gs://b/a/Example*.dcm", "a/Example22.dcm", True),
    ("gs://b/a/?.dcm", "a/x.dcm", True),
    ("gs://b/a/?.dcm", "a/.dcm", False),
    ("gs://b/a/?.dcm", "a/xy.dcm", False),
    ("gs://b/a?x.dcm", "a/x.dcm", True),  # "1 character": separators included
    ("gs://b/a/**", "a/x", True),
    ("gs://b/a/**", "a/s/t/x", True),
    ("gs://b/a/**", "ab/x", False),
    ("gs://b/a/**.dcm", "a/x.dcm", True),
    ("gs://b/a/**.dcm", "a/s/t/x.dcm", True),
    ("gs://b/a/**.dcm", "a/s/x.dcm.json", False),
    ("gs://b/a/**.dcm", "b/x.dcm", False),
    ("gs://b/**", "anything/at/all", True),
    ("gs://b/a/[x].dcm", "a/[x].dcm", True),  # no character classes: brackets are literal
    ("gs://b/a/[x].dcm", "a/x.dcm", False),
    ("gs://b/a/x+(1).dcm", "a/x+(1).dcm", True),  # regex metacharacters are literal
]


@pytest.mark.parametrize(("uri", "name", "expected"), MATCH_CASES)
def test_source_uri_matching(uri: str, name: str, expected: bool) -> None:
    assert parse_source_uri(uri).matches(name) is expected


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("gs://b/a/x.dcm", "b", "a/x.dcm"),
        ("gs://b/a/*.dcm", "b", "a/"),
        ("gs://b/a/p?.dcm", "b", "a/p"),
        ("gs://bk/a/s/**.dcm", "bk", "a/s/"),
        ("gs://b/**", "b", ""),
    ],
)
def test_source_uri_lists_by_literal_prefix(uri: str, bucket: str, prefix: str) -> None:
    pattern = parse_source_uri(uri)
    assert (pattern.bucket, pattern.literal_prefix) == (bucket, prefix)


@pytest.mark.parametrize(
    "uri",
    [
        "gs://b/a/**/x.dcm",  # ** not at the end
        "gs://b/**/a",
        "gs://b/a/*/**.dcm",  # ** with another wildcard
        "gs://b/a/?/**",
        "gs://b/a/***",
        "gs://b/a/**.d*m",
        "gs://b/a/**/",
        "gs://b",  # bucket only
        "gs://b/",
        "gs://",
        "gs:///a.dcm",
        "gs://b*/a.dcm",  # wildcard in the bucket
        "gs://b/a/",  # a folder, not objects
        "s3://b/a.dcm",  # not gs://
        "b/a.dcm",
        "",
    ],
)
def test_invalid_source_uris_are_invalid_argument(uri: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_source_uri(uri)
    assert (caught.value.http_code, caught.value.status) == (400, "INVALID_ARGUMENT")


# --- export filter files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/studies/1.2\n", [ResourcePath("1.2")]),
        ("/studies/1.2/series/3.4", [ResourcePath("1.2", "3.4")]),
        ("/studies/1/series/2/instances/3\r\n", [ResourcePath("1", "2", "3")]),
        ("\n\n/studies/1\r\n\r\n  \n/studies/2\n", [ResourcePath("1"), ResourcePath("2")]),
        ("", []),
        ("\r\n\n", []),
    ],
)
def test_filter_file_parsing(text: str, expected: list[ResourcePath]) -> None:
    assert parse_filter_file(text) == expected


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("/studies/1\nstudies/2\n", 2),
        ("/studies/1\n\n/studies/2/instances/3\n", 3),  # instances without series
        ("/studies/\n", 1),
        ("/studies/1/series/2/instances/3/frames/1\n", 1),
        ("/studies/1.2/\n", 1),
        ("/studies/1\r\n/series/2\r\n", 2),
        ("/studies/abc\n", 1),
    ],
)
def test_malformed_filter_line_names_its_number(text: str, line: int) -> None:
    with pytest.raises(FilterFileError, match=rf"\bline {line}\b"):
        parse_filter_file(text)


@pytest.mark.parametrize(
    ("path", "uids", "expected"),
    [
        (ResourcePath("1"), ("1", "2", "3"), True),
        (ResourcePath("1"), ("11", "2", "3"), False),
        (ResourcePath("1", "2"), ("1", "2", "3"), True),
        (ResourcePath("1", "2"), ("1", "22", "3"), False),
        (ResourcePath("1", "2", "3"), ("1", "2", "3"), True),
        (ResourcePath("1", "2", "3"), ("1", "2", "4"), False),
    ],
)
def test_resource_path_selection(path: ResourcePath, uids: tuple[str, str, str], expected: bool) -> None:
    assert path.selects(*uids) is expected


# --- export request ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "expected"),
    [
        ("", ("application/dicom", None)),
        ("application/dicom", ("application/dicom", None)),
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2", ("application/dicom", "1.2.840.10008.1.2")),
        ('application/dicom;transfer-syntax="*"', ("application/dicom", "*")),
        ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", ("image/jpeg", "1.2.840.10008.1.2.4.50")),
        ("IMAGE/PNG", ("image/png", None)),
        ("application/octet-stream; transfer-syntax=*", ("application/octet-stream", "*")),
    ],
)
def test_mime_type_parsing(mime: str, expected: tuple[str, str | None]) -> None:
    assert parse_mime_type(mime) == expected


@pytest.mark.parametrize(
    ("prefix", "bucket", "path"),
    [("gs://b/out", "b", "out/"), ("gs://b/out/", "b", "out/"), ("gs://b", "b", ""), ("gs://b/", "b", "")],
)
def test_export_uri_prefix_gets_a_trailing_slash(prefix: str, bucket: str, path: str) -> None:
    request = parse_export_request({"gcsDestination": {"uriPrefix": prefix}})
    assert (request.bucket, request.prefix, request.extension) == (bucket, path, ".dcm")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"gcsDestination": {"uriPrefix": "b/out"}},
        {"gcsDestination": {"uriPrefix": "gs://"}},
        {"gcsDestination": {"uriPrefix": "gs://b/o", "mimeType": "text/plain"}},
        {"gcsDestination": {"uriPrefix": "gs://b/o"}, "filterConfig": {"resourcePathsGcsUri": "gs://b"}},
    ],
)
def test_bad_export_requests_are_invalid_argument(body: dict) -> None:
    with pytest.raises(ApiError) as caught:
        parse_export_request(body)
    assert caught.value.http_code == 400


# --- multipart/related ---------------------------------------------------------------------------


def test_multipart_round_trip_keeps_binary_parts_exact() -> None:
    parts = [b"\r\n--not-a-boundary\r\n", b"", bytes(range(256))]
    body, content_type = encode(parts, "application/dicom")
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert decode(body, content_type) == parts


def test_multipart_without_boundary_is_invalid_argument() -> None:
    with pytest.raises(ApiError) as caught:
        decode(b"x", 'multipart/related; type="application/dicom"')
    assert caught.value.http_code == 400
