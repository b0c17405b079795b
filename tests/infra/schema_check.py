"""infra/ held against the providers' published schemas (tests/infra/provider_schema/*.json).

What `terraform validate` would say about resource types, arguments and nested blocks, without the
providers: each resource and data source is checked against the schema of the provider it is
configured with (its `provider` meta-argument, else the provider its type name implies), so a
block that only google-beta has is an error on a resource that uses google.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tests.infra.hcl import load_dir
from tests.infra.provider_schema.refresh import schema_file

# Meta-arguments Terraform itself handles, on resources and data sources (not inside nested blocks).
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle", "connection", "provisioner"}
_PROVIDER_REF = re.compile(r"^(?:\$\{)?(?P<name>[a-z][a-z0-9-]*)(?:\.\w+)?\}?$")


@dataclass(frozen=True)
class ProviderSchema:
    source: str
    provider_version: str
    package: str
    resource: dict[str, Any]
    data: dict[str, Any]


@cache
def provider_schema(source: str) -> ProviderSchema:
    """The committed schema of a provider source such as "hashicorp/google"."""
    path = schema_file(source)
    if not path.exists():
        raise AssertionError(f"no committed schema for provider {source}: add it to refresh.py's PACKAGES")
    raw = json.loads(path.read_text(encoding="utf-8"))
    return ProviderSchema(raw["source"].removeprefix("registry.terraform.io/"), raw["provider_version"],
                          raw["package"], raw["resource"], raw["data"])


def required_providers(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Local provider name -> {"source": ..., "version": ...} from a module's terraform blocks."""
    found: dict[str, dict[str, str]] = {}
    for block in config.get("terraform", []):
        for entry in block.get("required_providers", []):
            for name, spec in entry.items():
                if not name.startswith("__"):
                    found[name] = {k: v for k, v in spec.items() if not k.startswith("__")}
    return found


def provider_source(config: dict[str, Any], rtype: str, body: dict[str, Any]) -> tuple[str, str]:
    """(local name, source) of the provider a resource or data source is configured with."""
    local = rtype.split("_", 1)[0]
    if "provider" in body:
        match = _PROVIDER_REF.match(str(body["provider"]))
        assert match, f"{rtype}: provider = {body['provider']!r} is not a provider reference"
        local = match.group("name")
    spec = required_providers(config).get(local)
    source = spec["source"] if spec else f"hashicorp/{local}"
    return local, source.removeprefix("registry.terraform.io/")


def _is_block(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, dict) and item.get("__is_block__") for item in value)


def _usages(body: dict[str, Any], top_level: bool) -> dict[str, tuple[str, list[dict[str, Any]] | None]]:
    """Name -> ("argument", None) | ("block", bodies) | ("dynamic", content bodies)."""
    used: dict[str, tuple[str, list[dict[str, Any]] | None]] = {}
    for key, value in body.items():
        if key.startswith("__") or (top_level and key in META_ARGUMENTS):
            continue
        if key == "dynamic" and isinstance(value, list) and all(isinstance(item, dict) for item in value):
            for entry in value:
                for name, dynamic in entry.items():
                    if not name.startswith("__"):
                        used[name] = ("dynamic", [c for c in dynamic.get("content", [])])
            continue
        used[key] = ("block", value) if _is_block(value) else ("argument", None)
    return used


def check_body(body: dict[str, Any], schema: dict[str, Any], where: str, top_level: bool = False) -> list[str]:
    """Terraform's errors for one body against one block schema (recursively)."""
    errors: list[str] = []
    arguments = set(schema["required"]) | set(schema["optional"])
    blocks: dict[str, Any] = schema.get("blocks", {})
    used = _usages(body, top_level)
    for name, (how, bodies) in used.items():
        if name in blocks:
            if how == "argument":
                errors.append(f"{where}: an argument named {name!r} is not expected here; {name} is a block")
                continue
            nested = blocks[name]
            if how == "block" and not nested["repeated"] and bodies is not None and len(bodies) > 1:
                errors.append(f"{where}: no more than 1 {name!r} block is allowed")
            for index, nested_body in enumerate(bodies or []):
                errors += check_body(nested_body, nested, f"{where}.{name}[{index}]")
        elif name in arguments:
            if how != "argument":
                errors.append(f"{where}: unsupported block type {name!r}; {name} is an argument")
        else:
            kind = "argument" if how == "argument" else "block type"
            errors.append(f"{where}: unsupported {kind} {name!r}")
    for name in schema["required"]:
        if name not in used:
            errors.append(f"{where}: the argument {name!r} is required")
    for name, nested in blocks.items():
        if nested["min_items"] and name not in used:
            errors.append(f"{where}: at least 1 {name!r} block is required")
    return errors


def check_dir(directory: Path) -> tuple[list[str], list[str]]:
    """(errors, what was checked) for every resource and data source of one module directory."""
    config = load_dir(directory, explicit_blocks=True)
    errors: list[str] = []
    checked: list[str] = []
    for mode in ("resource", "data"):
        for rtype, entries in config.get(mode, {}).items():
            for name, body in entries.items():
                address = f"{'data.' if mode == 'data' else ''}{rtype}.{name}"
                local, source = provider_source(config, rtype, body)
                schema = provider_schema(source)
                types = schema.resource if mode == "resource" else schema.data
                where = f"{directory.name}/{address} ({local} {schema.provider_version})"
                if rtype not in types:
                    also = [s for s in ("hashicorp/google", "hashicorp/google-beta") if s != source
                            and rtype in getattr(provider_schema(s), mode)]
                    hint = f"; {also[0]} has it" if also else ""
                    errors.append(f"{where}: the provider has no {mode} type {rtype!r}{hint}")
                    continue
                errors += check_body(body, types[rtype], where, top_level=True)
                checked.append(f"{address} ({local})")
    return errors, checked
