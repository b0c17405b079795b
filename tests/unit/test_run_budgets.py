"""The time budgets of a leader's plan and a poller run stay within half their function's timeout
(decisions 0761, 0775): a change of a timeout in infra/functions.tf must not leave them behind;
and the arithmetic of a poller run's budget (functions.imports.run_budget)."""

from __future__ import annotations

import re
from pathlib import Path

from functions.imports import poll_operations, window_batcher
from functions.imports.run_budget import RunBudget, unlimited

FUNCTIONS_TF = Path(__file__).resolve().parents[2] / "infra" / "functions.tf"


def _timeout(function: str) -> float:
    text = FUNCTIONS_TF.read_text()
    block = re.search(rf"\n\s*{function} = \{{(.*?)\n\s*\}}", text, re.S)
    assert block is not None, f"no {function} block in function_defaults"
    value = re.search(r"timeout_seconds\s*=\s*(\d+)", block.group(1))
    assert value is not None, f"no timeout_seconds for {function}"
    return float(value.group(1))


def test_a_leader_plans_within_half_the_import_functions_timeout() -> None:
    assert window_batcher.PLAN_SECONDS <= _timeout("import") / 2


def test_a_poller_run_stops_its_growing_steps_within_half_the_poll_functions_timeout() -> None:
    half = _timeout("poll") / 2
    assert poll_operations.RECOVERY_SECONDS < poll_operations.RUN_SECONDS <= half


def test_a_poller_runs_budget_plus_its_longest_unit_stays_within_half_the_poll_functions_timeout() -> None:
    """A unit starts only while the time so far plus the longest of its kind stays within
    RUN_SECONDS; the longest unit measured at x5 latency (a page of 1,000 copies, a chunk of
    objects to account for) is about 30 s."""
    assert poll_operations.RUN_SECONDS + 30.0 <= _timeout("poll") / 2


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_first_unit_may_start_until_the_deadline_and_a_later_one_only_if_it_would_end_by_it() -> None:
    clock = _Clock()
    budget = RunBudget.from_now(clock, 120.0, 10_000)
    clock.now += 119.0
    assert budget.allows("page")  # none measured yet
    budget.spent("page", 30.0, 1000)
    clock.now = 1000.0 + 90.5
    assert not budget.allows("page")  # 90.5 + 30 > 120: it would end past the deadline
    clock.now = 1000.0 + 90.0
    assert budget.allows("page")  # it would end at the deadline
    assert budget.allows("chunk")  # another kind has its own longest unit
    clock.now = 1000.0 + 121.0
    assert not budget.allows("chunk")  # past the deadline nothing starts


def test_objects_are_shared_by_every_kind_of_unit() -> None:
    clock = _Clock()
    budget = RunBudget.from_now(clock, 120.0, 2500)
    assert budget.take(1000) == 1000
    budget.spent("page", 1.0, 1000)
    budget.spent("chunk", 1.0, 1000)
    assert budget.take(1000) == 500
    budget.spent("window", 1.0, 500)
    assert budget.take(1000) == 0 and not budget.allows("page") and not budget.allows("window")
    budget.spent("window", 1.0, 40)  # a unit that had started takes what it takes
    assert budget.take(10) == 0 and budget.objects == -40


def test_a_step_without_a_run_is_unbounded() -> None:
    budget = unlimited(_Clock())
    assert budget.allows("page") and budget.take(10**9) == 10**9
