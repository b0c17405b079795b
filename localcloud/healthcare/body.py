"""Request bodies as Google's JSON front end reads them.

- Lenient syntax: the API's own curl samples send `{ 'gcsDestination': { 'uriPrefix': ... } }`
  (single quotes), which Google accepts. Strict JSON is tried first (fast); JSON5 otherwise.
- Both proto3 JSON spellings of every field: `mimeType` and `mime_type`.
- Every field checked against the request message of the discovery document: an unknown name,
  a wrong JSON type or an unknown enum value is a 400 INVALID_ARGUMENT naming the field, in
  Google's words ("Invalid JSON payload received. Unknown name ... Cannot find field.").
- The result uses the camelCase names only, `null` fields dropped (proto3: null = unset), int64
  values as strings, enums by name: handlers read one spelling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import json5

from .discovery import Discovery, snake_case
from .errors import ApiError

_INT_FORMATS = ("int32", "uint32", "int64", "uint64")
_MAX_ERRORS = 10


@dataclass
class _Violations:
    items: list[tuple[str, str]] = field(default_factory=list)  # (field path, description)

    def add(self, path: str, description: str) -> None:
        self.items.append((path, description))


def parse_json(raw: bytes) -> Any:
    """The body as Google's front end would read it; 400 with its wording when it cannot."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _invalid("Invalid JSON payload received. The body is not UTF-8.") from None
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json5.loads(text)
    except ValueError as exc:
        raise _invalid(f"Invalid JSON payload received. {exc}") from None


def parse_request(raw: bytes, api: Discovery, schema_name: str) -> dict[str, Any]:
    """Parse and check a request body against `schema_name`; returns it in camelCase."""
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise _invalid('Invalid JSON payload received. Unknown name "": Root element must be a message.')
    violations = _Violations()
    result = _message(value, api, schema_name, "", violations)
    if violations.items:
        raise bad_request(violations.items)
    return result


def bad_request(items: list[tuple[str, str]]) -> ApiError:
    """400 INVALID_ARGUMENT with google.rpc.BadRequest field violations, as Google answers."""
    items = items[:_MAX_ERRORS]
    violations = [{"field": path, "description": text} if path else {"description": text} for path, text in items]
    details = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}]
    return ApiError(400, "\n".join(text for _, text in items), details=details)


def _invalid(message: str) -> ApiError:
    return bad_request([("", message)])


def _at(path: str) -> str:
    return f" at '{path}'" if path else ""


def _message(
    value: dict[str, Any], api: Discovery, schema_name: str, path: str, violations: _Violations
) -> dict[str, Any]:
    schema = api.schemas[schema_name]
    properties: dict[str, Any] = schema.get("properties", {})
    by_name = {name: name for name in properties}
    by_name.update({snake_case(name): name for name in properties})
    result: dict[str, Any] = {}
    for key, item in value.items():
        name = by_name.get(key)
        if name is None:
            violations.add(path, f'Invalid JSON payload received. Unknown name "{key}"{_at(path)}: Cannot find field.')
            continue
        child_path = f"{path}.{snake_case(name)}" if path else snake_case(name)
        if name in result:
            violations.add(
                child_path,
                f'Invalid JSON payload received. Field "{snake_case(name)}"{_at(path)} is set twice '
                f'("{name}" and "{snake_case(name)}").',
            )
            continue
        if item is None:
            continue
        checked = _value(item, api, properties[name], child_path, violations, schema_name, name)
        if checked is not None:
            result[name] = checked
    return result


def _value(
    item: Any,
    api: Discovery,
    prop: dict[str, Any],
    path: str,
    violations: _Violations,
    owner: str,
    name: str,
) -> Any:
    if "$ref" in prop:
        if not isinstance(item, dict):
            violations.add(path, f"Invalid value{_at(path)} ({prop['$ref']}), {json.dumps(item)}: expected an object.")
            return None
        return _message(item, api, prop["$ref"], path, violations)
    kind = prop.get("type")
    if kind == "array":
        if not isinstance(item, list):
            violations.add(path, f"Invalid value{_at(path)} (repeated), {json.dumps(item)}: expected a list.")
            return None
        return [
            v
            for i, element in enumerate(item)
            if (v := _value(element, api, prop["items"], f"{path}[{i}]", violations, owner, name)) is not None
        ]
    if kind == "object" and "additionalProperties" in prop:
        if not isinstance(item, dict):
            violations.add(path, f"Invalid value{_at(path)} (map), {json.dumps(item)}: expected an object.")
            return None
        inner = prop["additionalProperties"]
        return {
            str(k): v
            for k, element in item.items()
            if (v := _value(element, api, inner, f"{path}[{k!r}]", violations, owner, name)) is not None
        }
    if kind == "any" or kind == "object":
        return item
    return _scalar(item, prop, path, violations, owner, name)


def _scalar(item: Any, prop: dict[str, Any], path: str, violations: _Violations, owner: str, name: str) -> Any:
    kind, fmt = prop.get("type"), prop.get("format")
    if kind == "boolean":
        if isinstance(item, bool):
            return item
        violations.add(path, f"Invalid value{_at(path)} (TYPE_BOOL), {json.dumps(item)}")
        return None
    if kind == "integer" or (kind == "string" and fmt in _INT_FORMATS):
        number = _integer(item)
        if number is None:
            violations.add(path, f"Invalid value{_at(path)} (TYPE_{(fmt or 'int32').upper()}), {json.dumps(item)}")
            return None
        return str(number) if kind == "string" else number
    if kind == "number":
        if isinstance(item, int | float) and not isinstance(item, bool):
            return item
        violations.add(path, f"Invalid value{_at(path)} (TYPE_DOUBLE), {json.dumps(item)}")
        return None
    if "enum" in prop:
        values: list[str] = prop["enum"]
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(values):
            return values[item]
        if isinstance(item, str) and item in values:
            return item
        violations.add(path, f"Invalid value{_at(path)} ({owner}.{name}), {json.dumps(item)}")
        return None
    if isinstance(item, str):
        return item
    violations.add(path, f"Invalid value{_at(path)} (TYPE_STRING), {json.dumps(item)}")
    return None


def _integer(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str):
        try:
            return int(item.strip())
        except ValueError:
            return None
    return None
