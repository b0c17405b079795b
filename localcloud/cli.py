"""`python -m localcloud COMMAND`: run and use the local cloud. One small function per command.

The local cloud's own commands: `up` (runs in the foreground until Ctrl-C, SIGTERM or `down`),
`down`, `env`, `demo`. The operator commands (`ingest`, `export`, `storage-class`, `redrive`,
`status`, `events`, `receipts`) are those of `dicom-events ... --local`, the same code
(localcloud.operator_cli).

Exit status: 0 success; 1 something did not succeed (a failed or missing import, an export
that did not end SUCCEEDED, a timeout, no running local cloud); 2 bad arguments."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from localcloud import demo, operator_cli
from localcloud.components import ComponentError
from localcloud.config import FUNCTION_TARGETS, LocalConfig
from localcloud.connect import NOT_RUNNING
from localcloud.progress import aligned
from localcloud.stack import ENDPOINTS_FILE, Stack, StackError, env_exports, read_endpoints

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


def cmd_down(args: argparse.Namespace) -> int:
    """SIGTERM to the `up` process named in endpoints.json; it stops every part and removes the file."""
    endpoints = read_endpoints(args.state_dir)
    if endpoints is None:
        say("local cloud", f"none running for {args.state_dir}")
        return 0
    pid = int(endpoints["processes"]["up"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + args.timeout
    while (args.state_dir / ENDPOINTS_FILE).exists() and read_endpoints(args.state_dir) is not None:
        if time.monotonic() > deadline:
            print(f"error: the local cloud (pid {pid}) did not stop within {args.timeout:.0f} s; "
                  f"its logs: {endpoints.get('logs')}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    say("local cloud", f"stopped (pid {pid})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # the stack stops on the way out
    try:
        return demo.run(args.state_dir)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    up = command("up", cmd_up, "start the local cloud; it stays in the foreground until Ctrl-C, SIGTERM or "
                 "`python -m localcloud down` (from another terminal)")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument(
        "--poll-interval",
        type=operator_cli.positive_number,
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

    down = command("down", cmd_down, "stop the local cloud that `up` runs for --state-dir (from another "
                   "terminal or a script) and wait until it has stopped")
    down.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    down.add_argument("--timeout", type=operator_cli.positive_number, default=60.0, metavar="SECONDS",
                      help="give up waiting after this long (default %(default)s)")
    operator_cli.add_operator_commands(commands, local_only=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    operator_cli.quiet_library_warnings()
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
