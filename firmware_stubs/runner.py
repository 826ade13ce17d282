"""`campus sim`: start the simulators for every device a gateway config names.

Each simulator listens exactly where the config says the device is, so the
agent started on the same config talks to it as it would to hardware.
Per-device `simulator:` settings (seed, time_scale, class_size) tune it.
Which simulator serves which protocol is the protocol table's
(`protocols.PROTOCOLS`); `SIMULATORS` is read from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from campus.errors import ConfigError
from device_profiles.config import DeviceConfig, GatewayConfig
from protocols import PROTOCOLS, load

log = logging.getLogger(__name__)

# protocol -> "module:function", from the protocol table. The function takes (DeviceConfig, index)
# and returns a simulator with async start()/stop(); for a protocol whose devices share a link
# (`shared_link`: a Modbus bus) it takes all of them and returns (simulator, {device id: handle}) pairs.
SIMULATORS: dict[str, str] = {name: entry.simulator for name, entry in PROTOCOLS.items() if entry.simulator}


class SimulatorSet:
    """All simulators of one gateway config, started and stopped together."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.by_device: dict[str, Any] = {}
        self.simulators: list[Any] = []
        by_protocol: dict[str, list[tuple[int, DeviceConfig]]] = {}
        for index, dev in enumerate(config.devices):
            protocol = dev.profile_obj.protocol
            if protocol not in SIMULATORS:
                raise ConfigError(f"{config.source}: no simulator for protocol {protocol!r} (device {dev.id})")
            by_protocol.setdefault(protocol, []).append((index, dev))
        for protocol, devs in by_protocol.items():
            factory = load(SIMULATORS[protocol])
            if PROTOCOLS[protocol].shared_link:
                for sim, handles in factory(devs):
                    self.simulators.append(sim)
                    self.by_device.update(handles)
                continue
            for index, dev in devs:
                sim = factory(dev, index)
                self.simulators.append(sim)
                self.by_device[dev.id] = sim

    async def start(self) -> None:
        for sim in self.simulators:
            await sim.start()
        log.info("simulators for %s/%s running: %s", self.config.school, self.config.gateway,
                 ", ".join(self.by_device))

    async def stop(self) -> None:
        for sim in self.simulators:
            with contextlib.suppress(Exception):
                await sim.stop()

    async def __aenter__(self) -> SimulatorSet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_simulators(config: GatewayConfig, stop: asyncio.Event) -> None:
    async with SimulatorSet(config):
        await stop.wait()
