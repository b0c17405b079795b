"""Whether a `sql` selector may run, decided from BigQuery's own dry run of it. Pure.

The export function asks BigQuery for a dry run first (nothing runs, nothing is billed) and
passes the answer here as plain data (`DryRun`, read from the job's `statistics.query` by
`dry_run_from_statistics`). `decide` accepts only:
- `statementType` `SELECT` (so no DML, DDL, `EXPORT DATA`, scripts or procedures: a script is
  `SCRIPT` whatever its first statement is);
- at least one referenced table, fewer than BigQuery's limit of a complete list, and every table
  and routine inside a dataset the deployment allows (`DICOM_SQL_ALLOWED_DATASETS`); other
  projects and `INFORMATION_SCHEMA` are outside by construction;
- at most `DICOM_SQL_MAX_BYTES_BILLED` bytes processed.

A text fence adds to this, for what a dry run does not list as a table: a statement that names
`EXTERNAL_QUERY` or `INFORMATION_SCHEMA` anywhere (even in a literal) is refused. It can only
refuse more; IAM is the last fence (the query account reads the allowed datasets only and holds
no connection rights). See docs/decisions/0870-sql-gated-by-a-dry-run.md.

Reasons name statement types, dataset and table names and byte counts, never a row value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from functions.core.errors import InvalidExportRequestError

# BigQuery: "Queries that reference more than 50 tables will not have a complete list."
REFERENCED_TABLES_LIMIT = 50
_FORBIDDEN_WORDS = re.compile(r"external_query|information_schema", re.IGNORECASE)
_DATASET_ID = re.compile(r"[A-Za-z0-9_]{1,1024}")
_PROJECT_ID = re.compile(r"[a-z][a-z0-9.:-]{4,61}[a-z0-9]|[a-z0-9.:-]{1,100}")


class SqlRefusedError(InvalidExportRequestError):
    """The dry run shows a statement this deployment does not run; nothing was run."""


@dataclass(frozen=True, order=True)
class TableRef:
    """A table, view or routine BigQuery lists as referenced: project, dataset, name."""

    project: str
    dataset: str
    name: str

    def __str__(self) -> str:
        return f"{self.project}.{self.dataset}.{self.name}"


@dataclass(frozen=True)
class DryRun:
    """What BigQuery's dry run says about a statement (JobStatistics2)."""

    statement_type: str
    referenced_tables: tuple[TableRef, ...] = ()
    referenced_routines: tuple[TableRef, ...] = ()
    total_bytes_processed: int | None = None


def dry_run_from_statistics(query_statistics: Mapping[str, Any]) -> DryRun:
    """A `DryRun` from the REST form of a dry-run job's `statistics.query`."""

    def refs(key: str, name_key: str) -> tuple[TableRef, ...]:
        out = []
        for item in query_statistics.get(key) or ():
            if isinstance(item, Mapping):
                out.append(TableRef(str(item.get("projectId", "")), str(item.get("datasetId", "")),
                                    str(item.get(name_key, ""))))
        return tuple(out)

    raw_bytes = query_statistics.get("totalBytesProcessed")
    try:
        total = int(raw_bytes) if raw_bytes is not None else None
    except (TypeError, ValueError):
        total = None
    return DryRun(statement_type=str(query_statistics.get("statementType") or ""),
                  referenced_tables=refs("referencedTables", "tableId"),
                  referenced_routines=refs("referencedRoutines", "routineId"),
                  total_bytes_processed=total)


def parse_allowed_datasets(entries: Iterable[str], default_project: str) -> tuple[tuple[str, str], ...]:
    """`dataset` or `project.dataset` entries as (project, dataset) pairs.

    Raises:
        ValueError: an entry is neither.
    """
    allowed = []
    for entry in entries:
        project, dot, dataset = entry.strip().rpartition(".")
        project = project if dot else default_project
        if not _DATASET_ID.fullmatch(dataset) or not _PROJECT_ID.fullmatch(project):
            raise ValueError(f"{entry!r} is not a dataset id or project.dataset")
        if dataset.upper() == "INFORMATION_SCHEMA":
            raise ValueError("INFORMATION_SCHEMA is not a dataset that can be allowed")
        allowed.append((project, dataset))
    return tuple(allowed)


def decide(dry_run: DryRun, *, sql: str, allowed_datasets: Sequence[tuple[str, str]], max_bytes_billed: int) -> None:
    """Returns when the statement may run; raises `SqlRefusedError` (with the reason) otherwise."""
    if not allowed_datasets:
        raise SqlRefusedError("this deployment allows no BigQuery dataset (DICOM_SQL_ALLOWED_DATASETS is empty); "
                              "the sql selector is not available")
    if dry_run.statement_type != "SELECT":
        shown = dry_run.statement_type or "unknown"
        raise SqlRefusedError(f"BigQuery's dry run reports statement type {shown[:40]}; only a single SELECT "
                              "statement is run (no DML, DDL, EXPORT DATA, scripts or procedures)")
    forbidden = _FORBIDDEN_WORDS.search(sql)
    if forbidden:
        raise SqlRefusedError(f"sql names {forbidden.group(0).upper()}; only tables of the allowed datasets "
                              f"({_show(allowed_datasets)}) are queried")
    if not dry_run.referenced_tables:
        raise SqlRefusedError(f"BigQuery's dry run lists no referenced table; query a table of the allowed "
                              f"datasets ({_show(allowed_datasets)})")
    if len(dry_run.referenced_tables) >= REFERENCED_TABLES_LIMIT:
        raise SqlRefusedError(f"the sql references {len(dry_run.referenced_tables)} tables; BigQuery lists "
                              f"fewer than {REFERENCED_TABLES_LIMIT} completely, so fewer are accepted")
    allowed = set(allowed_datasets)
    for kind, refs in (("table", dry_run.referenced_tables), ("routine", dry_run.referenced_routines)):
        outside = sorted(ref for ref in refs if (ref.project, ref.dataset) not in allowed
                         or ref.dataset.upper() == "INFORMATION_SCHEMA"
                         or ref.name.upper().startswith("INFORMATION_SCHEMA"))
        if outside:
            more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
            raise SqlRefusedError(f"the sql references the {kind} {str(outside[0])[:300]}{more}, outside the "
                                  f"allowed datasets ({_show(allowed_datasets)})")
    if dry_run.total_bytes_processed is None:
        raise SqlRefusedError("BigQuery's dry run did not say how many bytes the sql would process")
    if dry_run.total_bytes_processed > max_bytes_billed:
        raise SqlRefusedError(f"the sql would process {dry_run.total_bytes_processed} bytes; at most "
                              f"{max_bytes_billed} are billed (DICOM_SQL_MAX_BYTES_BILLED)")


def _show(allowed: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{project}.{dataset}" for project, dataset in allowed[:5]) + (" ..." if len(allowed) > 5 else "")
