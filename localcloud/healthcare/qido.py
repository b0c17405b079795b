"""QIDO-RS query parameters, as Google's DICOM conformance statement defines them.

Search parameters per level (studies: StudyInstanceUID, PatientName, PatientID, AccessionNumber,
ReferringPhysicianName, StudyDate; series add SeriesInstanceUID and Modality; instances add
SOPInstanceUID). "Only single value, exact matching is supported, except for StudyDate which
supports range queries and PatientName which supports fuzzy matching." Anything else is a 400.
`limit` defaults to 100 (studies, series) / 1,000 (instances) and is capped at 5,000 / 50,000;
`offset` goes up to 1,000,000. Pure logic: no I/O, no Flask.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from .errors import invalid_argument

STUDY_MATCH_KEYS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDate",
)
SERIES_MATCH_KEYS = (*STUDY_MATCH_KEYS, "SeriesInstanceUID", "Modality")
INSTANCE_MATCH_KEYS = (*SERIES_MATCH_KEYS, "SOPInstanceUID")
MATCH_KEYS = {"studies": STUDY_MATCH_KEYS, "series": SERIES_MATCH_KEYS, "instances": INSTANCE_MATCH_KEYS}

# (default, maximum) number of results per level.
LIMITS = {"studies": (100, 5000), "series": (100, 5000), "instances": (1000, 50000)}
MAX_OFFSET = 1_000_000

# Google's system parameters: every Google API accepts them on every path (google-api-python-client
# sends alt=json); they never select DICOM data, so a search ignores them.
SYSTEM_PARAMETERS = frozenset(
    {"alt", "prettyPrint", "fields", "key", "access_token", "oauth_token", "callback", "quotaUser",
     "userIp", "upload_protocol", "uploadType", "$.xgafv"}
)
_CONTROL_KEYS = ("limit", "offset", "includefield", "fuzzymatching")


@dataclass(frozen=True)
class DateRange:
    """A DICOM DA value or range: `A`, `A-B`, `A-` or `-B` (inclusive bounds, YYYYMMDD)."""

    low: str | None
    high: str | None

    @classmethod
    def parse(cls, text: str) -> DateRange:
        if not text:
            raise invalid_argument("StudyDate must not be empty")
        low, sep, high = text.partition("-")
        for part in (low, high):
            if part and not re.fullmatch(r"\d{8}", part):
                # The value is patient data: the message does not repeat it.
                raise invalid_argument("invalid StudyDate: dates are YYYYMMDD, ranges A-B, A- or -B")
        if sep and not low and not high:
            raise invalid_argument("invalid StudyDate range: a range needs at least one date")
        return cls(low, low) if not sep else cls(low or None, high or None)

    def contains(self, value: str | None) -> bool:
        if not value:
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def name_tokens(text: str) -> list[str]:
    """Fuzzy-matching tokens of a person name: case-folded, accents removed, split at anything
    that is not a letter or digit (`^`, `=`, spaces, punctuation)."""
    plain = "".join(_without_accent(c) for c in unicodedata.normalize("NFKC", text))
    return re.findall(r"[^\W_]+", plain.casefold())


def _without_accent(char: str) -> str:
    """`é` -> `e`; characters whose base is not ASCII (e.g. kana with voicing marks) stay as they are."""
    base = unicodedata.normalize("NFKD", char)
    return base[0] if base[0].isascii() else char


def fuzzy_name_matches(query: str, stored: str | None) -> bool:
    """Google: "It will match if any search token is a prefix of any stored token"."""
    if stored is None:
        return False
    stored_tokens = name_tokens(stored)
    return any(s.startswith(q) for q in name_tokens(query) for s in stored_tokens)


@dataclass
class QidoQuery:
    level: str  # studies | series | instances
    criteria: dict[str, str] = field(default_factory=dict)  # keyword -> value, exact unless noted
    study_date: DateRange | None = None
    fuzzy: bool = False
    limit: int = 0
    offset: int = 0
    include_all: bool = False
    include_tags: list[str] = field(default_factory=list)  # 8-hex-digit tags, DICOM JSON keys

    @classmethod
    def parse(cls, level: str, args: Iterable[tuple[str, str]]) -> QidoQuery:
        query = cls(level, limit=LIMITS[level][0])
        seen: set[str] = set()
        for key, value in args:
            if key in SYSTEM_PARAMETERS:
                continue
            if key == "includefield":
                query._add_includefields(value)
                continue
            name = key if key in _CONTROL_KEYS else _keyword(key)
            if name is None:
                raise invalid_argument(f"unsupported QIDO-RS query parameter {key!r}")
            if name in seen:
                raise invalid_argument(f"QIDO-RS query parameter {key!r} is given more than once")
            seen.add(name)
            if name == "limit":
                # 0 is "not set", as everywhere in Google's proto3 APIs.
                query.limit = min(_non_negative(key, value, None) or LIMITS[level][0], LIMITS[level][1])
            elif name == "offset":
                query.offset = _non_negative(key, value, MAX_OFFSET)
            elif name == "fuzzymatching":
                if value.lower() not in ("true", "false"):
                    raise invalid_argument(f"fuzzymatching must be true or false, got {value!r}")
                query.fuzzy = value.lower() == "true"
            elif name not in MATCH_KEYS[level]:
                supported = ", ".join(MATCH_KEYS[level])
                raise invalid_argument(f"{key!r} is not a supported {level} search parameter ({supported})")
            elif not value:
                continue  # PS3.4 C.2.2.2.3 universal matching: an empty value matches everything
            elif name == "StudyDate":
                query.study_date = DateRange.parse(value)
            else:
                query.criteria[name] = value
        return query

    def _add_includefields(self, value: str) -> None:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item == "all":
                self.include_all = True
                continue
            if re.fullmatch(r"[0-9A-Fa-f]{8}", item):
                self.include_tags.append(item.upper())
                continue
            tag = tag_for_keyword(item)
            if tag is None:
                raise invalid_argument(f"unknown includefield {item!r}")
            self.include_tags.append(f"{tag:08X}")

    def matches(self, values: Mapping[str, str | None]) -> bool:
        """Does one instance satisfy the criteria? `values` maps each matching keyword to the
        instance's value as a string (person names in their DICOM string form)."""
        for name, wanted in self.criteria.items():
            if name == "PatientName" and self.fuzzy:
                if not fuzzy_name_matches(wanted, values.get(name)):
                    return False
            elif values.get(name) != wanted:
                return False
        return self.study_date is None or self.study_date.contains(values.get("StudyDate"))

    def page(self, items: list[Any]) -> list[Any]:
        return items[self.offset : self.offset + self.limit]


def _keyword(key: str) -> str | None:
    """A query key is a keyword (`PatientID`) or a tag (`00100020`)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or None
    return key if tag_for_keyword(key) is not None else None


def _non_negative(key: str, value: str, maximum: int | None) -> int:
    if not value.isdigit():
        raise invalid_argument(f"{key} must be a non-negative integer, got {value!r}")
    number = int(value)
    if maximum is not None and number > maximum:
        raise invalid_argument(f"{key} must be at most {maximum:,}, got {number:,}")
    return number
