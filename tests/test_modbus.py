"""Modbus driver against the Modbus simulator over a real TCP socket."""

from __future__ import annotations

import asyncio

import pytest

from campus.errors import DeviceError
from campus.net import free_port
from device_profiles import load_profile
from edge_agent.drivers import create_driver
from edge_agent.drivers.base import DeviceUnreachable
from firmware_stubs.environment import ClassroomAir, ModbusSensorServer

PROFILE = load_profile("env-6in1-modbus")


def _driver(port: int, unit: int = 1, timeout: float = 0.5):
    return create_driver(f"env{unit}", PROFILE, {"host": "127.0.0.1", "port": port, "unit": unit},
                         {"timeout": timeout})


def test_reads_equal_what_the_simulator_serves() -> None:
    async def main() -> None:
        port = free_port()
        async with ModbusSensorServer(port=port, units={1: ClassroomAir(seed=5)}) as sim:
            sim.frozen = True
            async with _driver(port) as drv:
                for _ in range(3):
                    sim.units[1].step(600)  # ten simulated minutes between polls
                    reading = await drv.read()
                    assert reading.values == sim.served_values(1)
                    assert set(reading.values) == set(PROFILE.metrics)
    asyncio.run(main())


def test_several_sensors_on_one_link_and_a_fault_stays_local() -> None:
    async def main() -> None:
        port = free_port()
        units = {1: ClassroomAir(seed=1), 2: ClassroomAir(seed=2), 3: ClassroomAir(seed=3)}
        async with ModbusSensorServer(port=port, units=units) as sim:
            sim.frozen = True
            drivers = [_driver(port, u) for u in units]
            for d in drivers:
                await d.open()
            sim.faults[2] = "exception"
            sim.faults[3] = "silent"
            r1 = await drivers[0].read()
            assert r1.values == sim.served_values(1)
            with pytest.raises(DeviceError, match="exception 4"):
                await drivers[1].read()
            with pytest.raises(DeviceError, match="no valid answer"):
                await drivers[2].read()
            # After a timeout the link is reopened and the healthy sensor still reads.
            assert (await drivers[0].read()).values == sim.served_values(1)
            sim.faults.clear()
            assert (await drivers[2].read()).values == sim.served_values(3)
            for d in drivers:
                await d.close()
    asyncio.run(main())


def test_unreachable_sensor() -> None:
    async def main() -> None:
        drv = _driver(free_port())
        with pytest.raises(DeviceUnreachable):
            await drv.read()
        await drv.close()
    asyncio.run(main())


def test_simulator_is_deterministic_under_a_seed() -> None:
    a, b, c = ClassroomAir(seed=9), ClassroomAir(seed=9), ClassroomAir(seed=10)
    for _ in range(50):
        for air in (a, b, c):
            air.step(60)
    assert a.values() == b.values()
    assert a.values() != c.values()


def test_co2_rises_in_class_and_falls_at_break() -> None:
    air = ClassroomAir(seed=1, start_minute=8 * 60)  # first period starts
    start = air.values()["co2_ppm"]
    for _ in range(40):
        air.step(60)  # 08:40, still in class
    in_class = air.values()["co2_ppm"]
    assert air.people > 30 and in_class > start + 300
    for _ in range(13):
        air.step(60)  # 08:53: break
    assert air.people < 10 and air.values()["co2_ppm"] < in_class


def test_modbus_rtu_bus_on_a_pty_with_several_sensors(tmp_path) -> None:
    """Modbus RTU over a serial line (a null-modem pty pair): the same profile, three units on one bus."""
    async def main() -> None:
        port_path = str(tmp_path / "ttyRS485")
        units = {1: ClassroomAir(seed=1), 2: ClassroomAir(seed=2), 5: ClassroomAir(seed=5)}
        async with ModbusSensorServer(serial=port_path, units=units) as sim:
            sim.frozen = True
            drivers = [create_driver(f"env{u}", PROFILE, {"serial": port_path, "unit": u}, {"timeout": 0.5})
                       for u in units]
            # The three polls contend for one bus: the shared client serialises them.
            readings = await asyncio.gather(*(d.read() for d in drivers))
            for unit, reading in zip(units, readings, strict=True):
                assert reading.values == sim.served_values(unit)
            sim.faults[2] = "exception"
            with pytest.raises(DeviceError, match="exception 4"):
                await drivers[1].read()
            assert (await drivers[2].read()).values == sim.served_values(5)
            for d in drivers:
                await d.close()
    asyncio.run(main())
