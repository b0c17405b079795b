"""Google's system parameters (`alt`, `prettyPrint`, `fields`, `$.xgafv`, `key`, ...).

Google's front end takes them off every request before the method sees the query string, so a
DICOMweb search with `alt=json` (google-api-python-client adds it to every call) is a plain
search. The set comes from the discovery document's top-level `parameters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import ImmutableMultiDict, MultiDict

from .errors import invalid_argument, unimplemented


@dataclass(frozen=True)
class SystemParameters:
    pretty_print: bool = True
    fields: dict[str, Any] | None = None  # parsed `fields` selector; None = everything
    access_token: str | None = None  # `access_token` / `oauth_token` query parameters


def split(args: MultiDict[str, str], names: frozenset[str]) -> tuple[SystemParameters, ImmutableMultiDict[str, str]]:
    """(the system parameters, the method's own query parameters)."""
    own: MultiDict[str, str] = MultiDict()
    system: dict[str, str] = {}
    for key, value in args.items(multi=True):
        if key in names:
            system[key] = value
        else:
            own.add(key, value)
    alt = system.get("alt", "json")
    if alt not in ("json", "media", "proto"):
        raise invalid_argument(f"Invalid value at 'alt' ({alt!r}): one of json, media, proto")
    if alt != "json":
        raise unimplemented(f"alt={alt} is not emulated: the emulator answers JSON (alt=json) only")
    if system.get("$.xgafv", "1") not in ("1", "2"):
        raise invalid_argument(f"Invalid value at '$.xgafv' ({system['$.xgafv']!r}): one of 1, 2")
    if "callback" in system:
        raise unimplemented("JSONP (callback=) is not emulated")
    pretty = system.get("prettyPrint", "true").lower()
    if pretty not in ("true", "false", "1", "0"):
        raise invalid_argument(f"Invalid value at 'prettyPrint' ({system['prettyPrint']!r}): a boolean")
    fields = parse_fields(system["fields"]) if system.get("fields") else None
    token = system.get("access_token") or system.get("oauth_token")
    return SystemParameters(pretty in ("true", "1"), fields, token), ImmutableMultiDict(own)


def parse_fields(expression: str) -> dict[str, Any]:
    """`a,b/c,d(e,f)` -> {"a": {}, "b": {"c": {}}, "d": {"e": {}, "f": {}}} ({} = whole value)."""
    tree: dict[str, Any] = {}
    position = _parse_list(expression.replace(" ", ""), 0, tree)
    if position != len(expression.replace(" ", "")):
        raise invalid_argument(f"Invalid field selection {expression!r}")
    return tree


def _parse_list(text: str, position: int, tree: dict[str, Any]) -> int:
    while position < len(text):
        position = _parse_path(text, position, tree)
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        break
    return position


def _parse_path(text: str, position: int, tree: dict[str, Any]) -> int:
    start = position
    while position < len(text) and text[position] not in ",/()":
        position += 1
    name = text[start:position]
    if not name:
        raise invalid_argument(f"Invalid field selection {text!r}")
    node = tree.setdefault(name, {})
    if position < len(text) and text[position] == "/":
        return _parse_path(text, position + 1, node)
    if position < len(text) and text[position] == "(":
        position = _parse_list(text, position + 1, node)
        if position >= len(text) or text[position] != ")":
            raise invalid_argument(f"Invalid field selection {text!r}")
        return position + 1
    return position


def select(value: Any, tree: dict[str, Any]) -> Any:
    """A partial response: only the selected fields (lists are selected element by element)."""
    if not tree:
        return value
    if isinstance(value, list):
        return [select(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    if "*" in tree:
        return {key: select(item, tree["*"]) for key, item in value.items()}
    return {key: select(value[key], sub) for key, sub in tree.items() if key in value}
