"""The local BigQuery (crucible-emulator, docs/decisions/0800-local-bigquery.md) and its clients.

google-cloud-bigquery talks to it unchanged: the endpoint goes into `client_options` and the
credentials are anonymous (the emulator checks none). Writing rows differs from Google: the
emulator has no `tabledata.insertAll`, so `insert_rows` writes through a DML `INSERT`.

`python -m localcloud.bigquery --host H --port P --database F` serves crucible's BigQuery API
with what the export function's `sql` gate needs and crucible lacks (`create_app`):
- dry runs (`configuration.dryRun`): the statement type, the referenced tables and an estimate
  of the bytes, nothing run (`dry_run_statistics`);
- `maximumBytesBilled`: a query whose estimate is over it fails with `bytesBilledLimitExceeded`
  before it runs, as BigQuery fails it without a charge.
Where this differs from BigQuery is listed in localcloud/BIGQUERY.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery


def client(endpoint: str, project: str) -> bigquery.Client:
    """A google-cloud-bigquery client for the local BigQuery at `endpoint` (http://host:port)."""
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def quote_identifier(name: str) -> str:
    """A BigQuery quoted identifier (project, dataset, table or column name)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def insert_rows(
    bq: bigquery.Client, table: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Appends `rows` to `table` ("project.dataset.table") with one DML INSERT.

    Columns missing from a row are NULL. The emulator ignores query parameters, so values are
    written as literals by `literal` (escaped, never spliced raw).
    """
    if not rows:
        return
    names = ", ".join(quote_identifier(c) for c in columns)
    tuples = ["(" + ", ".join(literal(row.get(c)) for c in columns) + ")" for row in rows]
    target = ".".join(quote_identifier(part) for part in table.split("."))
    bq.query(f"INSERT INTO {target} ({names}) VALUES " + ", ".join(tuples)).result()


def literal(value: Any) -> str:
    """A GoogleSQL literal for a NULL, BOOL, INT64, FLOAT64, DATE, TIMESTAMP or STRING value."""
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped + "'"


# --- the server: crucible plus dry runs and maximumBytesBilled -------------------------------

# Bytes BigQuery's logical size counts per value of each type (its pricing page: "Data size
# calculation"); types not listed count 8. A STRING counts 2 bytes + its UTF-8 length: an average
# length of 30 is assumed, as the emulator does not measure values.
_TYPE_BYTES = {"BOOL": 1, "BOOLEAN": 1, "DATE": 8, "TIMESTAMP": 8, "DATETIME": 8, "STRING": 32, "BYTES": 32}
_TYPE_BYTES_DEFAULT = 8
# Minimum billed per referenced table (BigQuery on-demand: 10 MB per table referenced).
_MIN_BYTES_PER_TABLE = 10 * 1024 * 1024


def statement_type(tree: Any) -> str:
    """BigQuery's `statementType` of one parsed statement (sqlglot's BigQuery dialect)."""
    from sqlglot import exp

    if isinstance(tree, exp.Query):
        return "SELECT"
    for cls, name in ((exp.Insert, "INSERT"), (exp.Update, "UPDATE"), (exp.Delete, "DELETE"),
                      (exp.Merge, "MERGE"), (exp.TruncateTable, "TRUNCATE_TABLE")):
        if isinstance(tree, cls):
            return name
    if isinstance(tree, exp.Create):
        kind = (tree.kind or "TABLE").upper().replace(" ", "_")
        return "CREATE_TABLE_AS_SELECT" if kind == "TABLE" and isinstance(tree.expression, exp.Query) \
            else f"CREATE_{kind}"
    if isinstance(tree, exp.Drop):
        return f"DROP_{(tree.kind or 'TABLE').upper().replace(' ', '_')}"
    if isinstance(tree, exp.Alter):
        return f"ALTER_{(tree.args.get('kind') or 'TABLE').upper()}"
    if isinstance(tree, exp.Export):
        return "EXPORT_DATA"
    name = str(getattr(tree, "name", "") or type(tree).__name__).upper()
    if name == "EXPORT":
        return "EXPORT_DATA"
    # DECLARE, SET, EXECUTE IMMEDIATE, BEGIN, CALL, IF ...: procedural language, a script.
    return "SCRIPT"


def referenced_tables(tree: Any, project: str, dataset: str | None) -> list[tuple[str, str, str]]:
    """(project, dataset, table) of every table the statement reads or writes, CTE names left
    out, in first-seen order; INFORMATION_SCHEMA views as dataset `INFORMATION_SCHEMA`."""
    from sqlglot import exp

    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    seen: dict[tuple[str, str, str], None] = {}
    created = tree.this if isinstance(tree, exp.Create) else None
    created = created.this if isinstance(created, exp.Schema) else created
    for table in tree.find_all(exp.Table):
        if table is created:
            continue  # BigQuery names it ddlTargetTable, not a referenced table
        parts = [piece for p in table.parts for piece in p.name.split(".")]
        if len(parts) == 1 and parts[0] in ctes:
            continue
        upper = [p.upper() for p in parts]
        if "INFORMATION_SCHEMA" in upper:
            at = upper.index("INFORMATION_SCHEMA")
            view = ".".join(parts[at + 1:])
            if at >= 1 and not parts[at - 1].lower().startswith("region-"):
                # `[project.]dataset.INFORMATION_SCHEMA.VIEW`: a view of that dataset
                owner = parts[at - 2] if at >= 2 else project
                seen[(owner, parts[at - 1], f"INFORMATION_SCHEMA.{view}")] = None
            else:
                owner = parts[0] if at >= 2 else project
                seen[(owner, "INFORMATION_SCHEMA", view)] = None
            continue
        if not table.name:
            continue  # a table-valued function such as EXTERNAL_QUERY(...): not a table
        t_project = table.catalog or project
        t_dataset = table.db or dataset or ""
        seen[(t_project, t_dataset, table.name)] = None
    return list(seen)


def dry_run_statistics(engine: Any, project: str, sql: str, default_dataset: str | None = None) -> dict[str, Any]:
    """The `statistics.query` BigQuery gives a dry run of `sql`; raises crucible's CrucibleError
    (served as BigQuery's 400 invalidQuery / 404 notFound) for a statement BigQuery would refuse."""
    import duckdb
    from crucible.dialects.bigquery import errors as bq_errors
    from crucible.dialects.bigquery.dialect import DIALECT
    from crucible.engine import CrucibleUnsupportedError, ExecContext, SqlPlan
    from crucible.engine.errors import from_duckdb

    statements = DIALECT.split(sql)
    trees: list[Any] = [getattr(s, "tree")  # noqa: B009 - crucible's Statement, typed as object
                        for s in statements]
    kind = "SCRIPT" if len(trees) > 1 else statement_type(trees[0])
    tables: dict[tuple[str, str, str], None] = {}
    for tree in trees:
        for ref in referenced_tables(tree, project, default_dataset):
            tables[ref] = None
    session = DIALECT.new_session(project, default_dataset)
    total = 0
    with engine.cursor(session) as cursor:
        ctx = ExecContext(engine, DIALECT, session, cursor, None)
        catalog = ctx.catalog
        for t_project, t_dataset, t_name in tables:
            if t_dataset == "INFORMATION_SCHEMA" or t_name.startswith("INFORMATION_SCHEMA."):
                continue  # metadata views: present in every dataset
            info = catalog.table(t_project, t_dataset, t_name) if t_dataset else None
            if info is None:
                raise bq_errors.table_not_found(t_project, t_dataset, t_name)
            width = sum(_TYPE_BYTES.get(str(c.type.sql("bigquery")).upper(), _TYPE_BYTES_DEFAULT)
                        for c in info.columns)
            rows = cursor.execute(
                f"SELECT COUNT(*) FROM {_duck_name(t_project, t_dataset, t_name)}").fetchone()
            total += max(_MIN_BYTES_PER_TABLE, width * int(rows[0] if rows else 0))
        if kind == "SELECT":
            try:
                plan = DIALECT.plan(statements[0], ctx)
            except CrucibleUnsupportedError:
                plan = None  # crucible cannot run it (INFORMATION_SCHEMA, ...): the answer stands unchecked
            if isinstance(plan, SqlPlan):
                try:  # binds names and types without reading a row
                    cursor.execute("EXPLAIN " + plan.sql, plan.params)
                except duckdb.Error as exc:
                    raise from_duckdb(exc) from exc
    statistics: dict[str, Any] = {"statementType": kind, "totalBytesProcessed": str(total),
                                  "totalBytesBilled": "0", "cacheHit": False}
    if tables:
        statistics["referencedTables"] = [{"projectId": p, "datasetId": d, "tableId": t} for p, d, t in tables]
    return statistics


def _duck_name(project: str, dataset: str, table: str) -> str:
    from crucible.engine.catalog import qualified

    return qualified(project, dataset, table)


def create_app(engine: Any) -> Any:
    """crucible's BigQuery app (its `create_app`), with dry runs and maximumBytesBilled."""
    from crucible.engine import CrucibleError
    from crucible.server.bigquery.app import API, BigQueryServer
    from crucible.server.bigquery.errors import http_error
    from crucible.server.bigquery.jobs import DEFAULT_LOCATION, now_ms
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route

    server = BigQueryServer(engine)

    def job(project: str, body: dict[str, Any], statistics: dict[str, Any],
            error: dict[str, Any] | None = None) -> dict[str, Any]:
        reference = dict(body.get("jobReference") or {})
        job_id = reference.get("jobId") or f"job_{uuid.uuid4().hex}"
        location = reference.get("location") or DEFAULT_LOCATION
        now = str(now_ms())
        status: dict[str, Any] = {"state": "DONE"}
        if error is not None:
            status = {"errorResult": error, "errors": [error], "state": "DONE"}
        return {"kind": "bigquery#job", "id": f"{project}:{location}.{job_id}",
                "jobReference": {"projectId": project, "jobId": job_id, "location": location},
                "configuration": {**body.get("configuration", {}), "jobType": "QUERY"},
                "statistics": {"creationTime": now, "startTime": now, "endTime": now,
                               "totalBytesProcessed": statistics.get("totalBytesProcessed", "0"),
                               "query": statistics},
                "status": status}

    async def jobs_insert(request: Request) -> Response:
        project = request.path_params["project"]
        body: dict[str, Any] = await request.json()  # cached: crucible's handler reads it again
        configuration = body.get("configuration") or {}
        query = configuration.get("query") or {}
        raw_limit = query.get("maximumBytesBilled")
        limit = int(raw_limit) if raw_limit is not None else None
        if not isinstance(query.get("query"), str) or (not configuration.get("dryRun") and limit is None):
            return await server.jobs_insert(request)
        default = query.get("defaultDataset") or {}
        try:
            statistics = await run_in_threadpool(dry_run_statistics, engine, default.get("projectId") or project,
                                                 query["query"], default.get("datasetId"))
        except CrucibleError as exc:
            return http_error(exc)
        if configuration.get("dryRun"):
            return JSONResponse(job(project, body, statistics))
        if limit is not None and int(statistics["totalBytesProcessed"]) > limit:
            error = {"reason": "bytesBilledLimitExceeded", "location": "query",
                     "message": f"Query exceeded limit for bytes billed: {limit}. "
                                f"{statistics['totalBytesProcessed']} or higher required."}
            return JSONResponse(job(project, body, {"statementType": statistics["statementType"]}, error))
        return await server.jobs_insert(request)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({**engine.health(), "dialect": "bigquery"})

    async def reset(request: Request) -> JSONResponse:
        server.reset()
        engine.reset()
        return JSONResponse({"status": "reset"})

    async def fallback(request: Request) -> Response:
        return await server.not_implemented(request)

    routes: list[BaseRoute] = [
        Route("/_crucible/health", health, methods=["GET"]),
        Route("/_crucible/reset", reset, methods=["POST"]),
        Route(f"{API}/jobs", jobs_insert, methods=["POST"]),
        *server.routes(),
        Route("/{path:path}", fallback, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.add_exception_handler(404, lambda request, exc: server.not_implemented(request))
    app.add_exception_handler(405, lambda request, exc: server.not_implemented(request))
    app.add_exception_handler(Exception, server.internal_error)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn
    from crucible.engine import Engine

    parser = argparse.ArgumentParser(prog="python -m localcloud.bigquery", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True, help="DuckDB file of the tables")
    args = parser.parse_args(argv)
    # Access logs off: request lines are noise, and never carry values.
    uvicorn.run(create_app(Engine(args.database)), host=args.host, port=args.port, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
