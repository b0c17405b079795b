"""`python -m localcloud COMMAND`: run and use the local cloud. One small function per command.

Exit status: 0 success; 1 something did not succeed (a failed or missing import, an export
that did not end SUCCEEDED, a timeout, no running local cloud); 2 bad arguments."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import requests
from google.api_core import exceptions as gexc

from localcloud import demo, export_cli, ingest, redrive_cli, status
from localcloud.components import ComponentError
from localcloud.config import FUNCTION_TARGETS, LocalConfig
from localcloud.connect import NOT_RUNNING, LocalCloud, NotRunningError
from localcloud.progress import Reporter, aligned
from localcloud.stack import Stack, StackError, env_exports, read_endpoints

DEFAULT_STATE_DIR = Path(".localcloud")


def say(label: str, text: str) -> None:
    """One aligned line: a short label column, then the text."""
    print(aligned(label, text), flush=True)


def _print_endpoints(stack: Stack) -> None:
    endpoints = stack.endpoints
    say("storage", endpoints["storage"])
    say("pubsub", endpoints["pubsub"])
    say("healthcare", endpoints["healthcare"])
    say("dicom store", endpoints["dicomStore"])
    say("bigquery", endpoints["bigquery"])
    table = endpoints.get("streamTable")
    say("stream", f"the store streams every instance to `{table}` (export --sql queries it)" if table
        else "none (--no-stream): the store writes no rows to BigQuery")
    for role, url in endpoints["functions"].items():
        count = len(stack.instances.get(role, ()))
        say(f"fn {role}", url + (f" ({count} instances)" if count > 1 else ""))
    say("logs", endpoints["logs"])


def _wait_for_signal(stack: Stack) -> int:
    """Blocks until SIGINT/SIGTERM (exit 0) or until a component dies (exit 1, naming it)."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    restarts = stack.restarts()
    try:
        while not stopping.wait(1.0):
            now = stack.restarts()
            for role, count in now.items():
                if count > restarts.get(role, 0):
                    say("restarted", f"fn {role}: an instance died and was replaced ({count} so far); "
                        f"{stack.logs_dir / 'router.log'}")
            restarts = now
            dead = stack.dead_components()
            if dead:
                for component in dead:
                    say(
                        "died",
                        f"{component.name} (exit {component.process.returncode}); {component.log_path}",
                    )
                    print(component.log_tail(), file=sys.stderr)
                return 1
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_up(args: argparse.Namespace) -> int:
    config = LocalConfig(poll_interval_seconds=args.poll_interval, stream_to_bigquery=not args.no_stream)
    # A SIGTERM while starting must still stop what has started: make it an exception.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        stack = Stack.start(args.state_dir, config=config, instances=instance_counts(args.instances))
    except (StackError, ComponentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        say("local cloud", f"up in {stack.endpoints['startupSeconds']} s; {stack.endpoints_file}")
        _print_endpoints(stack)
        say("", "Ctrl-C (or SIGTERM) stops everything")
        status = _wait_for_signal(stack)
    finally:
        # A second Ctrl-C must not interrupt the stop half-way and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    say("local cloud", "stopped")
    return status


def instance_counts(values: Sequence[tuple[str | None, int]] | None) -> dict[str, int]:
    """`--instances N` (every function) and `--instances ROLE=N` (one), later ones winning."""
    counts: dict[str, int] = {}
    for role, count in values or ():
        for each in FUNCTION_TARGETS if role is None else (role,):
            counts[each] = count
    return counts


def _instances(text: str) -> tuple[str | None, int]:
    role, _, number = text.rpartition("=")
    if role and role not in FUNCTION_TARGETS:
        raise argparse.ArgumentTypeError(f"unknown function {role!r}; one of {', '.join(FUNCTION_TARGETS)}")
    try:
        count = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {number!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return (role or None), count


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_env(args: argparse.Namespace) -> int:
    endpoints = read_endpoints(args.state_dir)
    if endpoints is None:
        print(NOT_RUNNING.format(state_dir=args.state_dir), file=sys.stderr)
        return 1
    print(env_exports(endpoints))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # the stack stops on the way out
    try:
        return demo.run(args.state_dir)
    except KeyboardInterrupt:
        return 130


def _connect(state_dir: Path) -> LocalCloud | None:
    try:
        return LocalCloud.find(state_dir)
    except NotRunningError as exc:
        print(exc, file=sys.stderr)
        return None


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    cloud = _connect(args.state_dir)
    if cloud is None:
        return 1
    prefix = args.prefix if args.prefix is not None else root.resolve().name
    with cloud:
        try:
            result = ingest.run_ingest(cloud, root, prefix, timeout=args.timeout,
                                       reporter=Reporter.for_command(args.json))
        except _STACK_ERRORS as exc:
            return _stack_error(exc)
    if args.json:
        _print_json(result.to_json())
    else:
        for line in ingest.render_summary(result):
            print(line)
    return 0 if result.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    try:
        storage_class = getattr(args, "storage_class", None)
        request = export_cli.build_request(
            destination=getattr(args, "destination", None), resources=args.resources, filter_uri=args.filter_uri,
            query=args.query, sql=args.sql, mime_type=getattr(args, "mime_type", None), request_id=args.request_id,
            storage_class=storage_class, whole_store=getattr(args, "whole_store", False),
        )
    except export_cli.RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    label = "storage-class" if storage_class else "export"
    cloud = _connect(args.state_dir)
    if cloud is None:
        return 1
    with cloud:
        try:
            result = export_cli.run_export(cloud, request, timeout=args.timeout,
                                           reporter=Reporter.for_command(args.json))
        except _STACK_ERRORS as exc:
            return _stack_error(exc)
    if not args.json:
        for line in export_cli.render_result(result, label):
            print(line)
    elif result.event is None:
        for line in export_cli.render_result(result, label):
            print(line, file=sys.stderr)
    else:
        if result.repeated:  # stdout carries only the event
            print(export_cli.render_result(result, label)[0], file=sys.stderr)
        _print_json(result.event)
    return 0 if result.ok else 1


def cmd_redrive(args: argparse.Namespace) -> int:
    try:
        request = redrive_cli.build_request(args.receipt, args.request_id)
    except export_cli.RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cloud = _connect(args.state_dir)
    if cloud is None:
        return 1
    with cloud:
        try:
            result = redrive_cli.run_redrive(cloud, request, timeout=args.timeout,
                                             reporter=Reporter.for_command(args.json))
        except _STACK_ERRORS as exc:
            return _stack_error(exc)
    lines = export_cli.render_result(result, "redrive")
    if result.event is not None and result.event.get("reason") and result.ok:
        lines.append(f"{'':<12}{result.event['reason']}")
    if not args.json:
        for line in lines:
            print(line)
    elif result.event is None:
        for line in lines:
            print(line, file=sys.stderr)
    else:
        if result.repeated:  # stdout carries only the event
            print(lines[0], file=sys.stderr)
        _print_json(result.event)
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    cloud = _connect(args.state_dir)
    if cloud is None:
        return 1
    with cloud:
        try:
            current = status.gather(cloud, events=args.events)
        except _STACK_ERRORS as exc:
            return _stack_error(exc)
    if args.json:
        _print_json(current)
    else:
        for line in status.render(current):
            print(line)
    return 0


_STACK_ERRORS = (requests.RequestException, gexc.GoogleAPIError, ConnectionError)


def _stack_error(exc: BaseException) -> int:
    print(f"error: the local cloud did not answer as expected ({type(exc).__name__}: {str(exc)[:300]}); "
          "is it still running? (python -m localcloud up)", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    up = command("up", cmd_up, "start the local cloud in the foreground until Ctrl-C")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument(
        "--poll-interval",
        type=float,
        default=LocalConfig.poll_interval_seconds,
        help="seconds between Cloud Scheduler calls of the poller (default %(default)s)",
    )
    up.add_argument(
        "--instances",
        type=_instances,
        action="append",
        metavar="N|FUNCTION=N",
        help="processes per function, as Cloud Run scales out (default 1): N for every function, or "
        "e.g. import=2 for one (repeatable). Deliveries are spread over the instances, a failed one "
        "is tried on another, and an instance that dies is replaced",
    )
    up.add_argument(
        "--no-stream",
        action="store_true",
        help="the DICOM store does not stream its instances to the local BigQuery (for bulk loads that "
        "need no --sql: the local BigQuery writes about ten rows a second)",
    )
    env = command("env", cmd_env, "print shell exports for the running local cloud")
    env.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    demo_parser = command("demo", cmd_demo, "start a local cloud with its functions, import and export a "
                          "synthetic study set through them, print the completion events, stop")
    demo_parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary folder")

    def state_dir(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                         help="state folder of the running local cloud (default %(default)s)")

    ingest_parser = command("ingest", cmd_ingest, "upload a folder to the upload bucket and wait until "
                            "the import function has imported it")
    ingest_parser.add_argument("dir", type=Path, metavar="DIR")
    ingest_parser.add_argument("--prefix", default=None,
                               help="object name prefix in the upload bucket (default: the folder's name)")
    ingest_parser.add_argument("--timeout", type=_positive, default=ingest.DEFAULT_TIMEOUT_SECONDS,
                               metavar="SECONDS", help="give up waiting after this long (default %(default)s)")
    ingest_parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    state_dir(ingest_parser)

    def selectors(sub: argparse.ArgumentParser, required: bool) -> None:
        selector = sub.add_mutually_exclusive_group(required=required)
        selector.add_argument("--resources", nargs="+", metavar="PATH",
                              help="DICOMweb paths: /studies/U[/series/U[/instances/U]]")
        selector.add_argument("--filter-uri", metavar="URI", help="gs:// filter file, one resource path a line")
        selector.add_argument("--query", nargs="+", metavar="KEY=VALUE",
                              help="study-level QIDO-RS keys, e.g. PatientID=P1 StudyDate=20240101-20241231")
        selector.add_argument("--sql", metavar="SELECT",
                              help="BigQuery Standard SQL returning resource paths or the UID columns")

    export_parser = command("export", cmd_export, "publish an export request and wait for its completion event")
    selectors(export_parser, required=True)
    export_parser.add_argument("--destination", required=True, metavar="gs://BUCKET[/PREFIX]")
    export_parser.add_argument("--mime-type", metavar="TYPE",
                               help="e.g. 'application/dicom; transfer-syntax=1.2.840.10008.1.2.1' or image/png")
    export_parser.add_argument("--request-id", metavar="ID", help="default: cli-<uuid>; a repeated id "
                               "starts no second export")
    export_parser.add_argument("--timeout", type=_positive, default=export_cli.DEFAULT_TIMEOUT_SECONDS,
                               metavar="SECONDS", help="give up waiting after this long (default %(default)s)")
    export_parser.add_argument("--json", action="store_true", help="print the completion event as JSON")
    state_dir(export_parser)

    class_parser = command("storage-class", cmd_export, "move the selected instances (or, with --whole-store, "
                           "every instance) to a storage class and wait for the completion event")
    selectors(class_parser, required=False)
    class_parser.add_argument("--whole-store", action="store_true",
                              help="change every instance of the store (instead of a selector)")
    class_parser.add_argument("--class", dest="storage_class", required=True,
                              choices=("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"))
    class_parser.add_argument("--request-id", metavar="ID", help="default: cli-<uuid>; a repeated id "
                              "starts no second change")
    class_parser.add_argument("--timeout", type=_positive, default=export_cli.DEFAULT_TIMEOUT_SECONDS,
                              metavar="SECONDS", help="give up waiting after this long (default %(default)s)")
    class_parser.add_argument("--json", action="store_true", help="print the completion event as JSON")
    state_dir(class_parser)

    redrive_parser = command("redrive", cmd_redrive, "re-import the objects a failed import's receipt names "
                             "(those still not in the store) and wait for the redrive's completion event")
    redrive_parser.add_argument("receipt", metavar="RECEIPT",
                                help="the failed import's operation id, event id (op-ID) or receipts/ID.json")
    redrive_parser.add_argument("--request-id", metavar="ID", help="default: cli-<uuid>; a repeated id "
                                "starts nothing new")
    redrive_parser.add_argument("--timeout", type=_positive, default=export_cli.DEFAULT_TIMEOUT_SECONDS,
                                metavar="SECONDS", help="give up waiting after this long (default %(default)s)")
    redrive_parser.add_argument("--json", action="store_true", help="print the completion event as JSON")
    state_dir(redrive_parser)

    status_parser = command("status", cmd_status, "tracked operations, queued jobs, open windows and the "
                            "latest completion events")
    status_parser.add_argument("--events", type=int, default=status.DEFAULT_EVENTS, metavar="N",
                               help="how many of the latest completion events (default %(default)s)")
    status_parser.add_argument("--json", action="store_true", help="print one JSON object")
    state_dir(status_parser)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
