"""No resource that is known to fail on the first apply unless it waits, without the wait.

Each pattern: a consumer whose creation the API refuses until a producer made in the same apply
has propagated, and the wait the API documents. The consumer must reach the producer only through
a `time_sleep` of at least that long (one that also names the producer, so that a new producer is
waited for again); a reference or `depends_on` that bypasses the wait is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.graph_mirror import Mirror
from tests.infra.hcl import INFRA

# (consumer type, producer type, seconds to wait, why)
PATTERNS = [
    ("google_monitoring_alert_policy", "google_logging_metric", 600,
     "Monitoring answers 404 for a new user log-based metric for up to 10 minutes; the provider retries only 409"),
]
WAIT_TYPE = "time_sleep"
_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


def seconds(duration: str) -> int:
    """A time_sleep duration ("600s", "10m", "1h2m3s") in seconds."""
    match = _DURATION.fullmatch(duration)
    assert match and duration, f"not a literal duration: {duration!r}"
    return sum(int(match.group(unit) or 0) * factor for unit, factor in (("h", 3600), ("m", 60), ("s", 1)))


Bodies = dict[str, tuple[str, dict[str, Any]]]


def _graph(directory: Path) -> tuple[dict[str, list[str]], Bodies, Mirror]:
    """(node -> the nodes it references, node -> (resource type, body), the reference reader)."""
    mirror = Mirror(directory)
    graph: dict[str, list[str]] = {}
    bodies: Bodies = {}
    for rtype, entries in mirror.config.get("resource", {}).items():
        for name, body in entries.items():
            node = f"terraform_data.{rtype}__{name}"
            graph[node] = mirror.references(body)
            bodies[node] = (rtype, body)
    for name, value in mirror.config.get("locals", {}).items():
        graph[f"local.{name}"] = mirror.references(value)
    return graph, bodies, mirror


def _reaches(refs: list[str], rtype: str, graph: dict[str, list[str]], bodies: Bodies) -> bool:
    """Whether any of `refs` is, or leads to, a resource of type `rtype`."""
    stack, seen = list(refs), set(refs)
    while stack:
        node = stack.pop()
        if bodies.get(node, ("", {}))[0] == rtype:
            return True
        for ref in graph.get(node, []):
            if ref not in seen:
                seen.add(ref)
                stack.append(ref)
    return False


def violations(directory: Path) -> list[str]:
    graph, bodies, mirror = _graph(directory)
    found: list[str] = []
    for consumer_type, producer_type, wait, why in PATTERNS:
        for start, (rtype, _) in bodies.items():
            if rtype != consumer_type:
                continue
            # Walk the references; a wait is not walked through, but checked.
            stack: list[tuple[str, list[str]]] = [(start, [start])]
            seen = {start}
            while stack:
                node, path = stack.pop()
                for ref in graph.get(node, []):
                    if ref in seen:
                        continue
                    seen.add(ref)
                    kind, body = bodies.get(ref, ("", {}))
                    route = " -> ".join(p.removeprefix("terraform_data.") for p in [*path, ref])
                    if kind == producer_type:
                        found.append(f"{route}: no wait between them ({why})")
                    elif kind == WAIT_TYPE:
                        if not _reaches(graph[ref], producer_type, graph, bodies):
                            continue
                        duration = str(body.get("create_duration", ""))
                        if not duration or seconds(duration) < wait:
                            found.append(f"{route}: create_duration {duration or 'unset'} is shorter than {wait}s")
                        if not _reaches(mirror.references(body.get("triggers", {})), producer_type, graph, bodies):
                            found.append(f"{route}: its triggers do not name the {producer_type}, "
                                         "so a new one is not waited for")
                    else:
                        stack.append((ref, [*path, ref]))
    return found


def test_infra_has_no_known_two_apply_pattern() -> None:
    for directory in (INFRA, *sorted(p for p in (INFRA / "modules").iterdir() if p.is_dir())):
        found = violations(directory)
        assert not found, "\n".join(found)


def test_the_alert_policies_do_wait_for_the_log_metrics() -> None:
    graph, bodies, _ = _graph(INFRA)
    assert any(rtype == WAIT_TYPE for rtype, _ in bodies.values()), "no wait: the check above would pass vacuously"
    policies = [node for node, (rtype, _) in bodies.items() if rtype == "google_monitoring_alert_policy"]
    on_metrics = [p for p in policies if _reaches(graph[p], "google_logging_metric", graph, bodies)]
    assert len(on_metrics) == 3, on_metrics  # all but the dead-letter alert use our log-based metrics


# --------------------------------------------------------------------------- the check can fail

METRIC = '''
resource "google_logging_metric" "m" {
  name   = "m"
  filter = "x"
}
'''
SLEEP = '''
resource "time_sleep" "wait" {
  create_duration = "%s"
  triggers        = { m = google_logging_metric.m.name }
}
'''
POLICY = '''
resource "google_monitoring_alert_policy" "p" {
  display_name = "p"
  combiner     = "OR"
  conditions {
    display_name = "c"
    condition_absent {
      filter   = "metric.type=\\"logging.googleapis.com/user/${%s}\\""
      duration = "60s"
    }
  }
}
'''


@pytest.mark.parametrize("text,expected", [
    (METRIC + POLICY % "google_logging_metric.m.name", "no wait between them"),
    (METRIC + SLEEP % "60s" + POLICY % "time_sleep.wait.triggers.m", "create_duration 60s is shorter than 600s"),
    (METRIC + SLEEP % "600s" + POLICY % "time_sleep.wait.triggers.m", None),
    (METRIC + SLEEP % "600s" + POLICY.replace('display_name = "p"', 'display_name = "p"\n  depends_on = [local.m]')
     % "time_sleep.wait.triggers.m" + "\nlocals {\n  m = google_logging_metric.m.name\n}\n", "no wait between them"),
    (METRIC + 'resource "time_sleep" "wait" {\n  create_duration = "600s"\n'
     + '  depends_on = [google_logging_metric.m]\n}\n' + POLICY % "time_sleep.wait.id",
     "its triggers do not name the google_logging_metric"),
])
def test_the_check_refuses_a_missing_short_or_bypassed_wait(tmp_path: Path, text: str, expected: str | None) -> None:
    (tmp_path / "main.tf").write_text(text, encoding="utf-8")
    found = violations(tmp_path)
    if expected is None:
        assert found == [], found
    else:
        assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("duration,value", [("600s", 600), ("10m", 600), ("1h2m3s", 3723), ("45s", 45)])
def test_durations(duration: str, value: int) -> None:
    assert seconds(duration) == value
