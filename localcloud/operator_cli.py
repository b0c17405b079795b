"""`dicom-events COMMAND`: operate a deployment of dicom-events, real or local, with one code path.

The deployment comes from the config file `dicom-events configure` writes from Terraform's
outputs (or `--terraform DIR`: read the outputs now), and the commands use Google's endpoints with
the application default credentials. `--local` points the same commands at the local cloud
running for `--state-dir` (its emulators, anonymous credentials). `python -m localcloud` offers
the same commands for the local cloud only.

Exit status: 0 success; 1 something did not succeed (a failed or undecided import, an export that
did not end SUCCEEDED, no deployment configured or reachable); 2 bad arguments (nothing was
uploaded or published); 3 `--timeout` passed with work still in flight (pending, not failed);
4 `--strict` only: nothing to import, or a selection that matched no instance.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions

from localcloud import events_cli, export_cli, ingest, receipts_cli, redrive_cli, status
from localcloud.connect import Connection, LocalCloud, NotRunningError
from localcloud.deployment import (
    Deployment,
    DeploymentError,
    default_config_path,
    load_config,
    read_outputs,
    save_config,
    terraform_outputs,
)
from localcloud.progress import Reporter, aligned

DEFAULT_STATE_DIR = Path(".localcloud")
PROG = "dicom-events"
# Object name rules the upload prefix must keep (Cloud Storage's naming guidelines and the
# import function's own wildcard planning): no `.`/`..`/empty segment, no control character.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_PREFIX_BYTES = 512


class UsageError(ValueError):
    """An argument that argparse cannot check alone; exit 2, nothing done."""


# -- argument types -------------------------------------------------------------------------------

def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number > 0")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def since_time(text: str, *, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `1d`, `90s` ago, or an RFC 3339 time (`2026-05-27T10:15:00Z`)."""
    now = now or datetime.now(UTC)
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if found:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[found[2]]
        return now - timedelta(**{unit: float(found[1])})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (30m, 2h, 1d) or an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (e.g. Z): {text!r}")
    return moment


def checked_prefix(prefix: str) -> str:
    """The upload prefix as object names will carry it; raises UsageError for one that would make
    names with `.`/`..` or empty segments (`--prefix ../x` would create objects named `../x/...`)."""
    cleaned = prefix.strip("/")
    if not cleaned:
        return ""
    if _CONTROL.search(cleaned):
        raise UsageError(f"--prefix {prefix!r} contains a control character")
    if len(cleaned.encode()) > _MAX_PREFIX_BYTES:
        raise UsageError(f"--prefix is longer than {_MAX_PREFIX_BYTES} bytes")
    bad = [segment for segment in cleaned.split("/") if segment in ("", ".", "..")]
    if bad:
        shown = "an empty" if bad[0] == "" else f"a {bad[0]!r}"
        raise UsageError(f"--prefix {prefix!r} has {shown} segment; object names keep it literally "
                         f"(gs://BUCKET/{cleaned}/...), so give a plain prefix such as 'incoming/2026-05'")
    return cleaned


# -- finding the deployment -----------------------------------------------------------------------

def open_connection(args: argparse.Namespace) -> Connection:
    """The deployment the options name; raises DeploymentError or NotRunningError."""
    if getattr(args, "local", False):
        return LocalCloud.find(args.state_dir)
    infra = getattr(args, "terraform", None)
    if infra is not None:
        return Connection(Deployment.from_terraform_outputs(terraform_outputs(infra),
                                                            f"terraform output in {infra}"))
    path = getattr(args, "config", None) or default_config_path()
    return Connection(load_config(Path(path)))


def _status_hint(args: argparse.Namespace) -> str:
    if getattr(args, "local_only", False):
        return f"python -m localcloud status --state-dir {args.state_dir}"
    return f"{PROG} status" + (" --local" if getattr(args, "local", False) else "")


def _failure(exc: BaseException, connection: Connection | None) -> int:
    """One line on stderr for a service that did not answer as expected; exit 1.

    Only the exception's type, an HTTP status and a host are shown for HTTP errors: their URLs
    carry query strings with UIDs (patient data)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        what = f"HTTP {exc.response.status_code} from {urlsplit(exc.response.url).netloc}"
    elif isinstance(exc, requests.RequestException):
        what = f"{type(exc).__name__} talking to {urlsplit(getattr(exc.request, 'url', '') or '').netloc or '?'}"
    elif isinstance(exc, auth_exceptions.DefaultCredentialsError):
        print(f"error: no application default credentials ({str(exc)[:200]}); "
              "run: gcloud auth application-default login", file=sys.stderr)
        return 1
    else:
        what = f"{type(exc).__name__}: {str(exc)[:300]}"
    if connection is not None and connection.deployment.is_local:
        print(f"error: the local cloud did not answer as expected ({what}); is it still running? "
              "(python -m localcloud up)", file=sys.stderr)
    else:
        origin = connection.deployment.origin if connection is not None else "the deployment"
        print(f"error: a Google Cloud call failed ({what}); deployment from {origin}", file=sys.stderr)
    return 1


_SERVICE_ERRORS = (requests.RequestException, gexc.GoogleAPIError, ConnectionError,
                   auth_exceptions.GoogleAuthError)


def run_with_connection(args: argparse.Namespace, work: Callable[[Connection], int]) -> int:
    try:
        connection = open_connection(args)
    except NotRunningError as exc:
        print(exc, file=sys.stderr)
        return 1
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with connection:
        try:
            return work(connection)
        except _SERVICE_ERRORS as exc:
            return _failure(exc, connection)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def logs_lines(connection: Connection, events: Sequence[dict[str, Any]]) -> list[str]:
    """Where the per-file reasons of events with failures are: for the local cloud the Healthcare
    emulator's own view of the operation's log entries (and its log file), for a real project the
    operation's Cloud Logging link (`logsUrl`)."""
    lines = []
    for event in events:
        if event.get("state") in ("SUCCEEDED", "REJECTED") or not event.get("operation"):
            continue
        operation_id = str(event["operation"]).rsplit("/", 1)[-1]
        emulators = connection.deployment.emulators
        if emulators is not None:
            where = f"{emulators.healthcare}/_emulator/operations/{operation_id}/logs"
            if connection.deployment.logs:
                where += f" (and {Path(connection.deployment.logs) / 'healthcare.log'})"
        elif event.get("logsUrl"):
            where = str(event["logsUrl"])
        else:
            continue
        lines.append(aligned("logs", f"{operation_id}: {where}"))
    return lines


# -- commands -------------------------------------------------------------------------------------

def cmd_ingest(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    try:
        prefix = checked_prefix(args.prefix if args.prefix is not None else root.resolve().name)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def work(connection: Connection) -> int:
        # run_ingest is annotated with LocalCloud; it uses only what every Connection has.
        result = ingest.run_ingest(cast(LocalCloud, connection), root, prefix, timeout=args.timeout,
                                   reporter=Reporter.for_command(args.json))
        if args.json:
            print_json(result.to_json())
        else:
            for line in ingest.render_summary(result):
                print(line)
            for line in logs_lines(connection, result.operations):
                print(line)
        for warning in ingest.warnings_for(result):
            print(warning, file=sys.stderr)
        return ingest.exit_code(result, strict=args.strict)

    return run_with_connection(args, work)


def read_resources_file(path: str) -> list[str]:
    """One resource path a line (`-`: standard input); blank lines and `#` comments are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--resources-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    paths = [line for line in lines if line and not line.startswith("#")]
    if not paths:
        raise UsageError(f"--resources-file {path} names no resource path")
    return paths


def cmd_export(args: argparse.Namespace) -> int:
    storage_class = getattr(args, "storage_class", None)
    try:
        resources = args.resources
        if getattr(args, "resources_file", None) is not None:
            resources = read_resources_file(args.resources_file)
        request = export_cli.build_request(
            destination=getattr(args, "destination", None), resources=resources, filter_uri=args.filter_uri,
            query=args.query, sql=args.sql, mime_type=getattr(args, "mime_type", None), request_id=args.request_id,
            storage_class=storage_class, whole_store=getattr(args, "whole_store", False),
        )
    except (export_cli.RequestError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    label = "storage-class" if storage_class else "export"

    def work(connection: Connection) -> int:
        result = export_cli.run_export(connection, request, timeout=args.timeout,
                                       reporter=Reporter.for_command(args.json))
        return _report(args, connection, result, label)

    return run_with_connection(args, work)


_FAILURES_SHOWN = 10  # failed objects named under an event; `receipts` lists all


def _report(args: argparse.Namespace, connection: Connection, result: export_cli.ExportResult, label: str) -> int:
    lines = export_cli.render_result(result, label, status_hint=_status_hint(args))
    if result.event is not None:
        if result.event.get("reason") and result.ok:
            lines.append(aligned("", str(result.event["reason"])))
        failures = result.event.get("failures") or []
        for failure in failures[:_FAILURES_SHOWN]:
            lines.append(aligned("", f"{failure.get('object')}  ({failure.get('reason')}: {failure.get('message')})"))
        if len(failures) > _FAILURES_SHOWN or result.event.get("failedObjectsTotal", 0) > len(failures):
            lines.append(aligned("", f"... {result.event.get('failedObjectsTotal')} in all (dicom-events receipts)"))
        lines.extend(logs_lines(connection, [result.event]))
    if not args.json:
        for line in lines:
            print(line)
    elif result.event is None:
        for line in lines:
            print(line, file=sys.stderr)
        print_json(export_cli.timeout_json(result))  # stdout always carries one JSON object
    else:
        if result.repeated:  # stdout carries only the event
            print(lines[0], file=sys.stderr)
        print_json(result.event)
    for warning in export_cli.warnings_for(result):
        print(warning, file=sys.stderr)
    return export_cli.exit_code(result, strict=getattr(args, "strict", False))


def cmd_redrive(args: argparse.Namespace) -> int:
    try:
        request = redrive_cli.build_request(args.receipt, args.request_id)
    except export_cli.RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def work(connection: Connection) -> int:
        result = redrive_cli.run_redrive(connection, request, timeout=args.timeout,
                                         reporter=Reporter.for_command(args.json))
        return _report(args, connection, result, "redrive")

    return run_with_connection(args, work)


def cmd_status(args: argparse.Namespace) -> int:
    def work(connection: Connection) -> int:
        current = status.gather(connection, events=args.events)
        if args.json:
            print_json(current)
        else:
            for line in status.render(current):
                print(line)
        return 0

    return run_with_connection(args, work)


def cmd_events(args: argparse.Namespace) -> int:
    def work(connection: Connection) -> int:
        stopping = _stop_on_signals()
        return events_cli.run(connection, follow=args.follow, since=args.since, as_json=args.json,
                              stopping=stopping, max_events=args.max_events)

    return run_with_connection(args, work)


def cmd_receipts(args: argparse.Namespace) -> int:
    def work(connection: Connection) -> int:
        return receipts_cli.run(connection, args.receipt, as_json=args.json)

    return run_with_connection(args, work)


def cmd_configure(args: argparse.Namespace) -> int:
    target = Path(args.config) if args.config else default_config_path()
    try:
        if args.from_outputs is not None:
            try:
                text = sys.stdin.read() if args.from_outputs == "-" else Path(args.from_outputs).read_text()
            except OSError as exc:
                raise DeploymentError(f"{args.from_outputs}: {exc.strerror}") from None
            deployment = Deployment.from_terraform_outputs(read_outputs(text, args.from_outputs), args.from_outputs)
        else:
            deployment = Deployment.from_terraform_outputs(terraform_outputs(args.from_terraform),
                                                           f"terraform output in {args.from_terraform}")
        save_config(deployment, target)
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(aligned("configured", str(target)))
    print(aligned("project", deployment.project))
    print(aligned("dicom store", deployment.dicom_store))
    print(aligned("upload", f"gs://{deployment.upload_bucket}"))
    print(aligned("events", str(deployment.completion_subscription)))
    return 0


class _Stopping:
    """Set by SIGINT/SIGTERM: `events --follow` ends cleanly (exit 0) at the next pull."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


def _stop_on_signals() -> _Stopping:
    stopping = _Stopping()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stopping


# -- the parser -----------------------------------------------------------------------------------

def add_operator_commands(commands: Any, *, local_only: bool) -> None:
    """The operator verbs on `commands` (an argparse subparsers object). `local_only`: the local
    cloud's own CLI (`python -m localcloud VERB`): only `--state-dir` selects the deployment."""

    def target(sub: argparse.ArgumentParser) -> None:
        group = sub.add_argument_group("deployment")
        if local_only:
            sub.set_defaults(local=True, local_only=True)
        else:
            group.add_argument("--local", action="store_true",
                               help="the local cloud running for --state-dir instead of a real project")
            group.add_argument("--config", metavar="FILE",
                               help="deployment config written by `configure` (default: $DICOM_EVENTS_CONFIG or "
                                    "~/.config/dicom-events/deployment.json)")
            group.add_argument("--terraform", type=Path, metavar="DIR",
                               help="read the deployment from `terraform output -json` in DIR instead")
        group.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                           help="state folder of the running local cloud (default %(default)s)")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def timeout(sub: argparse.ArgumentParser, default: float) -> None:
        sub.add_argument("--timeout", type=positive_number, default=default, metavar="SECONDS",
                         help="give up waiting after this long (default %(default)s)")

    ingest_parser = command("ingest", cmd_ingest, "upload a folder to the upload bucket and wait until "
                            "the import function has imported it")
    ingest_parser.add_argument("dir", type=Path, metavar="DIR")
    ingest_parser.add_argument("--prefix", default=None,
                               help="object name prefix in the upload bucket (default: the folder's name)")
    timeout(ingest_parser, ingest.DEFAULT_TIMEOUT_SECONDS)
    ingest_parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    ingest_parser.add_argument("--strict", action="store_true",
                               help="exit 4 when there was nothing to import (every file skipped, or none)")
    target(ingest_parser)

    def selectors(sub: argparse.ArgumentParser, required: bool) -> None:
        selector = sub.add_mutually_exclusive_group(required=required)
        selector.add_argument("--resources", nargs="+", metavar="PATH",
                              help="DICOMweb paths: /studies/U[/series/U[/instances/U]]")
        selector.add_argument("--resources-file", metavar="FILE",
                              help="the same paths from a file, one a line (- for standard input); "
                                   "blank lines and # comments are skipped")
        selector.add_argument("--filter-uri", metavar="URI", help="gs:// filter file, one resource path a line")
        selector.add_argument("--query", nargs="+", metavar="KEY=VALUE",
                              help="study-level QIDO-RS keys, e.g. PatientID=P1 StudyDate=20240101-20241231")
        selector.add_argument("--sql", metavar="SELECT",
                              help="BigQuery Standard SQL returning resource paths or the UID columns")

    def request_options(sub: argparse.ArgumentParser, what: str, *, strict: bool) -> None:
        """What every request command takes: its id, the wait, the output, the deployment."""
        sub.add_argument("--request-id", metavar="ID", help=f"default: cli-<uuid>; a repeated id starts no "
                         f"second {what}")
        timeout(sub, export_cli.DEFAULT_TIMEOUT_SECONDS)
        sub.add_argument("--json", action="store_true", help="print the completion event as JSON")
        if strict:
            sub.add_argument("--strict", action="store_true",
                             help="exit 4 when the selection matched nothing (SUCCEEDED with 0 instances)")
        target(sub)

    export_parser = command("export", cmd_export, "publish an export request and wait for its completion event")
    selectors(export_parser, required=True)
    export_parser.add_argument("--destination", required=True, metavar="gs://BUCKET[/PREFIX]")
    export_parser.add_argument("--mime-type", metavar="TYPE",
                               help="e.g. 'application/dicom; transfer-syntax=1.2.840.10008.1.2.1' or image/png")
    request_options(export_parser, "export", strict=True)

    class_parser = command("storage-class", cmd_export, "move the selected instances (or, with --whole-store, "
                           "every instance) to a storage class and wait for the completion event")
    selectors(class_parser, required=False)
    class_parser.add_argument("--whole-store", action="store_true",
                              help="change every instance of the store (instead of a selector)")
    class_parser.add_argument("--class", dest="storage_class", required=True,
                              choices=("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"))
    request_options(class_parser, "change", strict=True)

    redrive_parser = command("redrive", cmd_redrive, "re-import the objects a failed import's receipt names "
                             "(those still not in the store) and wait for the redrive's completion event")
    redrive_parser.add_argument("receipt", metavar="RECEIPT",
                                help="the failed import's operation id, event id (op-ID) or receipts/ID.json")
    request_options(redrive_parser, "import", strict=False)

    status_parser = command("status", cmd_status, "tracked operations, queued jobs, open windows, receipts, "
                            "the latest completion events and the dead-letter depth")
    status_parser.add_argument("--events", type=non_negative_int, default=status.DEFAULT_EVENTS, metavar="N",
                               help="how many of the latest completion events (default %(default)s)")
    status_parser.add_argument("--json", action="store_true", help="print one JSON object")
    target(status_parser)

    events_parser = command("events", cmd_events, "print completion events: without --since, those waiting "
                            "in the deployment's event subscription (read and acknowledged); with --since, "
                            "those the state bucket kept from that time on (nothing is acknowledged)")
    events_parser.add_argument("--follow", "-f", action="store_true",
                               help="then keep printing new events until Ctrl-C (exit 0)")
    events_parser.add_argument("--since", type=since_time, metavar="WHEN",
                               help="30m, 2h, 1d ago or an RFC 3339 time: kept events from then on, oldest first")
    events_parser.add_argument("--max-events", type=non_negative_int, default=None, metavar="N",
                               help="stop after N events (0: no limit, the default)")
    events_parser.add_argument("--json", action="store_true", help="one JSON object a line (JSON Lines)")
    target(events_parser)

    receipts_parser = command("receipts", cmd_receipts, "imports with objects that did not land (what redrive "
                              "takes); with RECEIPT, the objects one receipt names")
    receipts_parser.add_argument("receipt", nargs="?", metavar="RECEIPT",
                                 help="operation id, event id (op-ID) or receipts/ID.json")
    receipts_parser.add_argument("--json", action="store_true", help="print one JSON object")
    target(receipts_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configure = commands.add_parser(
        "configure", help="write the deployment config from Terraform's outputs (once per deployment)",
        description="write the deployment config the other commands read, from `terraform output -json`")
    source = configure.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-terraform", type=Path, metavar="DIR", help="infra/ folder with the applied state")
    source.add_argument("--from-outputs", metavar="FILE", help="saved `terraform output -json` (- for stdin)")
    configure.add_argument("--config", metavar="FILE", help="where to write it (default: $DICOM_EVENTS_CONFIG or "
                                                            "~/.config/dicom-events/deployment.json)")
    configure.set_defaults(handler=cmd_configure)
    add_operator_commands(commands, local_only=False)
    return parser


def quiet_library_warnings() -> None:
    """pydicom warns on stderr about each odd file it reads (the UIDs of uploads are read with it);
    the CLI reports what matters itself."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # warn_and_log also logs each warning


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_warnings()
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def console_main() -> None:
    """The `dicom-events` console script."""
    started = time.monotonic()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.monotonic() - started:.0f} s", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    console_main()
