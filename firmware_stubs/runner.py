"""`campus sim`: start the simulators for every device a gateway config names.

Each simulator listens exactly where the config says the device is, so the
agent started on the same config talks to it as it would to hardware.
Per-device `simulator:` settings (seed, time_scale, class_size) tune it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections import defaultdict
from typing import Any

from campus.errors import ConfigError
from edge_agent.config import DeviceConfig, GatewayConfig
from firmware_stubs.environment import ClassroomAir, ModbusSensorServer

log = logging.getLogger(__name__)

# protocol -> "module:function"; the function takes (DeviceConfig, index) and
# returns a simulator with async start()/stop(). Modbus is grouped by link
# below (several sensors share one bus), every other device gets its own.
SIMULATORS: dict[str, str] = {
    "pjlink": "firmware_stubs.pjlink:simulator_for",
    "card_em4100": "firmware_stubs.card_reader:simulator_for",
    "card_line": "firmware_stubs.card_reader:simulator_for",
    "samsung_mdc": "firmware_stubs.displays:simulator_for",
    "lg_serial": "firmware_stubs.displays:simulator_for",
    "camera": "firmware_stubs.camera:simulator_for",
}


def _simulator_factory(protocol: str) -> Any:
    try:
        target = SIMULATORS[protocol]
    except KeyError:
        return None
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def _air(dev: DeviceConfig, index: int) -> ClassroomAir:
    opts = dev.simulator
    start = opts.get("start")
    kwargs: dict[str, Any] = {"seed": int(opts.get("seed", index + 1)), "class_size": int(opts.get("class_size", 40))}
    if start:
        h, m = (int(x) for x in str(start).split(":"))
        kwargs["start_minute"] = h * 60 + m
    return ClassroomAir(**kwargs)


class SimulatorSet:
    """All simulators of one gateway config, started and stopped together."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.modbus: dict[tuple[str, ...], ModbusSensorServer] = {}
        self.by_device: dict[str, Any] = {}
        groups: dict[tuple[str, ...], list[DeviceConfig]] = defaultdict(list)
        self.others: list[Any] = []
        for index, dev in enumerate(config.devices):
            protocol = dev.profile_obj.protocol
            if protocol != "modbus":
                factory = _simulator_factory(protocol)
                if factory is None:
                    raise ConfigError(f"{config.source}: no simulator for protocol {protocol!r} (device {dev.id})")
                sim = factory(dev, index)
                self.others.append(sim)
                self.by_device[dev.id] = sim
                continue
            key = ("tcp", str(dev.address.get("host")), str(dev.address.get("port", 502))) if "host" in dev.address \
                else ("rtu", str(dev.address["serial"]))
            groups[key].append(dev)
        for key, devs in groups.items():
            units = {int(d.address.get("unit", 1)): _air(d, config.devices.index(d)) for d in devs}
            opts = devs[0].simulator
            server = ModbusSensorServer(devs[0].profile, units=units,
                                        host=key[1] if key[0] == "tcp" else "127.0.0.1",
                                        port=int(key[2]) if key[0] == "tcp" else None,
                                        serial=key[1] if key[0] == "rtu" else None,
                                        time_scale=float(opts.get("time_scale", 1.0)))
            server.frozen = bool(opts.get("frozen", False))
            self.modbus[key] = server
            for d in devs:
                self.by_device[d.id] = (server, int(d.address.get("unit", 1)))

    async def start(self) -> None:
        for server in [*self.modbus.values(), *self.others]:
            await server.start()
        log.info("simulators for %s/%s running: %s", self.config.school, self.config.gateway,
                 ", ".join(self.by_device))

    async def stop(self) -> None:
        for server in [*self.modbus.values(), *self.others]:
            with contextlib.suppress(Exception):
                await server.stop()

    async def __aenter__(self) -> SimulatorSet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_simulators(config: GatewayConfig, stop: asyncio.Event) -> None:
    async with SimulatorSet(config):
        await stop.wait()
