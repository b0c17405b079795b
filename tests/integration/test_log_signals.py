"""The monitoring signals of infra/monitoring.tf, evaluated on the log lines the pipeline prints.

A failed import (one object is not DICOM), a queued job (the slot cap is 1 and two imports wait)
and a rejected export run through the real handlers and the poller on the emulators; every JSON
line they log is captured as Cloud Run would ingest it, and each log-based metric's filter and
extractors are evaluated on those lines: each metric must see the lines it was made for, with
the labels and values the alerts rely on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from functions.log import JsonFormatter
from tests import dicom_factory
from tests.infra import monitoring_config as mc
from tests.integration.harness import Deployment, deliver_all, distinct, export_handler, pubsub_message


class _JsonLines(logging.Handler):
    """Formats each record when it is emitted (the per-invocation context is live only then)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def printed() -> Iterator[_JsonLines]:
    handler = _JsonLines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_every_metric_sees_its_lines_with_the_labels_and_values_alerts_use(
        healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str, printed: _JsonLines) -> None:
    d = Deployment.create(healthcare_emulator, max_concurrent_operations=1)
    # 1. An import with a non-DICOM object: a FAILED or SUCCEEDED_WITH_ERRORS import event.
    failing = [d.upload(f"signals/a/ok{i}.dcm", dicom_factory.instance()) for i in range(2)]
    failing.append(d.upload("signals/a/broken.dcm", b"not DICOM at all"))
    deliver_all(d.handler(), failing)
    events = distinct(d.completions_until_quiet())
    assert any(e["state"] in ("FAILED", "SUCCEEDED_WITH_ERRORS") for e in events)
    # 2. An operation held running (the emulator's start delay) and a second batch queued behind
    #    it (one slot): the poller's line then carries the oldest running age and the queue.
    d.emulator("config", {"operationDelaySeconds": 3600})
    try:
        running = [d.upload(f"signals/b/ok{i}.dcm", dicom_factory.instance()) for i in range(2)]
        deliver_all(d.handler(), running)
        queued = [d.upload(f"signals/c/ok{i}.dcm", dicom_factory.instance()) for i in range(2)]
        deliver_all(d.handler(), queued)
        summary = d.poller().run()
        assert summary.running >= 1 and summary.jobs_queued >= 1, summary
    finally:
        d.emulator("config", {"operationDelaySeconds": 0})
    for operation in d.deps.queue.tracked():
        requests.post(f"{d.healthcare_url}/v1/{operation.name}:cancel", timeout=10).raise_for_status()
    d.completions_until_quiet()
    # 3. A rejected export request.
    export_handler(d).handle(pubsub_message(json.dumps({"destination": "gs://not-allowed/x"}).encode()))

    service = mc.function_names()[0]
    entries = [mc.log_entry(line, service) for line in printed.lines]
    metrics = mc.log_metrics()
    for metric in metrics.values():
        seen = [e for e in entries if mc.matches(metric.filter, e)]
        assert seen, f"metric {metric.key}: no printed line matches {metric.filter}"
        for entry in seen:
            for label, expression in metric.extractors.items():
                value = mc.extract(expression, entry)
                if label == "__value__":
                    if metric.key == "oldest_running_operation_seconds" and value is None:
                        continue  # nothing was running in that poll run: no sample, as intended
                    assert isinstance(value, (int, float)), f"{metric.key}: {expression} gave {value!r}"
                else:
                    assert isinstance(value, str) and value, f"{metric.key}: {expression} gave {value!r}"

    finished = [e for e in entries if mc.matches(metrics["operations_finished"].filter, e)]
    states = {(mc.extract("EXTRACT(jsonPayload.kind)", e), mc.extract("EXTRACT(jsonPayload.state)", e))
              for e in finished}
    # What the import_failures alert fires on (kind=import, state FAILED or SUCCEEDED_WITH_ERRORS).
    assert states & {("import", "FAILED"), ("import", "SUCCEEDED_WITH_ERRORS")}, states
    polls = [e for e in entries if mc.matches(metrics["poll_runs"].filter, e)]
    assert any(e["jsonPayload"]["jobs_queued"] > 0 for e in polls), "the queued job never showed in a poll line"
    assert any(isinstance(e["jsonPayload"].get("oldest_running_seconds"), float) for e in polls)
    started = [e for e in entries if mc.matches(metrics["operations_started"].filter, e)]
    assert {mc.extract("EXTRACT(jsonPayload.kind)", e) for e in started} == {"import"}
