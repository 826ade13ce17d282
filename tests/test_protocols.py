"""The protocol table (protocols/) and what is generated from it: they must agree, and the address
declarations must check, describe and offer the same fields."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import jsonschema
import pytest

import device_profiles
from campus.errors import CampusError, ProfileError
from dashboards.provisioning import ADDRESS_FORM
from device_profiles import available_profiles, load_profile
from edge_agent.drivers import DRIVERS
from firmware_stubs.runner import SIMULATORS
from protocols import PROTOCOLS, check_address, load, protocol
from protocols.spec import Address, Field


def test_what_is_generated_from_the_table_agrees_with_it() -> None:
    schema = device_profiles.profile_schema()
    assert schema["properties"]["protocol"]["enum"] == list(PROTOCOLS)
    assert schema["$defs"]["address"] == {name: e.address.json_schema() for name, e in PROTOCOLS.items()}
    assert ADDRESS_FORM == {name: e.address.form() for name, e in PROTOCOLS.items()}
    assert DRIVERS == {name: e.driver for name, e in PROTOCOLS.items()}
    assert SIMULATORS == {name: e.simulator for name, e in PROTOCOLS.items() if e.simulator}
    assert set(SIMULATORS) == set(PROTOCOLS)  # `campus sim` runs every protocol
    assert {load_profile(p).protocol for p in available_profiles()} == set(PROTOCOLS)  # each has a profile


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_each_entry_names_a_driver_and_a_simulator_that_exist(name: str) -> None:
    entry = PROTOCOLS[name]
    driver = load(entry.driver)
    assert driver.__module__.startswith("edge_agent.drivers.") and driver.protocol == name
    assert entry.simulator is not None and entry.simulator.startswith("firmware_stubs.")
    assert callable(load(entry.simulator))
    assert entry.address.form(), "the provisioning form offers at least one field"


def test_the_profile_schema_keeps_each_protocols_own_rules() -> None:
    """Modbus metrics need a register: that rule now comes from protocols/modbus.py."""
    text = "name: x\nkind: environment\nprotocol: modbus\nmetrics:\n  co2_ppm: {unit: ppm}\n"
    with pytest.raises(ProfileError, match="'register' is a required property"):
        device_profiles.parse_profile(text, "x.yaml")
    with pytest.raises(ProfileError, match="protocol"):
        device_profiles.parse_profile(text.replace("modbus", "bacnet"), "x.yaml")


# (protocol, address, good?) where JSON Schema can say as much as the check does.
SAMPLES: list[tuple[str, dict[str, Any], bool]] = [
    ("modbus", {"host": "10.0.0.5", "port": 502, "unit": 1}, True),
    ("modbus", {"serial": "/dev/ttyUSB0", "unit": 3, "baudrate": 19200, "parity": "E"}, True),
    ("modbus", {}, False),
    ("modbus", {"host": "h", "serial": "/dev/ttyUSB0"}, False),
    ("modbus", {"host": "h", "unit": 248}, False),
    ("modbus", {"host": "h", "unit_id": 1}, False),
    ("pjlink", {"host": "10.0.0.6", "password": "JBMIAProjectorLink"}, True),
    ("pjlink", {"host": "h", "port": True}, False),
    ("pjlink", {"host": "   "}, False),
    ("samsung_mdc", {"serial": "/dev/ttyS0", "display_id": 254, "stopbits": 1.5}, True),
    ("samsung_mdc", {"serial": "/dev/ttyS0", "display_id": 255}, False),
    ("lg_serial", {"serial": "/dev/ttyS0", "set_id": 255, "baudrate": 9600}, True),
    ("lg_serial", {"serial": "/dev/ttyS0", "bytesize": 9}, False),
    ("card_em4100", {"serial": "/dev/ttyUSB1", "baudrate": 9600}, True),
    ("card_line", {"serial": "/dev/ttyUSB1", "baudrate": 9601}, False),
    ("card_line", {"serial": "/dev/ttyUSB1", "parity": "M"}, False),
    ("dlt645", {"serial": "/dev/ttyUSB2", "meter_address": "000012345678", "baudrate": 2400, "parity": "E"}, True),
    ("dlt645", {"serial": "/dev/ttyUSB2", "meter_address": "12345678901a"}, False),
    ("dlt645", {"serial": "/dev/ttyUSB2", "meter_address": "0000123456789"}, False),
    ("dlt645", {"serial": "/dev/ttyUSB2"}, False),
    ("camera", {"source": 0}, True),
    ("camera", {"source": "rtsp://cam.local/s"}, True),
    ("camera", {"source": -1}, False),
    ("camera", {"source": True}, False),
    ("camera", {}, False),
]


@pytest.mark.parametrize(("name", "address", "good"), SAMPLES)
def test_the_address_shape_and_the_check_agree(name: str, address: dict[str, Any], good: bool) -> None:
    shape = device_profiles.profile_schema()["$defs"]["address"][name]
    assert jsonschema.Draft202012Validator(shape).is_valid(address) == good
    if good:
        check_address(name, address)
    else:
        with pytest.raises(ValueError):
            check_address(name, address)


@pytest.mark.parametrize(("name", "address", "message"), [
    ("modbus", {"host": "h", "unit_id": 1}, "unknown address field 'unit_id'; known: host, port, unit, serial"),
    ("modbus", {}, "give either host (Modbus TCP) or serial (Modbus RTU port)"),
    ("modbus", {"host": "h", "port": 70000}, "port must be 1-65535, got 70000"),
    ("modbus", {"serial": "/dev/ttyUSB0", "unit": True}, "unit must be a Modbus address 0-247, got True"),
    ("pjlink", {"host": "h", "password": "x" * 33}, "password must be text of 1-32 printable characters"),
    ("samsung_mdc", {"display_id": 1}, "serial is required: the path of the serial port"),
    ("lg_serial", {"serial": "/dev/ttyS0", "stopbits": True}, "stopbits must be 1, 1.5 or 2, got True"),
    ("card_em4100", {"serial": "/dev/ttyUSB0", "baudrate": 9601}, "baudrate must be 1200, 2400, 4800, 9600"),
    ("camera", {"source": "ftp://cam/x"}, "source: URL scheme 'ftp' is not supported"),
])
def test_a_bad_address_gets_one_message_naming_the_field(name: str, address: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_address(name, address)
    assert str(caught.value).startswith(message)


def test_a_password_is_never_repeated_in_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        check_address("pjlink", {"host": "h", "password": "secret\n" * 6})
    assert "secret" not in str(caught.value)


def test_an_unknown_protocol_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(CampusError, match="unknown protocol 'bacnet'; known: camera, card_em4100"):
        protocol("bacnet")


def test_the_declaration_language_refuses_mistakes() -> None:
    with pytest.raises(ValueError, match="type 'float'"):
        Field("x", "float")
    with pytest.raises(ValueError, match="repeat a name"):
        Address(fields=(Field("a", "text"), Field("a", "int")))
    with pytest.raises(ValueError, match="choose"):
        Address(fields=(Field("a", "text"),), choose=(("b", "B"),))


def test_validating_a_device_imports_neither_the_agent_nor_opencv() -> None:
    """What central does (central/registry.py): check a device of every protocol without the agent's code,
    and without a driver's heavy libraries (a gateway without a camera never imports OpenCV)."""
    code = """
import sys
from device_profiles.config import DeviceConfig
for profile, address in [("env-6in1-modbus", {"host": "h"}), ("camera-occupancy", {"source": 0}),
                         ("display-samsung-mdc", {"serial": "/dev/ttyS0"}), ("projector-pjlink", {"host": "h"})]:
    DeviceConfig(id="d", profile=profile, address=address)
loaded = sorted(m for m in ("edge_agent", "firmware_stubs", "cv2", "pymodbus", "serial") if m in sys.modules)
print(",".join(loaded) or "none")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "none"
