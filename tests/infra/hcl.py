"""Reading infra/ offline: python-hcl2 parsing, and the regular expressions of variable validations.

Terraform cannot run here (no providers), so the tests evaluate what can be evaluated without it:
validation conditions written as `can(regex(...))` over a value or over each item of a list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULE = INFRA / "modules" / "function"

_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
# Nested blocks marked (`"__is_block__": True`), to tell `name { ... }` from `name = {...}`.
_OPTIONS_BLOCKS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=True)


def strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed value, comments (python-hcl2's "__" keys) left out."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not key.startswith("__"):
                yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)

def load_dir(directory: Path, explicit_blocks: bool = False) -> dict[str, Any]:
    """Merges every .tf file of one directory: {"resource": {type: {name: body}}, "locals": {...}, ...}.

    With explicit_blocks, every block body carries `"__is_block__": True` (python-hcl2's marker).
    """
    merged: dict[str, Any] = {}
    files = sorted(directory.glob("*.tf"))
    assert files, f"no Terraform files in {directory}"
    for path in files:
        with path.open(encoding="utf-8") as handle:
            parsed = hcl2.load(handle, serialization_options=_OPTIONS_BLOCKS if explicit_blocks else _OPTIONS)
        for block_type, entries in parsed.items():
            if block_type.startswith("__"):
                continue
            if block_type in ("terraform", "check", "moved", "import", "removed"):
                merged.setdefault(block_type, []).extend(entries)
                continue
            target = merged.setdefault(block_type, {})
            for entry in entries:
                for key, value in entry.items():
                    if key.startswith("__"):
                        continue
                    if block_type in ("resource", "data"):
                        for name, body in value.items():
                            if name.startswith("__"):
                                continue
                            assert name not in target.setdefault(key, {}), f"duplicate {block_type} {key}.{name}"
                            target[key][name] = body
                    else:
                        assert key not in target, f"duplicate {block_type} {key} in {path.name}"
                        target[key] = value
    return merged


def hcl_string(literal: str) -> str:
    """The value of an HCL string literal's body (the text between the quotes)."""
    escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}

    def unescape(match: re.Match[str]) -> str:
        char = match.group(1)
        assert char in escapes, f"unsupported HCL escape \\{char} in {literal!r}"
        return escapes[char]

    return re.sub(r"\\(.)", unescape, literal)


def re2(pattern: str) -> re.Pattern[str]:
    """An RE2 pattern (Terraform's `regex`) as a Python pattern with the same meaning for our inputs.

    RE2's `$` (without the m flag) matches only at the very end; Python's also before a final
    newline, so it becomes `\\Z`.
    """
    assert "\\$" not in pattern, "escaped $ is not translated"
    return re.compile(pattern.replace("$", r"\Z"))


_ITEM_CHECK = re.compile(
    r'\$\{var\.(?P<var>\w+) == null \|\| alltrue\(\[for (?P<item>\w+) in coalesce\(var\.(?P=var), \[\]\) : '
    r'(?P<neg>!?)can\(regex\("(?P<re>(?:[^"\\]|\\.)*)", (?P=item)\)\)\]\)\}'
)
_VALUE_CHECK = re.compile(
    r'\$\{(?:var\.(?P<var>\w+) == null \|\| )?(?P<neg>!?)can\(regex\("(?P<re>(?:[^"\\]|\\.)*)", '
    r'var\.(?P<value>\w+)\)\)\}'
)


def validator(variable: dict[str, Any], name: str) -> Callable[[Any], bool]:
    """What the variable's validation blocks accept, for blocks of the two regex shapes above.

    A block of another shape fails the test (rewrite it, or extend this reader), so that no
    validation silently goes unchecked.
    """
    checks: list[Callable[[Any], bool]] = []
    for block in variable.get("validation", []):
        condition = block["condition"]
        item = _ITEM_CHECK.fullmatch(condition)
        value = _VALUE_CHECK.fullmatch(condition)
        if item and item.group("var") == name:
            pattern, negate = re2(hcl_string(item.group("re"))), bool(item.group("neg"))
            checks.append(lambda v, p=pattern, n=negate: v is None or all(
                (p.search(d) is None) if n else (p.search(d) is not None) for d in v))
        elif value and value.group("value") == name and value.group("var") in (None, name):
            pattern, negate = re2(hcl_string(value.group("re"))), bool(value.group("neg"))
            nullable = value.group("var") is not None
            checks.append(lambda v, p=pattern, n=negate, nl=nullable: (nl and v is None) or (
                v is not None and ((p.search(v) is None) if n else (p.search(v) is not None))))
        else:
            raise AssertionError(f"variable {name}: validation not of a shape this test can evaluate: {condition}")
    assert checks, f"variable {name} has no validation"
    return lambda v: all(check(v) for check in checks)
