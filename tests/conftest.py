"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _isolated_environ() -> Iterator[None]:
    """Each test gets os.environ back as it found it.

    Pytest sets up session fixtures before function fixtures, so the snapshot already contains
    what session fixtures export (emulator hosts); a test cannot leak variables into the next one,
    nor remove the session's.
    """
    baseline = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(baseline)
