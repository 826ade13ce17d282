"""Drivers, one module per protocol, all with the interface of `base.Driver`.

Which class drives which protocol is the protocol table's (`protocols.PROTOCOLS`); `DRIVERS` is
read from it. Modules are imported on first use, so a gateway without a camera never imports
OpenCV; a protocol the table does not know is a config error.
"""

from __future__ import annotations

from typing import Any

from campus.errors import ConfigError
from device_profiles import Profile
from edge_agent.drivers.base import Driver
from protocols import PROTOCOLS, load

# protocol -> "module:Class", from the protocol table.
DRIVERS: dict[str, str] = {name: entry.driver for name, entry in PROTOCOLS.items()}


def driver_class(protocol: str) -> type[Driver]:
    try:
        target = DRIVERS[protocol]
    except KeyError:
        raise ConfigError(f"no driver for protocol {protocol!r}; known: {', '.join(sorted(DRIVERS))}") from None
    return load(target)


def create_driver(device_id: str, profile: Profile, address: dict[str, Any],
                  options: dict[str, Any] | None = None) -> Driver:
    return driver_class(profile.protocol)(device_id, profile, address, options)
