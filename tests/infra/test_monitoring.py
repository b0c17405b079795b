"""infra/monitoring.tf held against the code: every metric counts a log line the functions write.

A log-based metric whose filter names a message or field the code no longer writes flat-lines
without an error anywhere; an alert on it never fires. These tests find each metric's message in
the source (the logging call, with its structured fields) and check the alerts and the dashboard
only use metrics, labels and states that exist. tests/integration/test_log_signals.py runs the
pipeline and evaluates the same filters on the JSON lines it really prints.
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from functions.core import completion
from tests.infra import monitoring_config as mc

FUNCTIONS = mc.ROOT / "functions"
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _log_calls() -> dict[str, list[tuple[str, set[str]]]]:
    """message -> [(where, structured field names)] for every `logger.<level>("...", extra=fields(...))`."""
    calls: dict[str, list[tuple[str, set[str]]]] = defaultdict(list)
    for path in sorted(FUNCTIONS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LEVELS and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            names: set[str] = set()
            for keyword in node.keywords:
                if keyword.arg == "extra" and isinstance(keyword.value, ast.Call):
                    names |= {k.arg for k in keyword.value.keywords if k.arg}
                    names |= {"**"} if any(k.arg is None for k in keyword.value.keywords) else set()
            calls[node.args[0].value].append((f"{path.name}:{node.lineno}", names))
    return calls


@pytest.fixture(scope="module")
def metrics() -> dict[str, mc.LogMetric]:
    return mc.log_metrics()


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    return mc.monitoring_resources()


def test_each_metric_counts_a_line_the_code_writes_with_every_field_it_reads(metrics: dict[str, mc.LogMetric]) -> None:
    calls = _log_calls()
    assert metrics, "no log metrics defined"
    for metric in metrics.values():
        sites = calls.get(metric.message)
        assert sites, f"metric {metric.key}: no code writes the log line {metric.message!r}"
        needed = set(metric.labels) | ({metric.value_field} if metric.value_field else set())
        for where, names in sites:
            missing = needed - names
            assert not missing, f"metric {metric.key}: the line {metric.message!r} at {where} lacks {sorted(missing)}"


def test_the_metric_resource_builds_its_filter_and_extractors_from_log_metrics(
        resources: dict[str, dict[str, Any]]) -> None:
    body = resources["google_logging_metric"]["pipeline"]
    assert body["filter"] == '${local.function_log_filter} AND jsonPayload.message="${each.value.message}"'
    assert "EXTRACT(jsonPayload.${label})" in body["label_extractors"]
    assert "EXTRACT(jsonPayload.${each.value.value_field})" in body["value_extractor"]
    service_filter = mc.monitoring_locals()["function_log_filter"]
    assert 'resource.type=\\"cloud_run_revision\\"' in service_filter  # escaped inside ${join(...)}
    assert "resource.labels.service_name=" in service_filter and "local.functions[key].name" in service_filter


def test_the_rendered_filter_matches_the_line_and_only_from_our_functions(metrics: dict[str, mc.LogMetric]) -> None:
    metric = metrics["operations_finished"]
    line = {"severity": "INFO", "message": "operation finished", "kind": "import", "state": "FAILED"}
    for name in mc.function_names():
        assert mc.matches(metric.filter, mc.log_entry(line, name))
    assert not mc.matches(metric.filter, mc.log_entry(line, "some-other-service"))
    assert not mc.matches(metric.filter, mc.log_entry({**line, "message": "operation started"}, mc.function_names()[0]))
    with pytest.raises(ValueError):
        mc.matches('jsonPayload.message:"x"', {})


def _alert_filters(resources: dict[str, dict[str, Any]]) -> dict[str, str]:
    filters = {}
    for name, body in resources["google_monitoring_alert_policy"].items():
        for condition in body["conditions"]:
            for kind in ("condition_threshold", "condition_absent"):
                for block in condition.get(kind, []):
                    filters[name] = block["filter"]
    return filters


def test_alerts_use_defined_metrics_labels_and_completion_states(
        resources: dict[str, dict[str, Any]], metrics: dict[str, mc.LogMetric]) -> None:
    filters = _alert_filters(resources)
    assert set(filters) == {"import_failures", "export_dead_letters", "long_running_operation", "poller_not_running"}
    states = {completion.SUCCEEDED, completion.SUCCEEDED_WITH_ERRORS, completion.FAILED, completion.CANCELLED}
    for name, text in filters.items():
        for key in re.findall(r"local\.metric_types\.(\w+)", text):
            assert key in metrics, f"alert {name} uses undefined metric {key}"
            used_labels = set(re.findall(r"metric\.label\.(\w+)", text))
            assert used_labels <= set(metrics[key].labels), f"alert {name}: labels {used_labels} not on {key}"
        for group in re.findall(r"one_of\(([^)]*)\)", text):
            assert set(re.findall(r'"([^"]+)"', group)) <= states, f"alert {name}: unknown state in {group}"
    assert "FAILED" in filters["import_failures"] and "SUCCEEDED_WITH_ERRORS" in filters["import_failures"]
    assert "google_pubsub_subscription.export_dead_letter.name" in filters["export_dead_letters"]
    absent = resources["google_monitoring_alert_policy"]["poller_not_running"]["conditions"][0]
    assert "condition_absent" in absent, "the poller alert must fire on the absence of runs"


def test_every_alert_notifies_the_configured_channels(resources: dict[str, dict[str, Any]]) -> None:
    for name, body in resources["google_monitoring_alert_policy"].items():
        assert body["notification_channels"] == "${var.alert_notification_channels}", name
        assert body["documentation"], f"alert {name} tells the on-call nothing"


def _dashboard(resources: dict[str, dict[str, Any]]) -> tuple[str, dict[str, str]]:
    expression = resources["google_monitoring_dashboard"]["pipeline"]["dashboard_json"]
    found = re.search(r'templatefile\("\$\{path\.module\}/(?P<path>[^"]+)", \{(?P<args>.*)\}\)', expression, re.S)
    assert found, f"dashboard_json must be templatefile(path, {{...}}): {expression[:120]}"
    args = dict(re.findall(r"(\w+)\s*=\s*([^,}\n]+)", found["args"]))
    return (mc.INFRA / found["path"]).read_text(encoding="utf-8"), {k: v.strip() for k, v in args.items()}


def _rendered(resources: dict[str, dict[str, Any]], metrics: dict[str, mc.LogMetric]
              ) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(the dashboard as templatefile renders it, templatefile's values, arg -> metric key)."""
    template, args = _dashboard(resources)
    placeholders = set(re.findall(r"(?<!\$)\$\{(\w+)\}", template))
    assert placeholders == set(args), f"template and templatefile() disagree: {placeholders ^ set(args)}"
    metric_args = {}
    for arg, expression in args.items():
        ref = re.search(r"local\.metric_types\.(\w+)", expression)
        if ref:
            assert ref.group(1) in metrics, f"dashboard arg {arg} names undefined metric {ref.group(1)}"
            metric_args[arg] = ref.group(1)
    assert set(metric_args.values()) == set(metrics), "every metric should be on the dashboard"
    values = {arg: f"logging.googleapis.com/user/dicom/{metric_args[arg]}" if arg in metric_args else f"<{arg}>"
              for arg in args}
    return json.loads(string.Template(template).substitute(values)), values, metric_args


def test_the_dashboard_renders_to_json_showing_defined_metrics(
        resources: dict[str, dict[str, Any]], metrics: dict[str, mc.LogMetric]) -> None:
    rendered, values, metric_args = _rendered(resources, metrics)
    tiles = rendered["mosaicLayout"]["tiles"]
    assert len(tiles) >= 6
    shown = json.dumps(rendered)
    for arg, key in metric_args.items():
        assert values[arg] in shown, f"metric {key} is passed to the dashboard but no tile shows it"
    for group in re.findall(r'"groupByFields": \[([^\]]*)\]', shown):
        for label in re.findall(r"metric\.label\.(\w+)", group):
            assert any(label in m.labels for m in metrics.values()), f"dashboard groups by unknown label {label}"


# The Monitoring API stores dashboards as protocol buffers (proto3): a field at its default (0, false,
# "", an empty list or map, an enum's zero value) is not stored and not returned, so the provider
# sees it vanish and plans the same change on every run.
_ENUM_ZERO = re.compile(r"^(?:ALIGN_NONE|REDUCE_NONE|[A-Z_]+_UNSPECIFIED)$")


def proto3_defaults(value: Any, path: str = "$") -> list[str]:
    """JSON paths of the values the API drops."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += proto3_defaults(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += proto3_defaults(item, f"{path}[{index}]")
    if value in (0, "", [], {}, None) or value is False or (isinstance(value, str) and _ENUM_ZERO.match(value)):
        found.append(f"{path} = {json.dumps(value)}")
    return found


def test_the_dashboard_holds_no_value_the_api_drops(
        resources: dict[str, dict[str, Any]], metrics: dict[str, mc.LogMetric]) -> None:
    rendered, _, _ = _rendered(resources, metrics)
    dropped = proto3_defaults(rendered)
    assert not dropped, f"the API drops these, so every plan shows a change; leave them out: {dropped}"


@pytest.mark.parametrize("value,paths", [
    ({"tiles": [{"xPos": 0, "yPos": 4, "width": 6}]}, ["$.tiles[0].xPos = 0"]),
    ({"a": {"collapsed": False, "groupByFields": []}}, ["$.a.collapsed = false", "$.a.groupByFields = []"]),
    ({"aggregation": {"perSeriesAligner": "ALIGN_NONE", "crossSeriesReducer": "REDUCE_SUM"}},
     ["$.aggregation.perSeriesAligner = \"ALIGN_NONE\""]),
    ({"mode": "MODE_UNSPECIFIED", "title": "", "x": 1.5, "on": True},
     ["$.mode = \"MODE_UNSPECIFIED\"", "$.title = \"\""]),
])
def test_proto3_defaults_are_found(value: Any, paths: list[str]) -> None:
    assert proto3_defaults(value) == paths


def test_monitoring_apis_are_enabled_and_waited_for(resources: dict[str, dict[str, Any]]) -> None:
    services = mc._merged(mc.load("apis.tf"), "locals")["services"]
    assert "logging.googleapis.com" in services and "monitoring.googleapis.com" in services
    for rtype in ("google_logging_metric", "google_monitoring_alert_policy", "google_monitoring_dashboard"):
        for name, body in resources[rtype].items():
            assert "${google_project_service.enabled}" in body.get("depends_on", []), f"{rtype}.{name}"


@pytest.mark.parametrize("channel,valid", [
    ("projects/p-1/notificationChannels/123", True),
    ("projects/p-1/notificationChannels/abc", False),
    ("123", False),
])
def test_notification_channel_ids_are_validated(channel: str, valid: bool) -> None:
    variable = mc._merged(mc.load("variables.tf"), "variable")["alert_notification_channels"]
    condition = variable["validation"][0]["condition"]
    pattern = re.search(r'regex\("([^"]+)", channel\)', condition)
    assert pattern, condition
    assert bool(re.search(pattern.group(1).replace("\\\\", "\\"), channel)) is valid


def test_a_log_metric_path_is_not_a_file(metrics: dict[str, mc.LogMetric]) -> None:
    # Log metric names may hold "/" but each segment must be non-empty.
    assert all(re.fullmatch(r"[a-z_]+", key) for key in metrics)
    assert Path(mc.INFRA / "dashboards" / "pipeline.json.tftpl").is_file()
