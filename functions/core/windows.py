"""Debounce windows: which window an upload belongs to, and the names of its state records.

Pure functions. The window comes from the object's creation time, which every redelivery of the
event repeats, so a duplicated event always lands on the same record name.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime

_FORMAT = "%Y%m%dT%H%M%S"


def window_id(time_created: datetime, debounce_seconds: float) -> str:
    """The id of the window holding `time_created`: its start, sortable, e.g. 20261127T020105000Z."""
    epoch = time_created.timestamp()
    start = math.floor(epoch / debounce_seconds) * debounce_seconds
    return _format(start)


def window_start(window: str) -> float:
    """Epoch seconds at which `window` starts (inverse of `window_id`)."""
    whole = datetime.strptime(window[:15], _FORMAT).replace(tzinfo=UTC).timestamp()
    return whole + int(window[15:18]) / 1000


def window_close(window: str, debounce_seconds: float) -> float:
    return window_start(window) + debounce_seconds


def _format(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime(_FORMAT) + f"{moment.microsecond // 1000:03d}Z"


def object_key(bucket: str, name: str, generation: int) -> str:
    """A fixed-length key of one object generation (object names may be 1 KiB of anything)."""
    return hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()[:40]


def is_window_id(value: str) -> bool:
    """Is `value` a window id (`20261127T020105000Z`)?"""
    if len(value) != 19 or not value.endswith("Z") or not value[15:18].isdigit():
        return False
    try:
        datetime.strptime(value[:15], _FORMAT)
    except ValueError:
        return False
    return True
