"""Which package may import which: the kernel (`campus/`) stands on nothing of ours above it, and the
top floor (`programs/`: the command line, the demo) is imported by nobody; and the MQTT libraries'
private attributes are touched in one adapter only (`campus/mqtt.py`). Read from the source, so a
broken rule fails here and not in a review."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
ABOVE_THE_KERNEL = ("edge_agent", "central", "dashboards", "firmware_stubs", "programs")
MQTT_ADAPTER = "campus/mqtt.py"  # the one module that may touch the MQTT libraries' private attributes


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


# ---------------------------------------------------------------- private parts of the MQTT libraries


def private_mqtt_names() -> set[str]:
    """Private attribute and method names of a paho and an aiomqtt client, as the installed versions have them."""
    async def aiomqtt_client() -> aiomqtt.Client:  # it looks up the running loop
        return aiomqtt.Client("127.0.0.1")

    names: set[str] = set()
    for client in (paho.Client(CallbackAPIVersion.VERSION2), asyncio.run(aiomqtt_client())):
        names |= {n for n in (*dir(type(client)), *vars(client)) if n.startswith("_") and not n.startswith("__")}
    return names


def private_mqtt_accesses() -> list[tuple[str, int, str]]:
    """(file, line, expression) for every `x._name` outside `self`/`cls` whose name a paho or aiomqtt client
    keeps private: a class's own `self._sock` is its business, `client._client` is a library's."""
    names = private_mqtt_names()
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        where = path.relative_to(ROOT)
        if where.parts[0] in ("tests", ".venv") or where.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in names
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append((where.as_posix(), node.lineno, ast.unparse(node)))
    return found


def test_private_attributes_of_the_mqtt_libraries_are_touched_in_one_adapter_only() -> None:
    accesses = private_mqtt_accesses()
    assert [a for a in accesses if a[0] != MQTT_ADAPTER] == []
    assert any(a[2] == "client._client" for a in accesses)  # the scan sees the adapter's own access


def test_the_private_names_include_the_ones_we_once_touched() -> None:
    assert {"_client", "_reset_sockets", "_sock", "_out_packet", "_in_packet"} <= private_mqtt_names()
