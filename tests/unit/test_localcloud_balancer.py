"""Which instance of a scaled-out function gets a delivery, and how `--instances` is read."""

from __future__ import annotations

import argparse

import pytest

from localcloud.balancer import delivery_order
from localcloud.cli import _instances, build_parser, instance_counts

A, B, C = "http://a", "http://b", "http://c"


def test_idle_instances_take_turns() -> None:
    firsts = [delivery_order([A, B, C], {}, turn)[0] for turn in range(6)]
    assert firsts == [A, B, C, A, B, C]


def test_the_least_busy_instance_comes_first_and_every_instance_is_a_fallback() -> None:
    assert delivery_order([A, B, C], {A: 2, B: 0, C: 1}, 0) == [B, C, A]
    assert delivery_order([A, B, C], {A: 1, B: 1, C: 0}, 1) == [C, B, A]
    assert delivery_order([], {}, 3) == []


def test_instances_option_sets_every_function_or_one() -> None:
    args = build_parser().parse_args(["up", "--instances", "3", "--instances", "import=2"])
    assert instance_counts(args.instances) == {"import": 2, "export": 3, "poll": 3}
    assert instance_counts(build_parser().parse_args(["up"]).instances) == {}


@pytest.mark.parametrize("text", ["0", "import=0", "x", "upload=2", "import="])
def test_bad_instance_counts_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _instances(text)
