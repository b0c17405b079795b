"""The `sql` selector: which statements we run, and how result rows become filter-file paths. Pure.

`check_sql` runs when the request is parsed (before anything is started or claimed): one `SELECT`
or `WITH` statement, nothing else. It is a lexical check that skips string literals, quoted
identifiers and comments, so a `;` or keyword inside them does not count. It is the first of two
fences: the export function's BigQuery role only reads (docs/decisions/0850-sql-selector.md).

`paths_from_rows` turns the rows of the query into resource paths while they stream: either one
column of `/studies/..[/series/..[/instances/..]]` paths, or the UID columns `StudyInstanceUID`
[, `SeriesInstanceUID` [, `SOPInstanceUID`]] by name. A malformed row raises `SqlResultError`
with its row number and column name only: row values are DICOM tag values (PHI) and are never
echoed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from functions.errors import InvalidExportRequestError

# BigQuery's limit on the length of an unresolved GoogleSQL query.
MAX_SQL_CHARS = 1024 * 1024
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_LEVELS = ("studies", "series", "instances")
_MAX_UID = 64
_COMPONENT = r"(?:0|[1-9][0-9]*)"
_UID_RE = re.compile(rf"{_COMPONENT}(?:\.{_COMPONENT})*")
_PATH_RE = re.compile(
    rf"/studies/({_UID_RE.pattern})(?:/series/({_UID_RE.pattern})(?:/instances/({_UID_RE.pattern}))?)?"
)
_FIRST_WORD = re.compile(r"[A-Za-z]+")  # not "_": quoted text is blanked to "_"


class SqlResultError(InvalidExportRequestError):
    """The query ran but its result cannot be a filter file (columns, a malformed row, too many rows)."""


def check_sql(sql: str) -> str:
    """The statement without surrounding blanks and trailing `;`; raises InvalidExportRequestError."""
    if not sql.strip():
        raise InvalidExportRequestError("sql is empty; give one SELECT statement")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidExportRequestError(f"sql is {len(sql)} characters long; at most {MAX_SQL_CHARS} are allowed")
    if "\x00" in sql:
        raise InvalidExportRequestError("sql contains a NUL character")
    code = _code_only(sql)
    body = code.rstrip().rstrip(";").rstrip()
    if ";" in body:
        raise InvalidExportRequestError("sql holds more than one statement; give exactly one SELECT statement")
    stripped = body.lstrip().lstrip("(").lstrip()
    match = _FIRST_WORD.match(stripped)
    first = match.group(0).upper() if match else ""
    if first not in ("SELECT", "WITH"):
        shown = first[:20] or "no keyword"
        raise InvalidExportRequestError(
            f"sql must be a single SELECT (or WITH ... SELECT) statement, not {shown}; "
            "data and schema changes, scripts and procedures are not run"
        )
    # The same cut on the original text (the code-only copy has the same offsets).
    end = len(code.rstrip().rstrip(";").rstrip())
    return sql[:end].strip()


def _code_only(sql: str) -> str:
    """`sql` with comments blanked out and string literals and quoted identifiers replaced by `_`
    (same length, so offsets carry over; a literal is never mistaken for trailing blanks)."""
    out = list(sql)
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i) or c == "#":
            end = sql.find("\n", i)
            end = n if end < 0 else end
        elif c == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise InvalidExportRequestError("sql has an unterminated /* comment")
            end += 2
        elif c in "'\"`":
            end = _end_of_quoted(sql, i)
            out[i:end] = "_" * (end - i)
            i = end
            continue
        else:
            i += 1
            continue
        for k in range(i, end):
            if out[k] != "\n":
                out[k] = " "
        i = end
    return "".join(out)


def _end_of_quoted(sql: str, start: int) -> int:
    """Index after the literal or quoted identifier that starts at `start`."""
    quote = sql[start]
    triple = quote * 3
    if quote != "`" and sql.startswith(triple, start):
        end = sql.find(triple, start + 3)
        if end < 0:
            raise InvalidExportRequestError("sql has an unterminated triple-quoted string")
        return end + 3
    # Raw strings (r'...') keep backslashes, but a backslash before the quote still does not end it.
    i = start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            return i + 1
        if sql[i] == "\n" and quote != "`":
            break
        i += 1
    raise InvalidExportRequestError("sql has an unterminated quoted string or identifier")


def row_shape(columns: Sequence[str]) -> int:
    """How the rows are read: 0 = one column of paths, 1-3 = that many UID columns (by name).

    Raises:
        SqlResultError: the columns are neither.
    """
    names = [c.lower() for c in columns]
    for depth in (3, 2, 1):
        if sorted(names) == sorted(c.lower() for c in UID_COLUMNS[:depth]):
            return depth
    if len(columns) == 1:
        return 0
    raise SqlResultError(
        f"the query returned {len(columns)} columns; return one column of resource paths, or the "
        f"columns {', '.join(UID_COLUMNS[:1])}[, {UID_COLUMNS[1]}[, {UID_COLUMNS[2]}]]"
    )


def paths_from_rows(columns: Sequence[str], rows: Iterable[Sequence[object]], *, max_rows: int) -> Iterator[str]:
    """Resource paths of the rows, lazily; at most `max_rows` of them.

    Raises (while iterating):
        SqlResultError: a row is not a valid path or UID set (by row number and column name
            only), or there are more than `max_rows` rows.
    """
    depth = row_shape(columns)
    index = [0] if depth == 0 else [[c.lower() for c in columns].index(u.lower()) for u in UID_COLUMNS[:depth]]
    for number, row in enumerate(rows, start=1):
        if number > max_rows:
            raise SqlResultError(
                f"the query returned more than {max_rows} rows (DICOM_SQL_MAX_ROWS); narrow it, "
                "or select whole series or studies instead of instances"
            )
        if depth == 0:
            value = row[0]
            if not isinstance(value, str) or not _valid_path(value):
                raise SqlResultError(
                    f"row {number}: column {columns[0]!r} is not a resource path "
                    "/studies/UID[/series/UID[/instances/UID]] (the value is not shown: it may hold patient data)"
                )
            yield value
            continue
        parts = []
        for level, position in zip(_LEVELS, index, strict=False):  # index is as deep as the columns
            uid = row[position]
            if not isinstance(uid, str) or len(uid) > _MAX_UID or _UID_RE.fullmatch(uid) is None:
                raise SqlResultError(
                    f"row {number}: column {columns[position]!r} is not a valid DICOM UID "
                    "(the value is not shown: it may hold patient data)"
                )
            parts.append(f"/{level}/{uid}")
        yield "".join(parts)


def _valid_path(value: str) -> bool:
    match = _PATH_RE.fullmatch(value)
    return match is not None and all(uid is None or len(uid) <= _MAX_UID for uid in match.groups())
