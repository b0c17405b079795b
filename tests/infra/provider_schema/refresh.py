"""Writes the committed provider schemas (tests/infra/provider_schema/*.json) from the CDK packages.

Terraform cannot download providers here, so `terraform providers schema -json` cannot run. The
prebuilt CDK for Terraform packages are generated from each provider's published schema and
carry it, in a jsii assembly, at one provider version each: every resource and data source, every
argument and nested block, and which of them are required. This script reads that assembly from
the pinned wheels and writes one compact JSON per provider with the package and provider versions
it came from. `tests/infra/test_provider_schema.py` checks infra/ against those files, and that
`versions.tf` pins exactly the provider versions recorded in them.

Refresh (needs PyPI, about 200 MB of downloads; nothing is installed):

    make provider-schemas

after changing PACKAGES below; then set the versions in infra/versions.tf and
infra/modules/*/versions.tf to the provider versions printed.

The CDK packages end at google 6.50.0. For later versions, on a machine that can download the
providers, run in infra/ `terraform init`, `terraform providers schema -json > schema.json` and
`terraform version -json > version.json`, then

    python -m tests.infra.provider_schema.refresh --from-terraform schema.json version.json

which writes the same files from Terraform's own output.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Provider source -> (PyPI package, version). The package's version decides the provider version.
PACKAGES = {
    "hashicorp/google": ("cdktf-cdktf-provider-google", "16.12.1"),
    "hashicorp/google-beta": ("cdktf-cdktf-provider-google-beta", "16.12.1"),
    "hashicorp/time": ("cdktf-cdktf-provider-time", "11.0.1"),
    "hashicorp/archive": ("cdktf-cdktf-provider-archive", "11.0.1"),
}

# "{@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/x#name X#name}"
_LINK = re.compile(
    r"\{@link https://registry\.terraform\.io/providers/(?P<source>[\w-]+/[\w-]+)/(?P<version>[^/]+)/docs/"
    r"(?P<kind>resources|data-sources)/(?P<page>\w+)(?:#(?P<anchor>\w+))? (?P<label>[^}]+)\}"
)

_PROVIDER_PAGE = re.compile(r"\{@link https://registry\.terraform\.io/providers/[\w-]+/[\w-]+/[^/]+/docs [\w-]+\}")


def schema_file(source: str) -> Path:
    return HERE / f"{source.split('/')[1]}.json"


def _links(docs: dict[str, str]) -> Iterator[re.Match[str]]:
    for key in ("summary", "remarks"):
        yield from _LINK.finditer(docs.get(key, ""))


def _struct_of(type_ref: dict[str, Any], types: dict[str, Any]) -> tuple[str, bool] | None:
    """(fqn, repeated) when a property's type is a nested block (a jsii struct), else None."""
    if "union" in type_ref:
        for member in type_ref["union"]["types"]:
            found = _struct_of(member, types)
            if found:
                return found
        return None
    if "collection" in type_ref:
        if type_ref["collection"]["kind"] != "array":
            return None
        found = _struct_of(type_ref["collection"]["elementtype"], types)
        return (found[0], True) if found else None
    fqn = type_ref.get("fqn")
    if fqn and types.get(fqn, {}).get("datatype"):
        return fqn, False
    return None


def _properties(fqn: str, types: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A struct's own properties and those of the structs it extends within the same assembly."""
    struct = types[fqn]
    for parent in struct.get("interfaces", []):
        if parent in types:
            yield from _properties(parent, types)
    yield from struct.get("properties", [])


def _terraform_name(prop: dict[str, Any]) -> str:
    """The argument's name in HCL: the anchor of its registry link (camelCase is not reversible)."""
    for link in _links(prop.get("docs", {})):
        label = link.group("label")
        if "#" in label:
            return label.rsplit("#", 1)[1]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", prop["name"]).lower()


def _block_schema(fqn: str, types: dict[str, Any]) -> dict[str, Any]:
    """{"required": [...], "optional": [...], "blocks": {name: {..., "min_items": 0|1, "repeated": bool}}}."""
    required: list[str] = []
    optional: list[str] = []
    blocks: dict[str, Any] = {}
    for prop in _properties(fqn, types):
        name = _terraform_name(prop)
        nested = _struct_of(prop["type"], types)
        if nested:
            block = _block_schema(nested[0], types)
            block["min_items"] = 0 if prop.get("optional") else 1
            block["repeated"] = nested[1]
            blocks[name] = block
        elif prop.get("optional"):
            optional.append(name)
        else:
            required.append(name)
    schema: dict[str, Any] = {"required": sorted(required), "optional": sorted(optional)}
    if blocks:
        schema["blocks"] = dict(sorted(blocks.items()))
    return schema


def extract(assembly: dict[str, Any]) -> dict[str, Any]:
    """Provider version, resources and data sources of one jsii assembly."""
    types = assembly["types"]
    provider = assembly["cdktf"]["provider"] if "cdktf" in assembly else None
    versions: set[str] = set()
    found: dict[str, dict[str, Any]] = {"resource": {}, "data": {}}
    for cls in types.values():
        if cls["kind"] != "class" or not any(p["name"] == "tfResourceType" for p in cls.get("properties", [])):
            continue
        links = list(_links(cls.get("docs", {})))
        if not links:
            if _PROVIDER_PAGE.search(cls.get("docs", {}).get("summary", "")):
                continue  # the provider block itself
            raise SystemExit(f"{cls['fqn']}: no registry link to take the Terraform type name from")
        link = links[0]
        tf_type = link.group("label").strip()
        versions.add(link.group("version"))
        parameters = cls.get("initializer", {}).get("parameters", [])
        config = [p["type"]["fqn"] for p in parameters if p["name"] == "config"]
        if not config:
            raise SystemExit(f"{cls['fqn']}: no config parameter")
        mode = "data" if link.group("kind") == "data-sources" else "resource"
        found[mode][tf_type] = _block_schema(config[0], types)
    if len(versions) != 1:
        raise SystemExit(f"registry links name several provider versions: {sorted(versions)}")
    return {"provider_version": versions.pop(), "provider": provider, **found}


def _terraform_block(block: dict[str, Any]) -> dict[str, Any]:
    """One block of `terraform providers schema -json` in the format `_block_schema` writes."""
    attributes = block.get("attributes", {})
    required = sorted(n for n, a in attributes.items() if a.get("required"))
    optional = sorted(n for n, a in attributes.items() if a.get("optional") and not a.get("required"))
    blocks: dict[str, Any] = {}
    for name, nested in sorted(block.get("block_types", {}).items()):
        schema = _terraform_block(nested.get("block", {}))
        schema["min_items"] = 1 if nested.get("min_items", 0) >= 1 else 0
        # The CDK writes a block of at most one as a single struct; every other one is repeated.
        schema["repeated"] = nested.get("nesting_mode") != "single" and nested.get("max_items") != 1
        blocks[name] = schema
    found: dict[str, Any] = {"required": required, "optional": optional}
    if blocks:
        found["blocks"] = blocks
    return found


def from_terraform(schemas: dict[str, Any], versions: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Provider source -> extracted schema, from `terraform providers schema -json` and `version -json`."""
    selections = versions.get("provider_selections", {})
    found = {}
    for address, provider in schemas["provider_schemas"].items():
        source = address.removeprefix("registry.terraform.io/")
        found[source] = {
            "provider_version": selections[address],
            "resource": {k: _terraform_block(v["block"]) for k, v in provider.get("resource_schemas", {}).items()},
            "data": {k: _terraform_block(v["block"]) for k, v in provider.get("data_source_schemas", {}).items()},
            "terraform_version": versions.get("terraform_version", "?"),
        }
    return found


def read_assembly(wheel: Path) -> dict[str, Any]:
    """The jsii assembly inside a wheel (a .jsii.tgz holding package/.jsii), plus package.json's cdktf block."""
    with zipfile.ZipFile(wheel) as archive:
        [member] = [n for n in archive.namelist() if n.endswith(".jsii.tgz")]
        data = archive.read(member)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assembly = json.load(tar.extractfile("package/.jsii"))  # type: ignore[arg-type]
        package = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
    assembly["cdktf"] = package.get("cdktf", {})
    return dict(assembly)


def write(source: str, package: str, version: str, schema: dict[str, Any]) -> Path:
    """One resource or data source per line: small, readable diffs when a version changes."""
    path = schema_file(source)
    header = {
        "source": f"registry.terraform.io/{source}",
        "provider_version": schema["provider_version"],
        "package": f"{package}=={version}" if version else package,
        "extracted_by": "tests/infra/provider_schema/refresh.py",
    }
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value)},")
    for mode in ("resource", "data"):
        entries = schema[mode]
        lines.append(f"{json.dumps(mode)}: {{")
        items = sorted(entries.items())
        for index, (name, body) in enumerate(items):
            comma = "," if index < len(items) - 1 else ""
            lines.append(f"{json.dumps(name)}: {json.dumps(body, separators=(',', ':'))}{comma}")
        lines.append("}," if mode == "resource" else "}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    """`refresh.py [WHEEL_DIR]`: downloads the wheels, or reads them from WHEEL_DIR when given.

    `refresh.py --from-terraform SCHEMA_JSON VERSION_JSON`: from Terraform's own output instead.
    """
    if argv[:1] == ["--from-terraform"]:
        schemas = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        versions = json.loads(Path(argv[2]).read_text(encoding="utf-8"))
        for source, schema in from_terraform(schemas, versions).items():
            package = f"terraform providers schema -json (Terraform {schema['terraform_version']})"
            path = write(source, package, "", schema)
            print(f"{source} {schema['provider_version']}: {len(schema['resource'])} resources -> {path.name}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(argv[0]) if argv else Path(tmp)
        for source, (package, version) in PACKAGES.items():
            if not list(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl")):
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                     "--dest", str(wheels), f"{package}=={version}"],
                    check=True,
                )
            [wheel] = wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl")
            schema = extract(read_assembly(wheel))
            path = write(source, package, version, schema)
            print(f"{source} {schema['provider_version']} ({package}=={version}): "
                  f"{len(schema['resource'])} resources, {len(schema['data'])} data sources -> "
                  f"{path.relative_to(HERE.parents[2])} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
