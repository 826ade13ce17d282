"""Gateway config: valid files load; mistakes name the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from campus.errors import ConfigError
from device_profiles.config import load_gateway_config

GOOD = """\
school: sch1
gateway: gw-101
room: "101"
mqtt: mqtt://127.0.0.1:1883
poll_interval: 2
devices:
  - id: env
    profile: env-6in1-modbus
    address: {host: 127.0.0.1, port: 5020, unit: 1}
"""


def test_good_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    cfg = load_gateway_config(path)
    assert cfg.gateway == "gw-101" and cfg.devices[0].profile_obj.kind == "environment"
    assert cfg.data_path == (tmp_path / "gw-101-data").resolve()


@pytest.mark.parametrize("old, new, expect", [
    ("poll_interval: 2", "poll_interval: -2", r"gw.yaml:5: field poll_interval"),
    ("port: 5020", "port: 70000", r"gw.yaml:9: field devices.0.*port must be 1-65535"),
    ("profile: env-6in1-modbus", "profile: nope", r"gw.yaml:8: field devices.0.profile.*not found"),
    ("mqtt://127.0.0.1:1883", "http://x", r"gw.yaml:4: field mqtt.*scheme"),
    ("gateway: gw-101", "gateway: gw/101", r"field gateway"),
    ("room: \"101\"", "room: \"101\"\ncolour: red", r"field colour.*Extra inputs"),
    ("  - id: env", "  - id: env\n    bogus: 1", r"field devices.0.bogus"),
])
def test_config_errors_name_line_and_field(tmp_path: Path, old: str, new: str, expect: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError, match=expect):
        load_gateway_config(path)


def test_duplicate_device_ids(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD + "  - id: env\n    profile: env-6in1-modbus\n    address: {host: h, port: 1}\n")
    with pytest.raises(ConfigError, match="appears twice"):
        load_gateway_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_gateway_config("/nonexistent/gw.yaml")
