"""QIDO-RS query parameters: matching keys, date ranges, paging and includefield."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from .errors import invalid_argument

MAX_LIMIT = 5000
T = TypeVar("T")

# Attributes the emulator can match on, by keyword. Study-level ones are constant within a study.
MATCH_KEYWORDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "Modality",
    "ModalitiesInStudy",
)
# Query keys that are accepted but do not change the result.
_IGNORED_KEYS = {"fuzzymatching"}


@dataclass(frozen=True)
class DateRange:
    """A DICOM DA range: exact `A`, `A-B`, `A-` or `-B` (inclusive bounds, YYYYMMDD)."""

    low: str | None
    high: str | None

    @classmethod
    def parse(cls, text: str) -> DateRange:
        low, sep, high = text.partition("-")
        for part in (low, high):
            if part and not re.fullmatch(r"\d{8}", part):
                raise invalid_argument(
                    f"invalid StudyDate {text!r}: dates are YYYYMMDD, ranges A-B, A- or -B"
                )
        if not sep:
            if not low:
                raise invalid_argument("StudyDate must not be empty")
            return cls(low, low)
        if not low and not high:
            raise invalid_argument(f"invalid StudyDate range {text!r}")
        return cls(low or None, high or None)

    def contains(self, value: str | None) -> bool:
        if not value:
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def value_matches(pattern: str, value: str | None) -> bool:
    """Single-value matching with the DICOM wildcards `*` and `?`; UID lists are `\\`- or `,`-separated."""
    if value is None:
        return False
    if "*" in pattern or "?" in pattern:
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        return re.fullmatch(regex, value, re.DOTALL) is not None
    return value == pattern


@dataclass
class QidoQuery:
    criteria: dict[str, str] = field(default_factory=dict)
    study_date: DateRange | None = None
    limit: int | None = None
    offset: int = 0
    include_all: bool = False
    include_tags: list[str] = field(default_factory=list)  # 8-hex-digit tags, DICOM JSON keys

    @classmethod
    def from_args(cls, args: Iterable[tuple[str, str]]) -> QidoQuery:
        query = cls()
        for key, value in args:
            name = _keyword(key)
            if key == "limit":
                query.limit = min(_non_negative(key, value), MAX_LIMIT)
            elif key == "offset":
                query.offset = _non_negative(key, value)
            elif key == "includefield":
                query._add_includefields(value)
            elif key in _IGNORED_KEYS:
                continue
            elif name == "StudyDate":
                query.study_date = DateRange.parse(value)
            elif name in MATCH_KEYWORDS:
                query.criteria[name] = value
            else:
                raise invalid_argument(f"unsupported QIDO-RS query parameter {key!r}")
        return query

    def _add_includefields(self, value: str) -> None:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item == "all":
                self.include_all = True
                continue
            name = _keyword(item)
            tag = tag_for_keyword(name) if name else None
            if tag is None:
                raise invalid_argument(f"unknown includefield {item!r}")
            self.include_tags.append(f"{tag:08X}")

    def matches(self, row: Mapping[str, str | None], *, with_modality: bool) -> bool:
        """Does one instance row satisfy the criteria? Modality is checked only when asked, because
        at study level it means "some series of the study has it"."""
        for name, pattern in self.criteria.items():
            if name in ("Modality", "ModalitiesInStudy"):
                if with_modality and not value_matches(pattern, row["Modality"]):
                    return False
            elif name.endswith("UID"):
                if row[name] not in re.split(r"[\\,]", pattern):
                    return False
            elif not value_matches(pattern, row[name]):
                return False
        return self.study_date is None or self.study_date.contains(row["StudyDate"])

    @property
    def modality(self) -> str | None:
        return self.criteria.get("Modality") or self.criteria.get("ModalitiesInStudy")

    def page(self, items: list[T]) -> list[T]:
        end = None if self.limit is None else self.offset + self.limit
        return items[self.offset : end]


def _keyword(key: str) -> str | None:
    """A query key is a keyword (`PatientID`) or a tag (`00100020`)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or None
    return key if tag_for_keyword(key) is not None else None


def _non_negative(key: str, value: str) -> int:
    if not value.isdigit():
        raise invalid_argument(f"{key} must be a non-negative integer, got {value!r}")
    return int(value)
