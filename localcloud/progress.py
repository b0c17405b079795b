"""What the CLI shows while it works: aligned lines, and progress bars on a terminal.

A `Reporter` writes to one stream. On a terminal a bar is a tqdm bar; elsewhere (a pipe, a log
file, CI) it is one plain line when it finishes, so logs stay short. `Reporter.off()` shows
nothing at all (`--json` without a terminal: stdout carries only the JSON).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

LABEL_WIDTH = 12


def aligned(label: str, text: str) -> str:
    """One line: a short label column, then the text."""
    # A label as wide as the column (storageClass) or wider still keeps one space before the text.
    return f"{label:<{LABEL_WIDTH - 1}} {text}".rstrip() if label else f"{'':<{LABEL_WIDTH}}{text}".rstrip()


class Bar:
    """A counter with a total; `update_to` sets the count (it never goes back)."""

    def __init__(self, reporter: Reporter, label: str, total: int, unit: str) -> None:
        self._reporter = reporter
        self.label = label
        self.total = total
        self.unit = unit
        self.count = 0
        self._tqdm: Any = None
        if reporter.enabled and reporter.tty:
            from tqdm import tqdm  # lazy: only a terminal needs it

            size = shutil.get_terminal_size((100, 24))

            self._tqdm = tqdm(
                total=total,
                desc=f"{label:<{LABEL_WIDTH - 1}}",
                unit=f" {unit}",
                file=reporter.stream,
                leave=True,
                # A terminal that reports no size (0x0, e.g. a bare pty) would hide the bar.
                ncols=min(size.columns, 120),
                nrows=size.lines,
                bar_format="{desc} {bar:30} {n_fmt}/{total_fmt}{unit} [{elapsed}]",
            )

    def update_to(self, count: int) -> None:
        count = min(max(count, self.count), self.total)
        if self._tqdm is not None and count > self.count:
            self._tqdm.update(count - self.count)
        self.count = count

    def write(self, line: str) -> None:
        """A line above the bar (tqdm keeps the bar at the bottom)."""
        if self._tqdm is not None:
            self._tqdm.write(line, file=self._reporter.stream)
        else:
            self._reporter.print(line)

    def close(self, note: str = "") -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            if note:
                self._reporter.say("", note)
        else:
            suffix = f" ({note})" if note else ""
            self._reporter.say(self.label, f"{self.count}/{self.total} {self.unit}{suffix}")


class Reporter:
    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled
        self._bar: Bar | None = None

    @classmethod
    def off(cls) -> Reporter:
        return cls(sys.stderr, tty=False, enabled=False)

    @classmethod
    def for_command(cls, json_output: bool) -> Reporter:
        """stdout for people; with --json, bars on stderr when it is a terminal, else nothing."""
        if not json_output:
            return cls(sys.stdout)
        if sys.stderr.isatty():
            return cls(sys.stderr, tty=True)
        return cls.off()

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None and self._bar._tqdm is not None:
            self._bar.write(line)
        else:
            print(line, file=self.stream, flush=True)

    def say(self, label: str, text: str) -> None:
        self.print(aligned(label, text))

    @contextmanager
    def bar(self, label: str, total: int, unit: str) -> Iterator[Bar]:
        bar = Bar(self, label, total, unit)
        self._bar = bar
        try:
            yield bar
        finally:
            self._bar = None
            bar.close()
