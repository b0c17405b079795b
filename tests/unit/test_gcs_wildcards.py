"""The API's object-name wildcards: matching, validity, and the helpers the planner builds on."""

from __future__ import annotations

import random

import pytest

from functions.core.gcs_wildcards import (
    api_wildcard_match,
    compile_matcher,
    has_wildcard_chars,
    is_literal_safe,
    is_valid_import_pattern,
    literal_prefix,
)

MATCH_CASES = [
    # (pattern, name, expected)
    ("a/b.dcm", "a/b.dcm", True),
    ("a/b.dcm", "a/b.dcmx", False),
    ("a/*.dcm", "a/x.dcm", True),
    ("a/*.dcm", "a/.dcm", True),
    ("a/*.dcm", "a/x/y.dcm", False),
    ("a/*.dcm", "a/x.DCM", False),
    ("a/*.dcm", "a/x.dcm.json", False),
    ("a/*.dcm", "a/we*rd.dcm", True),
    ("a/*.dcm", "a/[x] #1 é.dcm", True),
    ("a/*", "a/", True),
    ("a/*", "a/b/", False),
    ("a/**.dcm", "a/x.dcm", True),
    ("a/**.dcm", "a/x/y/z.dcm", True),
    ("a/**.dcm", "a/.dcm", True),
    ("a/**.dcm", "a.dcm", False),
    ("a/**.dcm", "ab/x.dcm", False),
    ("a/**.dcm", "a/x.dcm.json", False),
    ("a/**", "a/", True),
    ("a/**", "a/x/y", True),
    ("**.dcm", "x/y.dcm", True),
    ("a/?.dcm", "a/x.dcm", True),
    ("a/?.dcm", "a/.dcm", False),
    ("a/?.dcm", "a/xy.dcm", False),
    ("a?b", "a/b", True),  # the wide reading of `?` (see compile_matcher)
    ("a/x*y*z.dcm", "a/xyz.dcm", True),
    ("a/x*y*z.dcm", "a/x1y2z.dcm", True),
    ("a/x*y*z.dcm", "a/x1z.dcm", False),
    ("a*/*.dcm", "ab/c.dcm", True),
    ("a*/*.dcm", "a/b/c.dcm", False),
    ("a/[x].dcm", "a/[x].dcm", True),  # `[` is no wildcard for the API
    ("a/[x].dcm", "a/x.dcm", False),
    ("a.b/*.dcm", "aXb/c.dcm", False),  # regex metacharacters are literal
    ("a+b/(c)$.dcm", "a+b/(c)$.dcm", True),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), MATCH_CASES)
def test_api_wildcard_match(pattern: str, name: str, expected: bool) -> None:
    assert api_wildcard_match(pattern, name) is expected


VALIDITY_CASES = [
    ("a/b.dcm", True),
    ("a/*.dcm", True),
    ("a/*/*.dcm", True),
    ("a/x?.dcm", True),
    ("a/**", True),
    ("a/**.dcm", True),
    ("**.dcm", True),
    ("**", True),
    ("", False),
    ("a/**/b.dcm", False),  # `**` not at the end
    ("a/*/**.dcm", False),  # another wildcard with `**`
    ("a/?/**.dcm", False),
    ("a/**.d?m", False),
    ("a/**.dcm*", False),
    ("a/***.dcm", False),
    ("a/**x/**.dcm", False),
    ("a/b**.dcm", False),  # stricter than the API: `**` starts the last component
    ("a/[x].dcm", False),
    ("a/h#1.dcm", False),
]


@pytest.mark.parametrize(("pattern", "expected"), VALIDITY_CASES)
def test_is_valid_import_pattern(pattern: str, expected: bool) -> None:
    assert is_valid_import_pattern(pattern) is expected


@pytest.mark.parametrize(
    ("name", "wildcards", "literal_safe"),
    [
        ("a/b.dcm", False, True),
        ("a/b*.dcm", True, False),
        ("a/b?.dcm", True, False),
        ("a/[b].dcm", True, False),
        ("a/h#1.dcm", False, False),
        ("a/sp ace é.dcm", False, True),
    ],
)
def test_character_classes(name: str, wildcards: bool, literal_safe: bool) -> None:
    assert has_wildcard_chars(name) is wildcards
    assert is_literal_safe(name) is literal_safe


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("a/b.dcm", "a/b.dcm"), ("a/b*.dcm", "a/b"), ("a/?x/**", "a/"), ("**.dcm", ""), ("a/**", "a/")],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


def _reference_match(pattern: str, name: str) -> bool:
    """A deliberately naive matcher, written from the API's wording, to check the fast paths."""
    if not pattern:
        return not name
    if pattern.startswith("**"):
        return any(_reference_match(pattern[2:], name[i:]) for i in range(len(name) + 1))
    if pattern[0] == "*":
        return any(
            _reference_match(pattern[1:], name[i:]) for i in range(len(name) + 1) if "/" not in name[:i]
        )
    if pattern[0] == "?":
        return bool(name) and _reference_match(pattern[1:], name[1:])
    return bool(name) and name[0] == pattern[0] and _reference_match(pattern[1:], name[1:])


@pytest.mark.parametrize("seed", range(20))
def test_matcher_agrees_with_reference(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", "/", ".", "*", "?", "[", "é"]
    pattern_tokens = ["a", "b", "/", ".", "*", "**", "?", "[", "é", "/**"]
    for _ in range(300):
        pattern = "".join(rng.choice(pattern_tokens) for _ in range(rng.randint(0, 6)))
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        assert compile_matcher(pattern)(name) is _reference_match(pattern, name), (pattern, name)
