"""Drivers, one module per protocol, all with the interface of `base.Driver`.

`create_driver` is the one place that maps a profile's `protocol` to its
driver class; a protocol whose driver module is absent is a config error.
"""

from __future__ import annotations

import importlib
from typing import Any

from campus.errors import ConfigError
from device_profiles import Profile
from edge_agent.drivers.base import Driver

# protocol -> "module:Class"; modules are imported on first use so a gateway
# without a camera never imports OpenCV.
DRIVERS: dict[str, str] = {
    "modbus": "edge_agent.drivers.modbus:ModbusDriver",
    "pjlink": "edge_agent.drivers.pjlink:PJLinkDriver",
    "card_em4100": "edge_agent.drivers.card_reader:EM4100ReaderDriver",
    "card_line": "edge_agent.drivers.card_reader:LineReaderDriver",
    "samsung_mdc": "edge_agent.drivers.samsung_mdc:SamsungMDCDriver",
    "lg_serial": "edge_agent.drivers.lg_serial:LGSerialDriver",
    "camera": "edge_agent.drivers.camera:CameraDriver",
}


def driver_class(protocol: str) -> type[Driver]:
    try:
        target = DRIVERS[protocol]
    except KeyError:
        raise ConfigError(f"no driver for protocol {protocol!r}; known: {', '.join(sorted(DRIVERS))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_driver(device_id: str, profile: Profile, address: dict[str, Any],
                  options: dict[str, Any] | None = None) -> Driver:
    return driver_class(profile.protocol)(device_id, profile, address, options)
