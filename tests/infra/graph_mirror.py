"""A copy of infra/'s dependency graph in built-in resources, for Terraform itself to check.

`terraform validate` needs the providers, which cannot be downloaded here; but Terraform builds
the same graph from any configuration with the same blocks and references. So every resource and
data source becomes a `terraform_data` resource and every local, variable, output, module call and
check keeps its name, each body reduced to the list of objects it references (with `count` /
`for_each` kept, `depends_on` mapped). Module calls call a mirrored copy of the module. `terraform
validate` on the copy then reports a dependency cycle exactly when the original has one.

What is not mirrored: values and types (only references matter for the graph); provider
configurations in child modules (they inherit the root's); `moved`/`import`/`removed` blocks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.infra.hcl import load_dir, strings

# Meta-arguments of resources and data sources, handled apart from the body's references.
_META = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}
_VAR_OR_LOCAL = re.compile(r"(?<![\w.])(var|local)\.(\w+)")
_MODULE = re.compile(r"(?<![\w.])module\.(\w+)(\[(?:\"[^\"]*\"|[^\]]*)\])?(?:\.(\w+))?")
_DATA = re.compile(r"(?<![\w.])data\.(\w+)\.(\w+)")
_RESOURCE = re.compile(r"(?<![\w.])([a-z][a-z0-9]*_\w+)\.(\w+)")


def interpolations(text: str) -> Iterator[str]:
    """The expression parts of a python-hcl2 string: what is inside each top-level `${...}`.

    `$${` is HCL's escape for a literal `${` and starts no expression.
    """
    start = text.find("${")
    while start != -1:
        if start > 0 and text[start - 1] == "$":
            start = text.find("${", start + 2)
            continue
        depth, index, quoted = 0, start + 1, False
        while index < len(text):
            char = text[index]
            if quoted:
                if char == "\\":
                    index += 1
                elif char == '"':
                    quoted = False
            elif char == '"':
                quoted = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    break
            index += 1
        yield text[start + 2:index]
        start = text.find("${", index)


class Mirror:
    """Mirrors one module directory (and, recursively, the local modules it calls)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config = load_dir(directory)
        self.resource_types = set(self.config.get("resource", {}))
        self.data_types = set(self.config.get("data", {}))
        self.modules: dict[str, Any] = self.config.get("module", {})

    # ------------------------------------------------------------------ references

    def references(self, value: Any) -> list[str]:
        """The objects an expression refers to, as mirror expressions, in order, without repeats."""
        found: list[str] = []
        for text in strings(value):
            for expression in interpolations(text):
                for kind, name in _VAR_OR_LOCAL.findall(expression):
                    found.append(f"{kind}.{name}")
                for name, index, output in _MODULE.findall(expression):
                    found.append(self._module_reference(name, index, output))
                for rtype, name in _DATA.findall(expression):
                    if rtype in self.data_types:
                        found.append(f"terraform_data.{_data_name(rtype, name)}")
                for rtype, name in _RESOURCE.findall(expression):
                    if rtype in self.resource_types and rtype != "terraform_data":
                        found.append(f"terraform_data.{_resource_name(rtype, name)}")
                    elif rtype == "terraform_data":
                        raise AssertionError("terraform_data in the original: rename the mirror's namespace")
        return list(dict.fromkeys(found))

    def _module_reference(self, name: str, index: str, output: str) -> str:
        """module.NAME[KEY].OUTPUT as written, with a key the mirror can evaluate."""
        call = self.modules.get(name)
        assert call is not None, f"reference to an undeclared module {name}"
        if index and not index.startswith('["'):
            # A key computed in a for expression or from each/count: any key of the same kind
            # refers to the same output node.
            index = '["key"]' if "for_each" in call else "[0]"
        if not output:
            return f"module.{name}"
        if not index and ("for_each" in call or "count" in call):
            return f"module.{name}"
        return f"module.{name}{index}.{output}"

    def depends_on(self, body: dict[str, Any]) -> str:
        refs = self.references(body.get("depends_on", []))
        return f"  depends_on = [{', '.join(refs)}]\n" if refs else ""

    # ------------------------------------------------------------------ blocks

    @staticmethod
    def _list(refs: list[str]) -> str:
        return f"[{', '.join(refs)}]"

    def _repetition(self, body: dict[str, Any]) -> str:
        if "for_each" in body:
            refs = self.references(body["for_each"])
            return f"  for_each = length({self._list(refs)}) >= 0 ? {{}} : {{}}\n"
        if "count" in body:
            refs = self.references(body["count"])
            return f"  count = length({self._list(refs)}) >= 0 ? 1 : 0\n"
        return ""

    def _resource(self, address: str, body: dict[str, Any], provider_ref: str | None) -> str:
        inputs = self.references({k: v for k, v in body.items() if k not in _META})
        # Preconditions and replace_triggered_by are edges too.
        inputs += [r for r in self.references(body.get("lifecycle", [])) if r not in inputs]
        if provider_ref:
            inputs.append(provider_ref)
        return (f'resource "terraform_data" "{address}" {{\n{self._repetition(body)}'
                f"  input = {self._list(inputs)}\n{self.depends_on(body)}}}\n\n")

    def _provider_refs(self) -> dict[str, str]:
        """Provider local name -> a mirror resource carrying the provider configuration's references."""
        return {name: f"terraform_data.{_provider_name(name)}" for name in self.config.get("provider", {})}

    def _provider_of(self, rtype: str, body: dict[str, Any]) -> str:
        if "provider" in body:
            return str(body["provider"]).removeprefix("${").removesuffix("}").split(".")[0]
        return rtype.split("_", 1)[0]

    def render(self) -> str:
        out = ["# Generated by tests/infra/graph_mirror.py from the configuration beside the original.\n\n"]
        providers = self._provider_refs()
        for name, body in self.config.get("provider", {}).items():
            out.append(f'resource "terraform_data" "{_provider_name(name)}" {{\n'
                       f"  input = {self._list(self.references(body))}\n}}\n\n")
        for mode, naming in (("resource", _resource_name), ("data", _data_name)):
            for rtype, entries in self.config.get(mode, {}).items():
                for name, body in entries.items():
                    out.append(self._resource(naming(rtype, name), body,
                                              providers.get(self._provider_of(rtype, body))))
        locals_ = self.config.get("locals", {})
        if locals_:
            out.append("locals {\n")
            for name, value in locals_.items():
                out.append(f"  {name} = {self._list(self.references(value))}\n")
            out.append("}\n\n")
        for name, body in self.config.get("variable", {}).items():
            default = "  default = null\n" if "default" in body else ""
            validation = ""
            refs = self.references(body.get("validation", []))
            if refs:
                validation = (f"  validation {{\n    condition     = length({self._list(refs)}) >= 0\n"
                              f'    error_message = "mirror"\n  }}\n')
            out.append(f'variable "{name}" {{\n{default}{validation}}}\n\n')
        for name, body in self.config.get("output", {}).items():
            refs = self.references({k: v for k, v in body.items() if k != "depends_on"})
            out.append(f'output "{name}" {{\n  value = {self._list(refs)}\n{self.depends_on(body)}}}\n\n')
        for block in self.config.get("check", []):
            for name, body in block.items():
                refs = self.references(body)
                out.append(f'check "{name}" {{\n  assert {{\n    condition     = length({self._list(refs)}) >= 0\n'
                           f'    error_message = "mirror"\n  }}\n}}\n\n')
        for name, body in self.modules.items():
            source = body["source"]
            assert source.startswith("./"), f"module {name}: only local modules are mirrored ({source})"
            inputs = "".join(
                f"  {key} = {self._list(self.references(value))}\n" for key, value in body.items()
                if key not in ("source", "version", "for_each", "count", "depends_on", "providers")
                and not key.startswith("__"))
            out.append(f'module "{name}" {{\n  source = "{source}"\n{self._repetition(body)}{inputs}'
                       f"{self.depends_on(body)}}}\n\n")
        return "".join(out)

    def write(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        (target / "main.tf").write_text(self.render(), encoding="utf-8")
        for body in self.modules.values():
            source = body["source"]
            Mirror((self.directory / source).resolve()).write(target / source)


def _resource_name(rtype: str, name: str) -> str:
    return f"{rtype}__{name}"


def _data_name(rtype: str, name: str) -> str:
    return f"data__{rtype}__{name}"


def _provider_name(name: str) -> str:
    return f"provider__{name.replace('-', '_')}"


def validate(directory: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """Writes the mirror of `directory` into `work` and runs `terraform init` + `validate` there.

    Raises when terraform is not on PATH: the check is part of `make test`, not optional.
    """
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH: the dependency-cycle check needs it (CI has it)"
    if work.exists():
        shutil.rmtree(work)
    Mirror(directory).write(work)
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    env.pop("TF_CLI_ARGS", None)
    init = subprocess.run([terraform, "init", "-backend=false", "-no-color"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    if init.returncode != 0:
        return init
    return subprocess.run([terraform, "validate", "-no-color"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)

