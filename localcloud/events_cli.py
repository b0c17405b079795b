"""`dicom-events events`: completion events as they come, for a real deployment or the local cloud.

Two sources, chosen by `--since`:

- without it, the deployment's durable pull subscription on the completion topic (infra/'s
  `completion_subscription`, kept 7 days; the local cloud's `subscriptions.completions`). It is a
  mailbox: events published while nobody read it wait there, and what `events` prints is
  acknowledged after it is printed, so the next `events` starts after it. Whoever else reads that
  subscription shares its events.
- with `--since WHEN`, the state bucket's `done/` records (every published event, REJECTED ones
  included, kept `state_retention_days`), oldest first. Nothing is acknowledged anywhere; with
  `--follow` the new events come from a private subscription opened before the records are read,
  so none falls between the two (an event in both is printed once, by `eventId`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from localcloud.connect import PULL_BATCH, Connection
from localcloud.progress import aligned

_IDLE_SECONDS = 0.5  # between empty pulls while following
_SETTLE_SECONDS = 1.0  # without --follow: one more pull after an empty one before ending


def kept_since(connection: Connection, since: datetime) -> list[dict[str, Any]]:
    """The events the state bucket recorded at or after `since`, oldest first."""
    blobs = [b for b in connection.state_objects("done") if b.updated is not None and b.updated >= since]
    events = []
    for blob in reversed(blobs):  # state_objects is newest first
        event = connection.read_state(blob)
        if event is not None:
            events.append(event)
    return events


def line(event: dict[str, Any]) -> str:
    from localcloud.ingest import describe_event

    ended = str(event.get("endTime") or "")[:19].replace("T", " ")
    return aligned("event", f"{ended:<21}{describe_event(event)}")


class _Printer:
    def __init__(self, as_json: bool, max_events: int | None) -> None:
        self.as_json = as_json
        self.max_events = max_events or None
        self.seen: set[str] = set()
        self.count = 0

    @property
    def full(self) -> bool:
        return self.max_events is not None and self.count >= self.max_events

    @property
    def room(self) -> int:
        """How many more messages to pull: a mailbox acknowledges what it pulls, so never more
        than will be printed."""
        return PULL_BATCH if self.max_events is None else max(1, self.max_events - self.count)

    def __call__(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            key = str(event.get("eventId"))
            if key in self.seen:
                continue  # at-least-once delivery, or both a record and a message
            self.seen.add(key)
            print(json.dumps(event, ensure_ascii=False) if self.as_json else line(event), flush=True)
            self.count += 1


def run(connection: Connection, *, follow: bool, since: datetime | None, as_json: bool,
        stopping: Any, max_events: int | None = None) -> int:
    """Prints events until done (see the module docstring); `stopping` turns true on Ctrl-C."""
    printer = _Printer(as_json, max_events)
    if since is not None:
        if not follow:
            printer(kept_since(connection, since)[:printer.max_events])
            return 0
        with connection.event_stream() as stream:
            printer(kept_since(connection, since)[:printer.max_events])
            _follow(lambda handle: stream.pull_then_ack(handle, printer.room), printer, stopping, forever=True)
        return 0
    with connection.durable_events() as stream:
        _follow(lambda handle: stream.pull_then_ack(handle, printer.room), printer, stopping, forever=follow)
    return 0


def _follow(pull: Callable[[Callable[[list[dict[str, Any]]], None]], int], printer: _Printer, stopping: Any,
            *, forever: bool) -> None:
    empty = 0
    while not stopping and not printer.full:
        pulled = pull(printer)
        if pulled:
            empty = 0
            continue
        empty += 1
        if not forever and empty >= 2:
            return  # a second empty pull: Google's Pub/Sub may answer one pull empty while messages wait
        time.sleep(_IDLE_SECONDS if forever else _SETTLE_SECONDS)
