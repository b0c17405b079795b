"""`up --instances`: two import function processes behind the router; one is killed while it holds
deliveries, and still every uploaded file is imported and the dead instance is replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from localcloud import components, synthetic
from localcloud.components import REPO_ROOT
from localcloud.config import LocalConfig
from localcloud.stack import Stack
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = LocalConfig(poll_interval_seconds=0.5, debounce_seconds=1.0, settle_seconds=0.5,
                         claim_lease_seconds=6.0)
    with Stack.start(tmp_path_factory.mktemp("instances") / "state", config=config,
                     instances={"import": 2}) as running:
        yield running


def localcloud(stack: Stack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "localcloud", *args, "--state-dir", str(stack.state_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def ingest_everything_while(stack: Stack, studies: synthetic.SyntheticSet, prefix: str,
                            meanwhile: Callable[[], None]) -> None:
    """`localcloud ingest` of every file of `studies`, doing `meanwhile` as it runs; all must land."""
    ingest = localcloud(stack, "ingest", str(studies.root), "--prefix", prefix, "--json", "--timeout", "240")
    try:
        meanwhile()
        out, err = ingest.communicate(timeout=300)
    finally:
        if ingest.poll() is None:
            ingest.kill()
    assert ingest.returncode == 0, out + err
    result = json.loads(out)
    assert result["failed"] == [] and result["imported"] == len(studies.files)


def test_a_killed_import_instance_loses_nothing_and_is_replaced(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second = stack.instances["import"]
    assert first.component.url != second.component.url
    balancer = stack.balancers["import"]
    assert stack.endpoints["functions"]["import"] == balancer.url
    studies = synthetic.generate(tmp_path_factory.mktemp("synthetic") / "set", seed=11, patients=3,
                                 studies_per_patient=(1, 1), instances_per_series=(3, 4))

    victim = second.component

    def kill_the_second_instance_while_it_holds_deliveries() -> None:
        # It answers only once their debounce window closed, so they must be redelivered elsewhere.
        wait_for(lambda: balancer.in_flight()[victim.url] > 0, timeout=120,
                 what="a delivery in flight on the second import instance")
        os.killpg(victim.pid, signal.SIGKILL)

    ingest_everything_while(stack, studies, "scaled", kill_the_second_instance_while_it_holds_deliveries)

    replaced = wait_for(lambda: second.restarts == 1 and second.component, what="the replacement")
    assert replaced.pid != victim.pid and replaced.running() and replaced.url == victim.url
    assert not components.live_group_members(victim.pid)
    assert first.restarts == 0 and first.component.running()
    on_disk = json.loads(stack.endpoints_file.read_text())
    assert [i["restarts"] for i in on_disk["functionInstances"]["import"]] == [0, 1]
    assert on_disk["processes"][replaced.name] == replaced.pid
    status = localcloud(stack, "status", "--json")
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err
    assert json.loads(out)["functions"]["import"] == {"instances": 2, "restarts": 1}
    router_log = (stack.logs_dir / "router.log").read_text()
    assert f"{victim.name} (pid {victim.pid}) exited" in router_log


def test_every_import_instance_killed_at_once_loses_nothing(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The chaos benchmark's worst moment: no live instance at all while deliveries keep coming.
    balancer = stack.balancers["import"]
    studies = synthetic.generate(tmp_path_factory.mktemp("synthetic") / "set", seed=12, patients=3,
                                 studies_per_patient=(1, 1), instances_per_series=(3, 4))

    victims = [instance.component for instance in stack.instances["import"]]

    def kill_every_instance_while_one_holds_a_delivery() -> None:
        wait_for(lambda: sum(balancer.in_flight().values()) > 0, timeout=120, what="a delivery in flight")
        for victim in victims:
            os.killpg(victim.pid, signal.SIGKILL)

    ingest_everything_while(stack, studies, "all-dead", kill_every_instance_while_one_holds_a_delivery)
    wait_for(lambda: all(i.restarts == 1 and i.component.running() for i in stack.instances["import"]),
             what="both replacements")
    assert all(not components.live_group_members(v.pid) for v in victims)
