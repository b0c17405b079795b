"""infra/monitoring.tf as data, and a small evaluator of the Cloud Logging filters it builds.

The metrics' filters are built in Terraform from `local.log_metrics` (message, labels, value
field) and `local.function_log_filter`. Providers cannot be downloaded here, so these helpers
resolve the few expressions involved by hand (with the variables' defaults) and evaluate the
subset of the Logging query language the filters use: clauses joined by AND, each
`path="value"` or `path=("a" OR "b")`. Anything else in a filter fails loudly, so the evaluator
cannot silently accept a filter it does not understand.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
_CLAUSE = re.compile(r'^(?P<path>[A-Za-z_.]+)=(?:"(?P<value>[^"]*)"|\((?P<values>"[^"]*"(?: OR "[^"]*")*)\))$')
_EXTRACT = re.compile(r"^EXTRACT\(jsonPayload\.(?P<field>[A-Za-z_]+)\)$")


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The parsed file (cached: callers must not change it)."""
    with (INFRA / name).open(encoding="utf-8") as handle:
        parsed: dict[str, Any] = hcl2.load(handle, serialization_options=_OPTIONS)
    return parsed


def _merged(parsed: dict[str, Any], block: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for entry in parsed.get(block, []):
        merged.update({k: v for k, v in entry.items() if not k.startswith("__")})
    return merged


def variable_default(name: str) -> Any:
    return _merged(load("variables.tf"), "variable")[name]["default"]


def monitoring_locals() -> dict[str, Any]:
    return _merged(load("monitoring.tf"), "locals")


def monitoring_resources() -> dict[str, dict[str, Any]]:
    """{resource type: {name: body}} of monitoring.tf."""
    merged: dict[str, dict[str, Any]] = defaultdict(dict)
    for entry in load("monitoring.tf").get("resource", []):
        for rtype, named in entry.items():
            if not rtype.startswith("__"):
                merged[rtype].update({k: v for k, v in named.items() if not k.startswith("__")})
    return dict(merged)


@functools.cache
def function_names() -> tuple[str, ...]:
    """The deployed function names with the default name_prefix (functions.tf `local.functions`)."""
    prefix = variable_default("name_prefix")
    functions = _merged(load("functions.tf"), "locals")["functions"]
    return tuple(sorted(str(f["name"]).replace("${var.name_prefix}", prefix) for f in functions.values()))


@dataclass(frozen=True)
class LogMetric:
    key: str
    message: str
    labels: tuple[str, ...]
    value_field: str  # "" for a counter

    @property
    def filter(self) -> str:
        """The metric's filter as Terraform renders it (`google_logging_metric.pipeline`)."""
        services = " OR ".join(f'"{name}"' for name in function_names())
        return (f'resource.type="cloud_run_revision" AND resource.labels.service_name=({services})'
                f' AND jsonPayload.message="{self.message}"')

    @property
    def extractors(self) -> dict[str, str]:
        out = {label: f"EXTRACT(jsonPayload.{label})" for label in self.labels}
        if self.value_field:
            out["__value__"] = f"EXTRACT(jsonPayload.{self.value_field})"
        return out


def log_metrics() -> dict[str, LogMetric]:
    return {key: LogMetric(key, str(m["message"]), tuple(m["labels"]), str(m["value_field"]))
            for key, m in monitoring_locals()["log_metrics"].items()}


def matches(log_filter: str, entry: dict[str, Any]) -> bool:
    """Evaluates `log_filter` (the subset described above) against a LogEntry dict."""
    for clause in log_filter.split(" AND "):
        found = _CLAUSE.match(clause.strip())
        if not found:
            raise ValueError(f"filter clause outside the supported subset: {clause!r}")
        wanted = ({found["value"]} if found["value"] is not None
                  else set(re.findall(r'"([^"]*)"', found["values"])))
        actual = _lookup(entry, found["path"])
        if actual is None or str(actual) not in wanted:
            return False
    return True


def extract(expression: str, entry: dict[str, Any]) -> Any:
    found = _EXTRACT.match(expression)
    if not found:
        raise ValueError(f"extractor outside the supported subset: {expression!r}")
    return _lookup(entry, f"jsonPayload.{found['field']}")


def _lookup(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def log_entry(json_line: dict[str, Any], service_name: str) -> dict[str, Any]:
    """A stdout JSON line as Cloud Run ingests it: `severity` lifted out, the rest in jsonPayload."""
    payload = {k: v for k, v in json_line.items() if k != "severity"}
    return {"resource": {"type": "cloud_run_revision", "labels": {"service_name": service_name}},
            "severity": json_line.get("severity", "DEFAULT"), "jsonPayload": payload}
