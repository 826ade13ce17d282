"""The wire protocols, one module each, and the one table of them (`PROTOCOLS`).

A protocol module holds everything of one protocol that is not I/O: its codec (framing, checksums,
parsing, encoding), its device address as data (`spec.Address`), and its table entry (`PROTOCOL`),
which names its driver and simulator by path. Drivers (edge_agent/drivers/) and simulators
(firmware_stubs/) both stand on these modules and neither imports the other; the gateway config
(device_profiles/config.py) checks addresses through this table, so central validates a device
without importing the agent. Generated from the table: the profile schema's protocol list and
address shapes (`device_profiles.profile_schema`), the provisioning form (dashboards/provisioning.py),
the simulator runner (firmware_stubs/runner.py) and the driver lookup (edge_agent/drivers/).

At run time this package imports only the kernel (campus/): a protocol module is cheap to import, whatever
its driver needs (pymodbus, OpenCV) is imported by the driver. docs/architecture.md, "How to add
a protocol", lists what a new protocol touches.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from campus.errors import ConfigError
from protocols.spec import Address, Field, Protocol, load

__all__ = ["PROTOCOLS", "Address", "Field", "Protocol", "check_address", "load", "protocol"]


def _discover() -> dict[str, Protocol]:
    """Every module of this package that makes a table entry (`PROTOCOL`), by module name: adding a
    protocol module is adding the protocol, with no list to keep in step."""
    table: dict[str, Protocol] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        entry = getattr(importlib.import_module(f"{__name__}.{info.name}"), "PROTOCOL", None)
        if isinstance(entry, Protocol):
            if entry.name in table:
                raise ImportError(f"protocols/{info.name}.py: protocol {entry.name!r} is defined twice")
            table[entry.name] = entry
    return table


PROTOCOLS: dict[str, Protocol] = _discover()


def protocol(name: str) -> Protocol:
    """The table entry of `name`; ConfigError (listing the known ones) if there is none."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None


def check_address(name: str, address: Any) -> None:
    """Raise ValueError naming the field of `address` that a device of protocol `name` cannot have."""
    protocol(name).address.check(address)
