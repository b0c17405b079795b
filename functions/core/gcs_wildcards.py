"""The object-name wildcards of `dicomStores.import` (`gcsSource.uri`), as pure string functions.

Semantics (the API reference of `GcsSource.uri`): `*` matches 0 or more characters except `/`;
`**` matches 0 or more characters including `/`, only at the end of the path and with no other
wildcard in it, optionally followed by a literal suffix (`dir/**.dcm`); `?` matches exactly one
character. There is no escape syntax and no `[...]` class. Patterns here are the object-name part
of the URI only (no `gs://bucket/`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

WILDCARD_CHARS = "*?["
# Characters a pattern must not carry as literals: the wildcards; `[` (a character class in
# other gs:// tools, undocumented for this API); `#` (gsutil/gcloud read `gs://b/o#123` as a
# generation, so a literal `#` may not reach the API as part of the name).
UNSAFE_LITERAL_CHARS = "*?[#"


def has_wildcard_chars(name: str) -> bool:
    """Tell whether an object name holds a character the API would read as a wildcard.

    Args:
        name: object name.

    Returns:
        True if the name holds `*`, `?` or `[`: it cannot be addressed literally.
    """
    return any(c in name for c in WILDCARD_CHARS)


def is_literal_safe(text: str) -> bool:
    """Tell whether `text` can appear verbatim as a literal part of a pattern we send."""
    return not any(c in text for c in UNSAFE_LITERAL_CHARS)


def literal_prefix(pattern: str) -> str:
    """Return the part of `pattern` before its first wildcard: every match starts with it."""
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    return pattern[:cut]


def is_valid_import_pattern(pattern: str) -> bool:
    """Tell whether `pattern` is an object-name pattern this project may send to the API.

    The API's rules: `**` at most once, with no other wildcard in the path and no `/` after it.
    Stricter than the API where its behaviour is undocumented: `**` must start the last path
    component (the documented `dir/**.dcm` shape), and no `[` or `#` at all.

    Args:
        pattern: object-name pattern (no `gs://bucket/`).

    Returns:
        True if the pattern is safe to send.
    """
    if not pattern or "[" in pattern or "#" in pattern:
        return False
    if "**" not in pattern:
        return True
    head, _, tail = pattern.partition("**")
    return (
        (head == "" or head.endswith("/"))
        and "*" not in head
        and "?" not in head
        and not any(c in tail for c in "*?/")
    )


def compile_matcher(pattern: str) -> Callable[[str], bool]:
    """Compile `pattern` into a predicate on object names with the API's semantics.

    The common shapes (`a/b.dcm`, `a/p*s`, `a/**s`) get string tests; anything else a regex.
    `?` is taken to match any one character, `/` included: the API does not say whether it
    crosses a separator, and the wider reading is the safe one when checking what a pattern
    must not match. The pattern is not validated (see `is_valid_import_pattern`).

    Args:
        pattern: object-name pattern.

    Returns:
        A function name -> bool.
    """
    if "*" not in pattern and "?" not in pattern:
        return lambda name: name == pattern
    if "?" not in pattern and pattern.count("**") == 1 and pattern.count("*") == 2:
        head, _, tail = pattern.partition("**")
        least = len(head) + len(tail)
        return lambda name: len(name) >= least and name.startswith(head) and name.endswith(tail)
    if "?" not in pattern and pattern.count("*") == 1:
        head, _, tail = pattern.partition("*")
        least = len(head) + len(tail)
        return lambda name: (
            len(name) >= least
            and name.startswith(head)
            and name.endswith(tail)
            and "/" not in name[len(head) : len(name) - len(tail)]
        )
    regex = _pattern_regex(pattern)
    return lambda name: regex.fullmatch(name) is not None


def api_wildcard_match(pattern: str, name: str) -> bool:
    """Tell whether the API would import object `name` for the object-name pattern `pattern`.

    Args:
        pattern: object-name pattern (`*`, `**`, `?`; every other character literal).
        name: object name.

    Returns:
        True if `name` matches.
    """
    return compile_matcher(pattern)(name)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
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
            end = i
            while end < len(pattern) and pattern[end] not in "*?":
                end += 1
            parts.append(re.escape(pattern[i:end]))
            i = end
    return re.compile("".join(parts), re.DOTALL)
