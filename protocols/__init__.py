"""The wire protocols, one module each, and the one table of them (`PROTOCOLS`).

A protocol module holds everything of one protocol that is not I/O: its codec (framing, checksums,
parsing, encoding), its device address as data (`spec.Address`), and its table entry (`PROTOCOL`),
which names its driver and simulator by path. Drivers (edge_agent/drivers/) and simulators
(firmware_stubs/) both stand on these modules and neither imports the other; the gateway config
(device_profiles/config.py) checks addresses through this table, so central validates a device
without importing the agent. Generated from the table: the profile schema's protocol list and
address shapes (`device_profiles.profile_schema`), the provisioning form (dashboards/provisioning.py),
the simulator runner (firmware_stubs/runner.py) and the driver lookup (edge_agent/drivers/).

This package imports only the kernel (campus/): a protocol module is cheap to import, whatever
its driver needs (pymodbus, OpenCV) is imported by the driver. docs/architecture.md, "How to add
a protocol", lists what a new protocol touches.
"""

from __future__ import annotations

from typing import Any

from campus.errors import ConfigError
from protocols import camera, card_em4100, card_line, lg_serial, modbus, pjlink, samsung_mdc
from protocols.spec import Address, Field, Protocol, load

__all__ = ["PROTOCOLS", "Address", "Field", "Protocol", "check_address", "load", "protocol"]

PROTOCOLS: dict[str, Protocol] = {
    entry.name: entry
    for entry in (modbus.PROTOCOL, pjlink.PROTOCOL, samsung_mdc.PROTOCOL, lg_serial.PROTOCOL,
                  card_em4100.PROTOCOL, card_line.PROTOCOL, camera.PROTOCOL)
}


def protocol(name: str) -> Protocol:
    """The table entry of `name`; ConfigError (listing the known ones) if there is none."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None


def check_address(name: str, address: Any) -> None:
    """Raise ValueError naming the field of `address` that a device of protocol `name` cannot have."""
    protocol(name).address.check(address)
