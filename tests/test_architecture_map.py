"""docs/architecture.md's map names every module: a module added without a line there fails."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mapped_modules() -> set[str]:
    """The paths the map's tree names, its folders opened by indentation."""
    block = (ROOT / "docs" / "architecture.md").read_text().split("```\n", 2)[1]
    folders: list[tuple[int, str]] = []  # the open folders, by indentation
    found = set()
    for line in block.splitlines():
        head = line.strip().split("  ")[0]  # the names, before the description
        if not re.match(r"^[\w.]+(/|\.py)", head):
            continue  # a description's second line
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        base = "".join(folder for _, folder in folders)
        for name in re.findall(r"[\w.]+/|\w+\.py", head):
            if name.endswith("/"):
                folders.append((indent, name))
            else:
                found.add(base + name)
    return found


def test_every_module_is_on_the_map_and_the_map_names_only_modules() -> None:
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "localrun").rglob("*.py")}
    mapped = mapped_modules()
    # A package's __init__.py need not be named unless it holds more than its exports.
    missing = {m for m in modules - mapped if not m.endswith("/__init__.py")}
    assert not missing, f"add these to docs/architecture.md's map: {sorted(missing)}"
    assert mapped <= modules, f"the map names modules that are gone: {sorted(mapped - modules)}"
    assert "localrun/engine/batch.py" in mapped  # the parser reads nested folders
