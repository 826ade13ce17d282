"""Which package may import which: the kernel (`campus/`) stands on nothing of ours above it, and the
top floor (`programs/`: the command line, the demo) is imported by nobody. Read from the source, so a
broken rule fails here and not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABOVE_THE_KERNEL = ("edge_agent", "central", "dashboards", "firmware_stubs", "programs")


def imports(package: str) -> list[tuple[str, str]]:
    """(module file, imported module) for every import in the package, top-level or inside a function."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [(path.relative_to(ROOT).as_posix(), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path.relative_to(ROOT).as_posix(), node.module))
    return found


def test_the_kernel_imports_nothing_above_it() -> None:
    bad = [(f, m) for f, m in imports("campus") if m.split(".")[0] in ABOVE_THE_KERNEL]
    assert bad == []


def test_nothing_imports_the_top_floor() -> None:
    bad = [(f, m) for package in ABOVE_THE_KERNEL[:-1] + ("campus", "device_profiles")
           for f, m in imports(package) if m.split(".")[0] == "programs"]
    assert bad == []


def test_the_rules_see_imports_inside_functions() -> None:
    """Most of our cross-package imports are inside functions (start-up cost): the scan must see them."""
    assert ("programs/cli.py", "programs.demo") in imports("programs")


def test_the_programs_import_downward_only() -> None:
    """The command line starts the demo and the services; the demo starts the services; the services
    start nothing of the floor they are on (no cycle: `campus demo` and `campus web` wire one way)."""
    order = ["programs.cli", "programs.demo", "programs.services"]
    bad = [(f, m) for f, m in imports("programs")
           if m in order and f"programs.{Path(f).stem}" in order
           and order.index(m) <= order.index(f"programs.{Path(f).stem}")]
    assert bad == []
    assert ("programs/demo.py", "programs.services") in imports("programs")
