"""`python -m localcloud COMMAND`: run and use the local cloud. One small function per command."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from localcloud import demo
from localcloud.components import ComponentError
from localcloud.config import LocalConfig
from localcloud.stack import Stack, StackError, env_exports, read_endpoints

DEFAULT_STATE_DIR = Path(".localcloud")
NOT_RUNNING = "no local cloud is running for {state_dir}; start one with: python -m localcloud up"
_LABEL_WIDTH = 12


def say(label: str, text: str) -> None:
    """One aligned line: a short label column, then the text."""
    print(f"{label:<{_LABEL_WIDTH}}{text}", flush=True)


def _print_endpoints(stack: Stack) -> None:
    endpoints = stack.endpoints
    say("storage", endpoints["storage"])
    say("pubsub", endpoints["pubsub"])
    say("healthcare", endpoints["healthcare"])
    say("dicom store", endpoints["dicomStore"])
    for role, url in endpoints["functions"].items():
        say(f"fn {role}", url)
    say("logs", endpoints["logs"])


def _wait_for_signal(stack: Stack) -> int:
    """Blocks until SIGINT/SIGTERM (exit 0) or until a component dies (exit 1, naming it)."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping.wait(1.0):
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
    config = LocalConfig(poll_interval_seconds=args.poll_interval)
    # A SIGTERM while starting must still stop what has started: make it an exception.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        stack = Stack.start(args.state_dir, config=config)
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
    with tempfile.TemporaryDirectory(prefix="localcloud-demo-") as scratch:
        state_dir = args.state_dir or Path(scratch) / "state"
        started = time.monotonic()
        try:
            # The manual flow drives the emulators itself; running functions would import twice.
            stack = Stack.start(state_dir, roles=())
        except (StackError, ComponentError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        with stack:
            say("local cloud", f"up in {time.monotonic() - started:.1f} s (state: {state_dir})")
            try:
                demo.run_manual_flow(stack.endpoints, Path(scratch), say)
            except demo.DemoError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        say("local cloud", "stopped")
    return 0


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
    env = command("env", cmd_env, "print shell exports for the running local cloud")
    env.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    demo_parser = command("demo", cmd_demo, "start a local cloud, import and export a synthetic set, stop")
    demo_parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
