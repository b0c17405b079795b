"""Upload shapes and crash-point helpers several functional test modules share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from functions.imports.window_batcher import WindowResult
from tests import dicom_factory
from tests.functional.faults import Call
from tests.functional.world import UPLOADS, Delivery, World


def staging_window(w: World, k: int, instances: list[Any]) -> list[Delivery]:
    """Window k: two new files beside an old one (seeded without an event), then the window closes.

    Staging the two (one copy each) is cheaper than a glob that reads the old file again, so the
    window's plan is a staging import: one that a later window can grow (functions/imports/job_record.py).
    """
    w.store.put(UPLOADS, f"mig/w{k:02d}/m.dcm", dicom_factory.instance())
    deliveries = w.upload_burst([f"mig/w{k:02d}/a.dcm", f"mig/w{k:02d}/z.dcm"], to=instances)
    w.sim.run_until_idle()
    w.sim.advance(w.settings.debounce_seconds)
    return deliveries


def led(deliveries: list[Delivery]) -> WindowResult:
    """The result of the window's leader among `deliveries`."""
    [result] = [d.outcome.led for d in deliveries if d.outcome.led is not None and d.outcome.led.claimed]
    return result


def record_trace(prepare: Callable[[], World], scenario: Callable[[World], Any]) -> list[Call]:
    """The calls `scenario` makes on a world from `prepare`: the crash points to kill it at."""
    world = prepare()
    world.faults.arm()
    scenario(world)
    return list(world.faults.trace)


def started_untracked(executed: list[Call], method: str = "import_dicom") -> bool:
    """Did an LRO start whose operation record was never written? Then its job is started again
    (functions/imports/job_queue.py), and its objects may be read twice."""
    starts = [c.index for c in executed if c.method == method]
    records = [c.index for c in executed if c.method in ("create", "write") and c.name.startswith("operations/")]
    return bool(starts) and not any(r > starts[-1] for r in records)


def crash_point_ids(trace: list[Call]) -> list[str]:
    """pytest ids of a trace's crash points: `07-replace-jobs`."""
    return [f"{c.index:02d}-{c.method}-{c.name.split('/')[0]}" for c in trace]


def killed_then_redelivered(prepare: Callable[[], World], scenario: Callable[[World], Any], step: int,
                            delay: float = 10.0) -> tuple[World, list[Call]]:
    """Runs `scenario` on a world from `prepare` with the caller of call #`step` killed before it;
    then, `delay` later, every event nobody acknowledged goes to a new instance, and the world
    settles. The world and the calls made before the kill."""
    w = prepare()
    w.faults.arm()
    w.faults.kill_at(step)
    scenario(w)
    assert w.faults.fired, f"no call #{step}: the scenario changed"
    executed = w.faults.trace[:step - 1]
    w.sim.advance(delay)
    w.redeliver_lost(w.instance("retry"))
    w.settle()
    return w, executed
