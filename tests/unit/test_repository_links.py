"""No committed file points outside the repository: users get the repository, nothing beside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Names of the developers' material beside the repository. Spelled in pieces so that this file
# does not match itself.
_OUTSIDE = re.compile(
    "|".join([
        r"\.\./" + "shared",
        r"\b" + "reference" + r"/[\w.-]+\.md",
        r"\b" + "DESIGN" + r"\.md",
        r"\b" + "seed" + r"/BRIEF",
        r"\bfacts" + r" sheet",
        r"healthcare-api-" + "facts",
        r"local-stack-" + "facts",
    ])
)
_MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _committed_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = []
    for name in filter(None, listed):
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        files.append(path)
    assert len(files) > 50, "git ls-files found too little; is this a checkout?"
    return files


def test_no_file_names_material_outside_the_repository() -> None:
    hits = []
    for path in _committed_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)


def test_relative_markdown_links_resolve_inside_the_repository() -> None:
    broken = []
    for path in _committed_text_files():
        if path.suffix != ".md":
            continue
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
        text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
        for target in _MARKDOWN_LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if ROOT not in resolved.parents and resolved != ROOT or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken
