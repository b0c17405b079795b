"""Which operation did an unconfirmed start begin, if any? Pure decisions on plain data.

A start is unconfirmed when its `:import`/`:export` POST failed after the request was sent (a read
timeout, a dropped connection, a 500/502/504) or its starter died mid-call: the API may have started
an operation whose name we never learnt. Google's operations carry no trace of the request that
started them (`OperationMetadata` has `apiMethodName`, `createTime`, `endTime`, counters), so the
only evidence is an operation of the right method, created after the attempt began, that nobody
tracks. See docs/decisions/0300-ambiguous-lro-starts.md.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from functions.lease import OPERATION_CLOCK_SKEW_SECONDS as CLOCK_SKEW_SECONDS

# An operation can appear long after the client gave up (the request may sit in a queue); only
# after this long without one is the start taken to have started nothing.
MIN_UNKNOWN_OUTCOME_SECONDS = 600.0

_METHOD_SUFFIX = {"import": "ImportDicomData", "export": "ExportDicomData",
                  "storageClass": "SetBlobStorageSettings"}
_FRACTION = re.compile(r"\.(\d+)")


@dataclass(frozen=True)
class UnconfirmedStart:
    job_id: str
    kind: str  # import | export
    attempted_at: float  # epoch seconds, taken before the POST was sent


@dataclass(frozen=True)
class Candidate:
    """An operation of the dataset that might be the one an unconfirmed start began."""

    name: str
    kind: str
    created_at: float


@dataclass(frozen=True)
class Resolution:
    job_id: str
    action: Literal["adopt", "requeue", "wait"]
    operation: str = ""  # adopt: the operation name


def unknown_outcome_seconds(http_timeout_seconds: float, retry_deadline_seconds: float) -> float:
    """How long an unconfirmed start keeps its slot before it counts as "started nothing"."""
    return max(MIN_UNKNOWN_OUTCOME_SECONDS, 2 * http_timeout_seconds + retry_deadline_seconds)


def candidates(operations: Iterable[dict[str, Any]], *, tracked: Collection[str] = frozenset(),
               since: float = float("-inf")) -> list[Candidate]:
    """Import/export operations (matched by `apiMethodName` suffix), created at `since` or later,
    whose id is not in `tracked`; oldest first."""
    found = []
    for operation in operations:
        name = str(operation.get("name", ""))
        op_id = name.rsplit("/", 1)[-1]
        metadata = operation.get("metadata") or {}
        method = str(metadata.get("apiMethodName", ""))
        kind = next((k for k, suffix in _METHOD_SUFFIX.items() if method.endswith(suffix)), None)
        created = parse_time(str(metadata.get("createTime", "")))
        if kind is None or created is None or created < since or not name or op_id in tracked:
            continue
        found.append(Candidate(name, kind, created))
    return sorted(found, key=lambda c: (c.created_at, c.name))


def resolve(starts: Sequence[UnconfirmedStart], found: Sequence[Candidate], *, now: float,
            unknown_outcome_seconds: float, clock_skew_seconds: float = CLOCK_SKEW_SECONDS) -> list[Resolution]:
    """Pairs unconfirmed starts with untracked operations of their kind, oldest with oldest.

    An operation created before an attempt began (less the clock skew) cannot be its result. A start
    without a match keeps waiting (and its slot) until `unknown_outcome_seconds` have passed since
    the attempt, then goes back to the queue. Several unconfirmed starts of one kind at once can
    only be paired by time: their completion events may be swapped between them (documented).
    """
    taken: set[str] = set()
    resolutions = []
    for start in sorted(starts, key=lambda s: (s.attempted_at, s.job_id)):
        match = next((c for c in found if c.kind == start.kind and c.name not in taken
                      and c.created_at >= start.attempted_at - clock_skew_seconds), None)
        if match is not None:
            taken.add(match.name)
            resolutions.append(Resolution(start.job_id, "adopt", match.name))
        elif now >= start.attempted_at + unknown_outcome_seconds:
            resolutions.append(Resolution(start.job_id, "requeue"))
        else:
            resolutions.append(Resolution(start.job_id, "wait"))
    return resolutions


def parse_time(value: str) -> float | None:
    """RFC 3339 (`2024-05-01T10:00:00.123456789Z`, any fraction length) as epoch seconds."""
    if not value:
        return None
    value = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], value, count=1)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
