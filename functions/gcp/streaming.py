"""One call per item on a fixed number of workers, each call started as soon as a worker is free.

A window's leader copies and deletes thousands of objects while it holds a lease. Done in rounds
(start a round's calls, wait for all of them, look at the lease) one slow call holds up every
worker of its round, and with a 1% tail of slow calls nearly every round has one. Here a slow call
holds up only its own worker, and the lease is looked at between completions, before each next
call (decision 0760).
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from functions.gcp.retry import is_transient


class Workers:
    """`count` threads; `stream` submits to them and waits for one to be free."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool = ThreadPoolExecutor(max_workers=count)
        self._running: set[Future[None]] = set()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.shutdown(wait=True)

    @property
    def busy(self) -> int:
        return len(self._running)

    def submit(self, call: Callable[[], None]) -> None:
        self._running.add(self._pool.submit(call))

    def wait_one(self) -> None:
        """Until at least one call submitted has finished; re-raises what a call let through."""
        done, running = wait(self._running, return_when=FIRST_COMPLETED)
        self._running = set(running)
        for future in done:
            error = future.exception()
            if error is not None:
                raise error


def stream(action: Callable[[Any], object], items: Iterable[Any], *, workers: int,
           between: Callable[[float], bool], clock: Callable[[], float], attempts: int) -> bool:
    """Calls `action(item)` for every item, at most `workers` at a time; False when `between` refused.

    `between(ahead)` is asked before each call is started, in the caller's thread, with `ahead`
    twice the longest call so far (the most the next look may be delayed by): it renews what the
    caller holds when that is due and returns False once that is lost, and then no further call
    starts (those running finish). An item whose call failed with a transient fault (a 429 or 503
    after the client's own retries) goes to the back of the line and is tried again after another
    look (decision 0752); its fault is raised after `attempts` calls. Any other fault is raised
    once the running calls have finished, and no further call starts.
    """
    line: deque[tuple[Any, int]] = deque((item, 1) for item in items)
    lock = threading.Lock()
    refused: list[tuple[Any, int, Exception]] = []
    fatal: list[BaseException] = []
    longest = [0.0]

    def call(item: Any, attempt: int) -> None:
        began = clock()
        try:
            action(item)
        except Exception as exc:
            with lock:
                if is_transient(exc):
                    refused.append((item, attempt, exc))
                else:
                    fatal.append(exc)
        finally:
            with lock:
                longest[0] = max(longest[0], clock() - began)

    kept = True
    with Workers(min(workers, max(len(line), 1))) as pool:
        while True:
            with lock:
                for item, attempt, exc in refused:
                    if attempt >= attempts:
                        fatal.append(exc)
                    else:
                        line.append((item, attempt + 1))
                refused.clear()
                stop = bool(fatal)
                ahead = 2 * longest[0]
            if stop:
                break
            if line and pool.busy < pool.count:
                if not between(ahead):
                    kept = False
                    break
                pool.submit(functools.partial(call, *line.popleft()))
            elif pool.busy:
                pool.wait_one()
            else:
                break
        while pool.busy:
            pool.wait_one()
    if fatal:
        raise fatal[0]
    return kept
