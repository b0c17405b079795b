"""The functional layer: the real handlers on in-memory fakes and a simulated clock (no network, no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functional.world import World

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.functional)


@pytest.fixture
def world() -> World:
    return World()
