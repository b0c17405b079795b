"""A fake `time` for google-api-core's retry loop, so retry tests neither sleep nor depend on speed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from google.api_core.retry import retry_base, retry_unary


@dataclass
class FakeTime:
    """Stands in for the `time` module inside the retry loop: sleeping moves the clock."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def install(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(retry_unary, "time", fake)
    monkeypatch.setattr(retry_base, "time", fake)
    return fake
