"""The time budgets of a leader's plan and a poller run stay within half their function's timeout
(decision 0761): a change of a timeout in infra/functions.tf must not leave them behind."""

from __future__ import annotations

import re
from pathlib import Path

from functions.imports import poll_operations, window_batcher

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
