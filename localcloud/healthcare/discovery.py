"""Google's own description of the Healthcare API: the discovery documents bundled with
google-api-python-client (the same files its `build(..., static_discovery=True)` reads).

The emulator derives from them, instead of from hand-written lists: the fields each request
message knows (so an unknown field is a 400 naming it), the enum values, the system parameters,
and the paths of methods it deliberately does not serve (answered 501, not 404).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

VERSIONS = ("v1", "v1beta1")
_PREFIX = "healthcare.projects.locations."


@dataclass(frozen=True)
class Method:
    """One REST method of the discovery document."""

    id: str  # e.g. "datasets.dicomStores.import", "locations.get" (short: no "healthcare.projects.")
    full_id: str  # e.g. "healthcare.projects.locations.datasets.dicomStores.import"
    http_method: str
    path: re.Pattern[str]  # matches the URL path after /{version}/
    request: str | None  # schema name of the body, if any
    parameters: frozenset[str]  # query parameters the method declares


class Discovery:
    def __init__(self, version: str, document: dict[str, Any]) -> None:
        self.version = version
        self.schemas: dict[str, dict[str, Any]] = document["schemas"]
        self.system_parameters = frozenset(document["parameters"])
        self.resources: dict[str, Any] = document["resources"]
        self.methods: list[Method] = []
        self._collect(document["resources"], "")

    def _collect(self, resources_: dict[str, Any], prefix: str) -> None:
        for name, resource in resources_.items():
            for method_name, method in resource.get("methods", {}).items():
                full = f"{prefix}{name}.{method_name}"
                rest = full.removeprefix("projects.locations.")
                self.methods.append(
                    Method(
                        id=rest if "." in rest else full.removeprefix("projects."),
                        full_id=f"healthcare.{full}",
                        http_method=method["httpMethod"],
                        path=_flat_path_regex(method["flatPath"], self.version),
                        request=(method.get("request") or {}).get("$ref"),
                        parameters=frozenset(method.get("parameters", {})),
                    )
                )
            self._collect(resource.get("resources", {}), f"{prefix}{name}.")

    def method(self, method_id: str) -> Method:
        for method in self.methods:
            if method.id == method_id:
                return method
        raise KeyError(f"no method {method_id} in healthcare {self.version}")

    def match(self, http_method: str, path: str) -> Method | None:
        """The discovery method a request would reach on Google, if any: a literal segment beats a
        placeholder (POST fhir/_search is search, not create of a resource type "_search")."""
        found = [m for m in self.methods if m.http_method == http_method and m.path.fullmatch(path)]
        return max(found, key=lambda m: len(m.path.pattern.replace("[^/:]+", "")), default=None)


def _flat_path_regex(flat_path: str, version: str) -> re.Pattern[str]:
    # "v1/projects/{projectsId}/.../dicomStores/{dicomStoresId}:import": each {x} is one segment.
    path = flat_path.removeprefix(f"{version}/")
    parts = re.split(r"\{[^}]+\}", path)
    # Ids never contain ":" (it starts a custom verb: {name}:getIamPolicy is not {name}).
    return re.compile(r"[^/:]+".join(re.escape(part) for part in parts))


@cache
def discovery(version: str) -> Discovery:
    files = resources.files("googleapiclient.discovery_cache") / "documents"
    document = json.loads((files / f"healthcare.{version}.json").read_text(encoding="utf-8"))
    return Discovery(version, document)


def snake_case(json_name: str) -> str:
    """The proto field name of a proto3 JSON name: gcsSource -> gcs_source."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", json_name).lower()
