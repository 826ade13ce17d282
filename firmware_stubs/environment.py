"""A classroom air-quality sensor: a school-day model behind a real Modbus server.

`ClassroomAir` models one room over a school day: pupils arrive for each
period and leave at the breaks, CO2 rises with occupancy and decays with
ventilation, temperature and noise follow the people, daylight follows the
clock. It is deterministic: the same seed and the same sequence of steps
give the same values. `ModbusSensorServer` serves those values from the
profile's register map over Modbus TCP, or Modbus RTU on a serial port or
pty, through pymodbus' server, and can be told to misbehave. The same server is the Modbus power
meter: a unit whose profile is of kind `meter` serves a `firmware_stubs.meter.ClassroomLoad`
(voltage, current, power, the kWh counter) from that profile's register map, so an RS-485 bus
with a sensor and a meter on it is one simulated link, as it is one cable.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from device_profiles import Profile, load_profile
from firmware_stubs.pty import NullModem
from protocols import modbus

if TYPE_CHECKING:
    from device_profiles.config import DeviceConfig

# Periods of a Chinese primary/middle school day (minutes after midnight).
PERIODS = [(8 * 60, 8 * 60 + 45), (8 * 60 + 55, 9 * 60 + 40), (10 * 60, 10 * 60 + 45),
           (10 * 60 + 55, 11 * 60 + 40), (14 * 60, 14 * 60 + 45), (14 * 60 + 55, 15 * 60 + 40),
           (16 * 60, 16 * 60 + 45)]
ROOM_VOLUME_M3 = 200.0
OUTDOOR_CO2 = 420.0
CO2_PER_PERSON_PPM_S = 0.0052e-3 / ROOM_VOLUME_M3 * 1e6  # 5.2 mL/s exhaled CO2 per pupil


class Model(Protocol):
    """What a simulated Modbus unit serves: values that a simulated clock moves."""

    overrides: dict[str, float]

    def step(self, seconds: float) -> None: ...

    def values(self) -> dict[str, float]: ...


@dataclass
class ClassroomAir:
    seed: int = 1
    class_size: int = 40
    start_minute: float = 8 * 60 - 10  # simulated clock starts 07:50
    air_changes_per_hour: float = 3.0
    rng: random.Random = field(init=False)
    minute: float = field(init=False)
    people: int = field(init=False, default=0)
    co2_ppm: float = field(init=False, default=OUTDOOR_CO2 + 30)
    temperature_c: float = field(init=False, default=20.0)
    humidity_pct: float = field(init=False, default=45.0)
    pm25_ugm3: float = field(init=False, default=35.0)
    illuminance_lux: float = field(init=False, default=0.0)
    noise_dba: float = field(init=False, default=35.0)
    # Values a test or an operator pinned (e.g. CO2 pushed over a limit).
    overrides: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.minute = self.start_minute
        self.step(0)

    def in_class(self) -> bool:
        m = self.minute % (24 * 60)
        return any(a <= m < b for a, b in PERIODS)

    def step(self, seconds: float) -> None:
        """Advance the simulated clock by `seconds` and update every value."""
        rng = self.rng
        self.minute += seconds / 60
        hour = (self.minute / 60) % 24
        target = self.class_size - rng.randint(0, 3) if self.in_class() else (rng.randint(0, 5) if 7 <= hour < 18 else 0)
        self.people = target
        # CO2: exhaled by pupils, removed by ventilation toward outdoor level.
        vent = self.air_changes_per_hour / 3600 * seconds
        self.co2_ppm += self.people * CO2_PER_PERSON_PPM_S * seconds
        self.co2_ppm += (OUTDOOR_CO2 - self.co2_ppm) * min(1.0, vent)
        self.co2_ppm += rng.gauss(0, 3)
        # Temperature: a daily curve plus body heat, moving slowly.
        base = 19 + 4 * math.sin((hour - 9) / 24 * 2 * math.pi) + self.people * 0.05
        self.temperature_c += (base - self.temperature_c) * min(1.0, seconds / 900) + rng.gauss(0, 0.05)
        self.humidity_pct += (50 - 0.8 * (self.temperature_c - 20) + self.people * 0.1 - self.humidity_pct) \
            * min(1.0, seconds / 900) + rng.gauss(0, 0.2)
        self.pm25_ugm3 = max(3.0, self.pm25_ugm3 + rng.gauss(0, 1.5) + (35 - self.pm25_ugm3) * 0.01)
        daylight = max(0.0, math.sin((hour - 6) / 13 * math.pi)) * 600
        lights = 350 if self.people else 0
        self.illuminance_lux = max(0.0, daylight + lights + rng.gauss(0, 10))
        self.noise_dba = (38 + 0.45 * self.people if self.people else 33) + rng.gauss(0, 1.5)

    def values(self) -> dict[str, float]:
        out = {"temperature_c": round(self.temperature_c, 1), "humidity_pct": round(self.humidity_pct, 1),
               "co2_ppm": round(self.co2_ppm), "pm25_ugm3": round(self.pm25_ugm3),
               "illuminance_lux": round(self.illuminance_lux), "noise_dba": round(self.noise_dba, 1)}
        out.update(self.overrides)
        return out


class ModbusSensorServer:
    """Serve one or more simulated units (`ClassroomAir` sensors, `ClassroomLoad` meters) over Modbus.

    Each unit serves its profile's registers (`profiles` by unit, else `profile`): holding registers
    to function 3, input registers to function 4, as the device's register map says.
    `faults` per unit: `exception` answers Modbus exception 0x04 (device
    failure); `silent` never answers, as a dead sensor on RS-485.
    """

    def __init__(self, profile: Profile | str = "env-6in1-modbus", *, units: dict[int, Model] | None = None,
                 host: str = "127.0.0.1", port: int | None = None, serial: str | None = None,
                 time_scale: float = 1.0, tick: float = 1.0, profiles: dict[int, Profile] | None = None) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.units: dict[int, Model] = units or {1: ClassroomAir()}
        self.profiles = {unit: (profiles or {}).get(unit, self.profile) for unit in self.units}
        self.host, self.port, self.serial = host, port, serial
        self.time_scale, self.tick = time_scale, tick
        self.faults: dict[int, str] = {}
        self.frozen = False
        self.requests = 0
        self.served = 0  # reads answered with values (tests count them against what the agent kept)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._cable: NullModem | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._size = max(m.register + m.register_count for p in self.profiles.values()
                         for m in p.metrics.values() if m.register is not None)

    def registers_of(self, unit: int, function: str | None = None) -> list[int]:
        """The raw registers unit `unit` serves right now (of one table, "holding" or "input", if given)."""
        regs = [0] * self._size
        values = self.units[unit].values()
        for m in self.profiles[unit].metrics.values():
            if m.register is not None and m.name in values and function in (None, m.function):
                regs[m.register:m.register + m.register_count] = modbus.encode(m, values[m.name])
        return regs

    def served_values(self, unit: int = 1) -> dict[str, float]:
        """What a correct driver decodes from this unit's registers right now."""
        regs = self.registers_of(unit)
        return {m.name: modbus.decode(m, regs[m.register:m.register + m.register_count])
                for m in self.profiles[unit].metrics.values() if m.register is not None}

    async def _action(self, unit: int, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> ExcCodes | None:
        self.requests += 1
        fault = self.faults.get(unit)
        if fault == "silent":
            await asyncio.sleep(3600)
        if fault == "exception":
            return ExcCodes.DEVICE_FAILURE
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # a read-only sensor
        regs = self.registers_of(unit, {3: "holding", 4: "input"}.get(function_code))
        for i in range(len(current_registers)):
            a = start_address + i
            current_registers[i] = regs[a] if a < len(regs) else 0
        self.served += 1
        return None

    def _devices(self) -> list[SimDevice]:
        def bind(unit: int) -> Any:
            async def action(*args: Any) -> ExcCodes | None:
                return await self._action(unit, *args)
            return action
        return [SimDevice(unit, simdata=[SimData(0, count=self._size, values=0, datatype=DataType.REGISTERS)],
                          action=bind(unit)) for unit in self.units]

    async def start(self) -> None:
        devices = self._devices()
        if self.serial:
            # RS-485 bus: the agent opens `serial` (a symlink to one end of a
            # null-modem pty pair); the pymodbus server opens the other end.
            self._cable = NullModem(self.serial)
            self._cable.open()
            self._server = ModbusSerialServer(devices, port=self._cable.device_path,
                                              baudrate=int(self.profile.serial.get("baudrate", 9600)))
        else:
            self._server = ModbusTcpServer(devices, address=(self.host, self.port or modbus.DEFAULT_PORT))
        await self._server.serve_forever(background=True)
        self._ticker = asyncio.create_task(self._run_clock())

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if not self.frozen:
                for model in self.units.values():
                    model.step(self.tick * self.time_scale)

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._server:
            await self._server.shutdown()
        if self._cable is not None:
            self._cable.close()

    async def __aenter__(self) -> ModbusSensorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _model(dev: DeviceConfig, index: int) -> Model:
    """The simulated unit of a device: a meter's load (firmware_stubs/meter.py) or a room's air."""
    if dev.profile_obj.kind == "meter":
        from firmware_stubs.meter import load_for  # meter.py stands on this module's school day

        return load_for(dev, index)
    opts = dev.simulator
    start = opts.get("start")
    kwargs: dict[str, Any] = {"seed": int(opts.get("seed", index + 1)), "class_size": int(opts.get("class_size", 40))}
    if start:
        h, m = (int(x) for x in str(start).split(":"))
        kwargs["start_minute"] = h * 60 + m
    return ClassroomAir(**kwargs)


def simulators_for(devices: list[tuple[int, DeviceConfig]]) -> list[tuple[ModbusSensorServer, dict[str, Any]]]:
    """The simulated Modbus links of a gateway config (not started): one server per TCP endpoint or
    serial port, answering for every unit on it, as a bus or a Modbus TCP gateway would.

    Returns each server with its devices' handles (device id -> (server, unit)). `simulator:` options
    per device: `seed` (default index + 1), `class_size`, `start` (HH:MM of the simulated day), for a meter
    `energy_kwh` (firmware_stubs/meter.py `load_for`); the
    first device of a link sets `time_scale` and `frozen` for the whole link.
    """
    links: dict[tuple[str, ...], list[tuple[int, DeviceConfig]]] = {}
    for index, dev in devices:
        links.setdefault(modbus.link_key(dev.address), []).append((index, dev))
    out = []
    for key, devs in links.items():
        unit_of = {dev.id: int(modbus.ADDRESS.value(dev.address, "unit")) for _, dev in devs}
        units = {unit_of[dev.id]: _model(dev, index) for index, dev in devs}
        opts = devs[0][1].simulator
        server = ModbusSensorServer(devs[0][1].profile, units=units,
                                    profiles={unit_of[dev.id]: dev.profile_obj for _, dev in devs},
                                    host=key[1] if key[0] == "tcp" else "127.0.0.1",
                                    port=int(key[2]) if key[0] == "tcp" else None,
                                    serial=key[1] if key[0] == "rtu" else None,
                                    time_scale=float(opts.get("time_scale", 1.0)))
        server.frozen = bool(opts.get("frozen", False))
        out.append((server, {dev.id: (server, unit_of[dev.id]) for _, dev in devs}))
    return out
