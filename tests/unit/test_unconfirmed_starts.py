"""Finding the operation an unconfirmed start began: pure decisions on plain inputs."""

from __future__ import annotations

from typing import Any

import pytest

from functions.imports.job_queue import (
    CLOCK_SKEW_SECONDS,
    MIN_UNKNOWN_OUTCOME_SECONDS,
    Candidate,
    Resolution,
    UnconfirmedStart,
    candidates,
    parse_time,
    resolve,
    unknown_outcome_seconds,
)

DATASET = "projects/p/locations/l/datasets/d"
T0 = parse_time("2026-01-01T10:00:00Z") or 0.0
WINDOW = 600.0


def _op(op_id: str, method: str, created: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"{DATASET}/operations/{op_id}",
            "metadata": {"apiMethodName": f"google.cloud.healthcare.v1.dicom.DicomService.{method}",
                         "createTime": created}, **extra}


def _cand(op_id: str, kind: str, at: float) -> Candidate:
    return Candidate(f"{DATASET}/operations/{op_id}", kind, at)


def test_parse_time_takes_any_fraction_and_rejects_garbage() -> None:
    assert parse_time("2026-01-01T10:00:01.123456789Z") == pytest.approx(T0 + 1.123456)
    assert parse_time("2026-01-01T10:00:01.5Z") == pytest.approx(T0 + 1.5)
    assert parse_time("2026-01-01T10:00:01Z") == T0 + 1
    assert parse_time("") is None and parse_time("yesterday") is None


def test_candidates_are_untracked_imports_and_exports_since_the_attempt_oldest_first() -> None:
    ops = [
        _op("e2", "ExportDicomData", "2026-01-01T10:00:09Z", done=True),
        _op("i1", "ImportDicomData", "2026-01-01T10:00:05Z"),
        _op("tracked", "ImportDicomData", "2026-01-01T10:00:06Z"),
        _op("old", "ImportDicomData", "2026-01-01T09:59:00Z"),
        _op("other", "DeidentifyDicomStore", "2026-01-01T10:00:07Z"),
        _op("no-time", "ImportDicomData", ""),
        {"name": "", "metadata": {}},
    ]
    found = candidates(ops, tracked={"tracked"}, since=T0)
    assert found == [_cand("i1", "import", T0 + 5), _cand("e2", "export", T0 + 9)]


def test_an_operation_after_the_attempt_is_adopted() -> None:
    start = UnconfirmedStart("job-a", "export", T0)
    assert resolve([start], [_cand("x", "export", T0 + 4)], now=T0 + 5, unknown_outcome_seconds=WINDOW) == [
        Resolution("job-a", "adopt", f"{DATASET}/operations/x")]


def test_clock_skew_is_allowed_but_older_operations_are_not_ours() -> None:
    start = UnconfirmedStart("job-a", "import", T0)
    within = _cand("skewed", "import", T0 - CLOCK_SKEW_SECONDS + 1)
    older = _cand("older", "import", T0 - CLOCK_SKEW_SECONDS - 1)
    assert resolve([start], [older, within], now=T0 + 1, unknown_outcome_seconds=WINDOW)[0].operation.endswith(
        "/skewed")
    assert resolve([start], [older], now=T0 + 1, unknown_outcome_seconds=WINDOW) == [Resolution("job-a", "wait")]


def test_kinds_never_mix() -> None:
    start = UnconfirmedStart("job-a", "import", T0)
    assert resolve([start], [_cand("e", "export", T0 + 1)], now=T0 + 2, unknown_outcome_seconds=WINDOW) == [
        Resolution("job-a", "wait")]


def test_without_an_operation_the_slot_is_held_until_the_window_ends_then_the_job_is_requeued() -> None:
    start = UnconfirmedStart("job-a", "export", T0)
    assert resolve([start], [], now=T0 + WINDOW - 1, unknown_outcome_seconds=WINDOW) == [Resolution("job-a", "wait")]
    assert resolve([start], [], now=T0 + WINDOW, unknown_outcome_seconds=WINDOW) == [Resolution("job-a", "requeue")]


def test_an_operation_two_starts_can_have_begun_is_adopted_by_neither_and_disowned_when_they_give_up() -> None:
    # "first" can only be early's, but early can also have begun "second", which late can have begun too.
    starts = [UnconfirmedStart("late", "import", T0 + 20), UnconfirmedStart("early", "import", T0)]
    found = [_cand("first", "import", T0 + 3), _cand("second", "import", T0 + 25)]
    assert resolve(starts, found, now=T0 + 30, unknown_outcome_seconds=WINDOW) == [
        Resolution("early", "wait"), Resolution("late", "wait")]

    given_up = {r.job_id: r for r in resolve(starts, found, now=T0 + WINDOW, unknown_outcome_seconds=WINDOW)}
    assert given_up["early"] == Resolution("early", "requeue", disowned=(f"{DATASET}/operations/first",
                                                                        f"{DATASET}/operations/second"))
    assert given_up["late"] == Resolution("late", "wait")


def test_one_operation_after_two_attempts_is_adopted_by_neither() -> None:
    starts = [UnconfirmedStart("y", "import", T0), UnconfirmedStart("x", "import", T0 + 1)]
    assert [r.action for r in resolve(starts, [_cand("xs", "import", T0 + 2)], now=T0 + 30,
                                      unknown_outcome_seconds=WINDOW)] == ["wait", "wait"]


def test_one_start_and_one_operation_that_only_it_can_have_begun_is_an_adoption() -> None:
    starts = [UnconfirmedStart("early", "import", T0), UnconfirmedStart("late", "import", T0 + 60)]
    result = resolve(starts, [_cand("first", "import", T0 + 3)], now=T0 + 70, unknown_outcome_seconds=WINDOW)
    assert result == [Resolution("early", "adopt", f"{DATASET}/operations/first"), Resolution("late", "wait")]


def test_a_start_in_flight_that_can_have_begun_the_operation_blocks_its_adoption() -> None:
    start = UnconfirmedStart("y", "import", T0)
    found = [_cand("op", "import", T0 + 5)]
    starting = UnconfirmedStart("x", "import", T0 + 4)
    assert resolve([start], found, now=T0 + 30, unknown_outcome_seconds=WINDOW, in_flight=[starting]) == [
        Resolution("y", "wait")]
    other_kind = UnconfirmedStart("e", "export", T0 + 4)
    assert resolve([start], found, now=T0 + 30, unknown_outcome_seconds=WINDOW, in_flight=[other_kind]) == [
        Resolution("y", "adopt", f"{DATASET}/operations/op")]


def test_the_window_outlasts_the_client_timeout_and_its_retries() -> None:
    assert unknown_outcome_seconds(60, 30) == MIN_UNKNOWN_OUTCOME_SECONDS
    assert unknown_outcome_seconds(500, 100) == 1100
