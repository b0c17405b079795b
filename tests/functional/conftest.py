"""The functional layer: the real handlers on in-memory fakes and a simulated clock (no network, no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

import functions.gcp.streaming
from tests.functional.cloud_limits import SimulatedWorkers
from tests.functional.world import World

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.functional)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture(autouse=True)
def _streamed_calls_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader's streamed calls (functions.gcp.streaming) run one after the other, in submission
    order, in the task's turn: what a test makes a call do (a fault, a jump of the clock) is seen
    by the leader's next look at its lease on every machine. Under `CloudConditions` the calls
    take the simulated time that workers side by side would."""
    monkeypatch.setattr(functions.gcp.streaming, "Workers", lambda count: SimulatedWorkers(None, count))
