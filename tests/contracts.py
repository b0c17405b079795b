"""The public contracts (contracts/*.schema.json) for tests: every event a test sees is validated.

Integration tests call `validate_completion_message` on each completion message they pull, so
whatever the pipeline publishes is held to the schema a consumer would use.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
EXPORT_REQUEST = "export-request.v1"
COMPLETION_EVENT = "completion-event.v1"
COMPLETION_ATTRIBUTES = "completion-attributes.v1"
REDRIVE_REQUEST = "redrive-request.v1"
SCHEMA_NAMES = (EXPORT_REQUEST, COMPLETION_EVENT, COMPLETION_ATTRIBUTES, REDRIVE_REQUEST)


def schema(name: str) -> dict[str, Any]:
    return dict(json.loads((CONTRACTS / f"{name}.schema.json").read_text(encoding="utf-8")))


@functools.cache
def validator(name: str) -> Draft202012Validator:
    loaded = schema(name)
    Draft202012Validator.check_schema(loaded)
    return Draft202012Validator(loaded)


def errors(name: str, instance: Any) -> list[str]:
    """Every violation of schema `name`, as `path: message` lines (empty when valid)."""
    if validator(name).is_valid(instance):
        return []
    found = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in found]


def validate_completion_message(data: bytes, attributes: Mapping[str, str]) -> dict[str, Any]:
    """Checks one completion message against both schemas; returns the data as a dict."""
    event = json.loads(data.decode("utf-8"))
    problems = errors(COMPLETION_EVENT, event)
    problems += [f"attributes {p}" for p in errors(COMPLETION_ATTRIBUTES, dict(attributes))]
    mismatched = [key for key in ("kind", "state", "dicomStore", "eventId") if attributes.get(key) != event.get(key)]
    if mismatched:
        problems.append(f"attributes differ from the data in {mismatched}")
    assert not problems, f"completion event breaks the contract: {problems}\n{event}"
    return dict(event)


def validate_completion_event(event: Mapping[str, Any]) -> None:
    """Checks an event as the integration harness returns it (the data plus `_attributes`)."""
    data = {key: value for key, value in event.items() if key != "_attributes"}
    keys = ("kind", "state", "dicomStore", "eventId")
    attributes = event.get("_attributes") or {key: str(data.get(key)) for key in keys}
    validate_completion_message(json.dumps(data).encode(), attributes)
