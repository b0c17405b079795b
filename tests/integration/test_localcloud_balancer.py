"""The balancer in front of a scaled-out function, against real HTTP servers a test controls."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from localcloud import components
from localcloud.balancer import Balancer
from tests.integration.conftest import HttpReceiver


@pytest.fixture
def receivers() -> Iterator[list[HttpReceiver]]:
    pair = [HttpReceiver(), HttpReceiver()]
    try:
        yield pair
    finally:
        for receiver in pair:
            receiver.close()


def running(targets: list[str]) -> Balancer:
    balancer = Balancer("test", targets)
    balancer.start()
    return balancer


def test_requests_are_spread_and_relayed_unchanged(receivers: list[HttpReceiver]) -> None:
    balancer = running([r.url for r in receivers])
    try:
        with requests.Session() as session:
            for i in range(4):
                answer = session.post(f"{balancer.url}/hook?n={i}", data=b"body", headers={"ce-id": str(i)})
                assert answer.status_code == 200
    finally:
        balancer.stop()
    assert [len(r.requests) for r in receivers] == [2, 2]
    got = sorted((r.path, r.headers["ce-id"], r.body) for rec in receivers for r in rec.requests)
    assert got == [(f"/hook?n={i}", str(i), b"body") for i in range(4)]


def test_a_dead_instance_or_a_5xx_is_retried_on_another_instance(receivers: list[HttpReceiver]) -> None:
    dead = f"http://{components.LOOPBACK}:{components.free_port()}"  # nothing listens there
    balancer = running([dead, receivers[0].url])
    try:
        assert all(requests.post(balancer.url, data=b"x").status_code == 200 for _ in range(3))
    finally:
        balancer.stop()
    assert len(receivers[0].requests) == 3

    receivers[1].answer_next(503)
    balancer = running([receivers[1].url, receivers[0].url])
    try:
        assert requests.post(balancer.url, data=b"y").status_code == 200
    finally:
        balancer.stop()
    assert [len(r.requests) for r in receivers] == [4, 1]  # the 503 was tried once more, elsewhere


def test_when_every_instance_fails_the_caller_gets_the_failure(receivers: list[HttpReceiver]) -> None:
    receivers[0].answer_next(500)
    dead = f"http://{components.LOOPBACK}:{components.free_port()}"
    balancer = running([receivers[0].url, dead])
    try:
        assert requests.post(balancer.url, data=b"z").status_code == 500  # so the router nacks
    finally:
        balancer.stop()
    balancer = running([dead])
    try:
        assert requests.post(balancer.url, data=b"z").status_code == 502
    finally:
        balancer.stop()
