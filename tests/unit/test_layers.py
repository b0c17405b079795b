"""The folders of functions/ are its layers, and every import points down them.

    exports  ->  wiring  ->  imports  ->  gcp  ->  settings  ->  core, log

`core` holds pure rules on plain values: it imports nothing above it and no library but Python's
own. `gcp` (the Google clients) knows nothing of the import protocol or the export side. Imports
made only for type checking count too: a core module that names `Settings` in a signature depends
on it all the same.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"

# What each layer may import of functions/.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "log": set(),
    "settings": {"core", "log"},
    "gcp": {"core", "settings", "log"},
    "imports": {"core", "gcp", "settings", "log"},
    "boundary": {"core", "gcp", "settings", "log"},
    "wiring": {"core", "gcp", "imports", "settings", "log"},
    "exports": {"core", "gcp", "imports", "wiring", "settings", "log"},
}


def layer_of(module: str) -> str:
    """`functions.core.lease` -> core, `functions.settings` -> settings."""
    parts = module.split(".")
    assert parts[0] == "functions" and len(parts) > 1, module
    return parts[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth (functions, TYPE_CHECKING blocks)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "functions":
                found.extend((node.lineno, f"functions.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, node.module))
    return found


def modules() -> list[tuple[str, Path]]:
    return [(layer_of(".".join(p.relative_to(FUNCTIONS.parent).with_suffix("").parts)), p)
            for p in sorted(FUNCTIONS.rglob("*.py")) if p.name != "__init__.py" or p.parent != FUNCTIONS]


def upward_imports(layer: str, path: Path) -> list[str]:
    return [f"{path.relative_to(FUNCTIONS.parent)}:{line} imports {module}"
            for line, module in imported_modules(path)
            if module.startswith("functions.") and layer_of(module) not in ALLOWED[layer] | {layer}]


def test_every_module_lies_in_a_known_layer() -> None:
    assert {layer for layer, _ in modules()} == set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = [w for module_layer, path in modules() if module_layer == layer for w in upward_imports(layer, path)]
    assert wrong == []


def test_the_core_needs_no_library_but_pythons_own() -> None:
    outside = [f"{path.relative_to(FUNCTIONS.parent)}:{line} imports {module}"
               for layer, path in modules() if layer == "core"
               for line, module in imported_modules(path)
               if not module.startswith("functions.") and module.split(".")[0] not in sys.stdlib_module_names
               and module != "__future__"]
    assert outside == []


def test_the_check_sees_an_import_made_only_for_type_checking_or_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "rule.py"
    module.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from functions.settings import Settings\n"
                      "def f():\n    from functions import wiring\n")
    assert sorted(m for _, m in imported_modules(module)) == ["functions.settings", "functions.wiring", "typing"]


CONCRETE_CLIENTS = {"functions.gcp.gcs", "functions.gcp.healthcare", "functions.gcp.publish", "functions.gcp.bigquery"}


def module_level_imports(path: Path) -> list[str]:
    """Modules imported at the top of the file or in its TYPE_CHECKING block (not inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    statements = [*tree.body, *(s for node in tree.body if isinstance(node, ast.If) for s in node.body)]
    found: list[str] = []
    for node in statements:
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "functions":
            found.extend(f"functions.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize("layer", ["imports", "exports"])
def test_handlers_are_typed_against_the_client_protocols(layer: str) -> None:
    """docs/decisions/0001: handlers take `functions.gcp.clients`' Protocols; wiring builds the clients."""
    concrete = [f"{path.relative_to(FUNCTIONS.parent)} imports {module}"
                for module_layer, path in modules() if module_layer == layer
                for module in module_level_imports(path) if module in CONCRETE_CLIENTS]
    assert concrete == []


HANDLERS = ("import_on_upload.py", "poll_operations.py")


@pytest.mark.parametrize("handler", HANDLERS)
def test_the_import_handlers_leave_every_conditional_write_to_the_protocol(handler: str) -> None:
    """Window records, seen files, claims, slots and job records are created and swapped by the
    protocol modules (job_record, window_batcher, job_queue); a handler only calls them."""
    tree = ast.parse((FUNCTIONS / "imports" / handler).read_text(encoding="utf-8"))
    writes = [f"{handler}:{node.lineno} {node.func.attr}" for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in {"create", "replace", "apply"}]
    assert writes == []
