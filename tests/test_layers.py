"""Which package may import which: the kernel (`campus/`) stands on nothing of ours above it, and the
top floor (`programs/`: the command line, the demo) is imported by nobody. The shared layer
(`protocols/`, `device_profiles/`) stands on the kernel only; the agent (`edge_agent/`), the
simulators (`firmware_stubs/`) and central (`central/`, `dashboards/`) stand on it and not on each
other. The MQTT libraries' private attributes are touched in one adapter only (`campus/mqtt.py`).
Read from the source, so a broken rule fails here and not in a review."""

from __future__ import annotations

import ast
import asyncio
import importlib
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from protocols import PROTOCOLS

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


def test_central_and_the_simulators_do_not_import_the_agent() -> None:
    """Central validates devices with the shared config models, simulators use the shared codecs."""
    bad = [(f, m) for package in ("central", "dashboards", "firmware_stubs")
           for f, m in imports(package) if m.split(".")[0] == "edge_agent"]
    assert bad == []


def test_the_agent_does_not_import_the_simulators() -> None:
    bad = [(f, m) for f, m in imports("edge_agent") if m.split(".")[0] == "firmware_stubs"]
    assert bad == []


def test_the_shared_layer_imports_nothing_above_it() -> None:
    """protocols/ and device_profiles/ stand on the kernel (protocols/modbus.py names a device_profiles
    type for type checking only); drivers and simulators are named in the table as strings, not imported."""
    above = ("edge_agent", "central", "dashboards", "firmware_stubs", "programs")
    bad = [(f, m) for package in ("protocols", "device_profiles")
           for f, m in imports(package) if m.split(".")[0] in above]
    assert bad == []
    assert {m.split(".")[0] for _, m in imports("protocols")} & {"cv2", "pymodbus", "serial", "numpy"} == set()


# The same word as a protocol name, meaning something else: (word, module) -> what it is there.
SAME_WORD = {
    ("camera", "campus/contract.py"): "the device kind (CONTRACT.md, kinds)",
    ("camera", "dashboards/health.py"): "the device kind",
    ("camera", "dashboards/i18n.py"): "the device kind, as pages name it",
    ("camera", "dashboards/security.py"): "the browser feature in Permissions-Policy",
    ("camera", "edge_agent/drivers/camera.py"): "the field of an attendance event naming the camera",
    ("camera", "programs/demo.py"): "the demo's device id",
}


def protocol_names_spelled(root: Path = ROOT) -> dict[str, set[str]]:
    """protocol name -> modules (outside tests/ and bench/) with a string that is exactly that name.
    bench/ builds gateway configs for particular devices (their ids), so it is left out."""
    found: dict[str, set[str]] = {name: set() for name in PROTOCOLS}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", "bench") or any(p.startswith(".") for p in rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in found:
                if (node.value, rel.as_posix()) not in SAME_WORD:
                    found[node.value].add(rel.as_posix())
    return found


def test_a_protocol_name_is_spelled_in_its_own_module_only() -> None:
    """Adding a protocol touches its own module and the table; nothing else compares against its name."""
    own: dict[str, set[str]] = {}
    for path in sorted((ROOT / "protocols").glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"protocols.{path.stem}")
        entry = getattr(module, "PROTOCOL", None)
        if entry is not None:
            own[entry.name] = {f"protocols/{path.name}"}
    assert set(own) == set(PROTOCOLS)  # one module per protocol
    assert protocol_names_spelled() == own


def test_the_name_scan_finds_a_stray_name(tmp_path: Path) -> None:
    """The scan is not vacuous: a comparison with a protocol's name in another module is found."""
    (tmp_path / "firmware_stubs").mkdir()
    (tmp_path / "firmware_stubs" / "x.py").write_text('def f(p):\n    return p == "samsung_mdc"\n')
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "y.py").write_text('DEVICE = {"id": "pjlink"}\n')
    found = protocol_names_spelled(tmp_path)
    assert found["samsung_mdc"] == {"firmware_stubs/x.py"} and found["pjlink"] == set()


# The opening and closing markers only: a bare "=======" is also a Markdown heading underline.
CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


def conflict_markers(text: str) -> list[int]:
    """The lines (1-based) where a merge left its markers: a line that *starts* with one."""
    return [n for n, line in enumerate(text.splitlines(), 1) if line.startswith(CONFLICT_MARKERS)]


def test_no_file_keeps_a_merge_conflict() -> None:
    # A merge once left README's layout table with both sides and the markers, unseen for a stop:
    # nothing else reads the Markdown, so this is the check.
    import subprocess
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = {}
    for name in tracked:
        if not name.endswith((".md", ".py", ".html", ".js", ".css", ".yaml", ".toml", ".cfg", ".txt", ".po")):
            continue
        lines = conflict_markers((ROOT / name).read_text(encoding="utf-8", errors="replace"))
        if lines:
            found[name] = lines
    assert not found, f"merge-conflict markers left in {found}"


def test_the_conflict_scan_finds_markers() -> None:
    assert conflict_markers("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> x\n") == [2, 6]
    assert conflict_markers("A heading\n=======\n") == []
