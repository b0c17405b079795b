"""`gcsSource.uri` of an import: the documented wildcard subset, nothing more.

Documented semantics (ImportDicomDataRequest / DicomGcsSource.uri):
- `*` matches 0 or more characters other than `/`;
- `?` matches exactly 1 character, `/` included: the docs say "1 character" and, unlike for `*`,
  do not exclude separators (the pipeline's planner assumes the same wider reading);
- `**` matches 0 or more characters including `/`; it must be in the last path segment and no other
  wildcard may appear anywhere in the path; a plain suffix such as `.dcm` may follow it;
- no wildcard at all: exactly one object.
Everything else ("All other URI formats are invalid") is rejected with INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import invalid_argument


@dataclass(frozen=True)
class GcsPattern:
    bucket: str
    pattern: str  # object part of the URI, wildcards included
    regex: re.Pattern[str] | None  # None: a single plain object

    @property
    def literal_prefix(self) -> str:
        """What to list the bucket by: everything before the first wildcard."""
        match = re.search(r"[*?]", self.pattern)
        return self.pattern if match is None else self.pattern[: match.start()]

    def matches(self, name: str) -> bool:
        if self.regex is None:
            return name == self.pattern
        return self.regex.fullmatch(name) is not None


def split_gs_uri(uri: str, what: str) -> tuple[str, str]:
    """`gs://bucket/object` -> (bucket, object); both parts required."""
    if not uri.startswith("gs://"):
        raise invalid_argument(f"{what} must be a gs:// URI: {uri!r}")
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket or not name:
        raise invalid_argument(f"{what} must have the form gs://BUCKET/OBJECT: {uri!r}")
    if any(c in bucket for c in "*?"):
        raise invalid_argument(f"{what}: wildcards are not allowed in the bucket name: {uri!r}")
    return bucket, name


def parse_source_uri(uri: str) -> GcsPattern:
    """Validate an import source URI and compile its wildcard pattern."""
    bucket, pattern = split_gs_uri(uri, "gcsSource.uri")
    if "**" in pattern:
        _check_double_star(uri, pattern)
    elif pattern.endswith("/"):
        raise invalid_argument(f"gcsSource.uri names a folder, not objects (use a wildcard): {uri!r}")
    if not re.search(r"[*?]", pattern):
        return GcsPattern(bucket, pattern, None)
    return GcsPattern(bucket, pattern, re.compile(_to_regex(pattern), re.DOTALL))


def _check_double_star(uri: str, pattern: str) -> None:
    head, _, tail = pattern.partition("**")
    if any(c in head for c in "*?") or any(c in tail for c in "*?"):
        raise invalid_argument(f"gcsSource.uri: '**' must be the only wildcard in the path: {uri!r}")
    if "/" in tail:
        raise invalid_argument(f"gcsSource.uri: '**' must be at the end of the path: {uri!r}")


def _to_regex(pattern: str) -> str:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append(".")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return "".join(parts)
