"""The `sql` selector: which statements we run, and how result rows become filter-file paths. Pure.

`check_sql` runs when the request is parsed: the text is not empty, not over BigQuery's length
limit and holds no NUL. Whether it may run is BigQuery's dry run's to say (`functions.core.sql_gate`):
a reading of the text is no match for BigQuery's own parser (docs/decisions/0870).

`paths_from_rows` turns the rows of the query into resource paths while they stream: either one
column of `/studies/..[/series/..[/instances/..]]` paths, or the UID columns `StudyInstanceUID`
[, `SeriesInstanceUID` [, `SOPInstanceUID`]] by name. A malformed row raises `SqlResultError`
with its row number and column name only: row values are DICOM tag values (PHI) and are never
echoed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from functions.core.errors import InvalidExportRequestError

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


class SqlResultError(InvalidExportRequestError):
    """The query ran but its result cannot be a filter file (columns, a malformed row, too many rows)."""


def check_sql(sql: str) -> str:
    """The statement without surrounding blanks; raises InvalidExportRequestError for an empty,
    over-long or NUL-holding text. What the statement is, and what it reads, is decided by
    BigQuery's dry run (`functions.core.sql_gate`), not by reading the text here."""
    if not sql.strip():
        raise InvalidExportRequestError("sql is empty; give one SELECT statement")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidExportRequestError(f"sql is {len(sql)} characters long; at most {MAX_SQL_CHARS} are allowed")
    if "\x00" in sql:
        raise InvalidExportRequestError("sql contains a NUL character")
    return sql.strip()


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
