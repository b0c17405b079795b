"""The chaos benchmark's arguments and the invariants it checks (the run itself is in bench/)."""

from __future__ import annotations

import pytest

from bench.chaos import FULL_FILES, QUICK_FILES, Result, make_files, parse_args, violations


def test_quick_means_a_thousand_files_unless_files_is_given() -> None:
    assert parse_args([]).files == FULL_FILES
    assert parse_args(["--quick"]).files == QUICK_FILES
    assert parse_args(["--quick", "--files", "50"]).files == 50


@pytest.mark.parametrize("argv", [["--files", "0"], ["--instances", "0"], ["--max-operations", "0"],
                                  ["--timeout", "0"], ["--kill-every", "-1"]])
def test_nonsense_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(argv)
    assert refused.value.code == 2


def test_a_clean_run_keeps_every_invariant() -> None:
    result = Result(uploaded=10, imported=10, cap=5, max_concurrent_lros=5)
    assert violations(result) == []


def test_each_broken_invariant_is_named() -> None:
    result = Result(uploaded=10, imported=9, lost=1, cap=5, max_concurrent_lros=6,
                    operations_without_event=["projects/p/locations/l/datasets/d/operations/1"], timed_out=True)
    broken = violations(result)
    assert len(broken) == 4
    assert "1 uploaded files are not in the store" in broken
    assert "6 LROs ran at once, the cap is 5" in broken


def test_read_twice_and_duplicate_events_are_reported_not_failed() -> None:
    # At-least-once delivery under SIGKILL may repeat work; only loss and the cap are invariants.
    result = Result(uploaded=3, imported=3, cap=5, objects_read_more_than_once=2,
                    operations_with_several_events=1)
    assert violations(result) == []


def test_files_are_unique_dicom_instances_in_study_folders() -> None:
    files = make_files(120)
    assert len({sop for _, _, sop in files}) == 120
    assert len({name for name, _, _ in files}) == 120
    assert all(name.endswith(".dcm") and data[128:132] == b"DICM" for name, data, _ in files)
    assert len({name.split("/")[1] for name, _, _ in files}) == 2  # 100 instances per study
