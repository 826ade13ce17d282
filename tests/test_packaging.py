"""campus-iot installed from its wheel, not run from the checkout.

The tests otherwise import the editable checkout, where every file is at hand;
a file the code reads but the wheel leaves out only fails for a user who ran
`pip install campus-iot`. (`campus broker-config --district` did: it read the
bridge template from the checkout's broker_config/.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from central.registry import Registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the files git would commit (a build writes build/ and *.egg-info next to them).
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout
    src = tmp / "src"
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                             "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = (tmp / "dist").glob("campus_iot-*.whl")
    return built


def test_the_wheel_carries_every_file_the_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {"broker_config/bridge.conf.template", "broker_config/mosquitto.conf", "broker_config/make-ca.sh"}
    wanted |= {str(p.relative_to(REPO)) for p in (REPO / "device_profiles" / "profiles").glob("*.yaml")}
    wanted |= {str(p.relative_to(REPO)) for d in ("templates", "static") for p in (REPO / "dashboards" / d).iterdir()}
    # The message catalogs, compiled by the build (setup.py): git keeps only their .po sources.
    wanted |= {str(p.relative_to(REPO).with_suffix(".mo")) for p in (REPO / "dashboards" / "translations").rglob("*.po")}
    assert any(n.endswith("LC_MESSAGES/messages.mo") for n in wanted)
    assert wanted <= names, sorted(wanted - names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)  # the wheel is the product, not the repo


def test_installed_broker_config_writes_district_bridges_away_from_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    registry = Registry(f"sqlite:///{tmp_path / 'central.db'}")
    registry.register_gateway("gw-a", "s1", "101", "A")
    registry.close()
    # The unpacked wheel first on the path, run from a directory that has no checkout in it.
    run = (f"import sys; sys.path.insert(0, {str(site)!r}); import central.broker_config as b; "
           f"assert b.__file__.startswith({str(site)!r}), b.__file__; "
           "from programs.cli import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", run, "broker-config", "--db", f"sqlite:///{tmp_path / 'central.db'}",
                             "--out", str(tmp_path / "out"), "--district", "mqtt.district.example:8883"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    conf = (tmp_path / "out" / "bridges" / "bridge-s1.conf").read_text()
    assert "address mqtt.district.example:8883" in conf and "{" not in conf
