"""A classroom's electricity: a load model, and a DL/T 645-2007 meter serving it on a pty.

`ClassroomLoad` models what one room draws over a school day: lights, the projector and the
podium PC during periods, an air conditioner in some of them, standby at night, and now and then
equipment left on after the last period. Its energy counter grows with the load (the meter's
kWh register, which only a reset or a replacement takes down: `replace`). It is deterministic for
a seed and a sequence of steps. Both meter simulators serve it: `DLT645Meter` here (RS-485, the
national standard protocol), and the Modbus power meter through firmware_stubs/environment.py's
Modbus server (a profile of kind `meter`).

`DLT645Meter` is protocol-true (protocols/dlt645.py): it answers a read (11H) addressed to its own
address with 91H and the value, an identifier it does not have with an error reply (D1H, "no such
data"), a read-address broadcast (13H to AA..AA) with its address, and ignores frames for other
meters and other meters' replies, as a meter on a shared line does. Replies carry the FE wake-up
preamble. The switches of `SerialDeviceSim` (firmware_stubs/pty.py) make it misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from campus.errors import ConfigError
from firmware_stubs.environment import PERIODS  # the school day the air model follows too
from firmware_stubs.pty import SerialDeviceSim
from protocols import dlt645

if TYPE_CHECKING:
    from device_profiles.config import DeviceConfig

LIGHTS_W = 12 * 36.0       # twelve 36 W tubes
PROJECTOR_W = 260.0
PODIUM_PC_W = 120.0
AIR_CONDITIONER_W = 1500.0
STANDBY_W = 18.0           # projector, PC and display in standby
POWER_FACTOR = 0.92


@dataclass
class ClassroomLoad:
    seed: int = 1
    start_minute: float = 8 * 60 - 10  # the simulated clock starts 07:50
    energy_kwh: float = 1000.0         # the meter's register when the simulation starts
    hot: float = 0.4                   # the share of periods with the air conditioner on
    forgetful: float = 0.3             # the chance the projector and lights stay on after the last period
    rng: random.Random = field(init=False)
    minute: float = field(init=False)
    power_w: float = field(init=False, default=0.0)
    voltage_v: float = field(init=False, default=220.0)
    current_a: float = field(init=False, default=0.0)
    overrides: dict[str, float] = field(default_factory=dict)  # values a test or an operator pinned
    _day: int = field(init=False, default=-1)
    _left_on: bool = field(init=False, default=False)
    _cooling: dict[int, bool] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.minute = self.start_minute
        self.step(0)

    def period(self) -> int | None:
        m = self.minute % (24 * 60)
        return next((i for i, (a, b) in enumerate(PERIODS) if a <= m < b), None)

    def _target_w(self) -> float:
        day = int(self.minute // (24 * 60))
        if day != self._day:  # a new day: who forgets to switch off, which periods are hot
            self._day = day
            self._left_on = self.rng.random() < self.forgetful
            self._cooling = {i: self.rng.random() < self.hot for i in range(len(PERIODS))}
        m = self.minute % (24 * 60)
        p = self.period()
        if p is not None:
            return LIGHTS_W + PROJECTOR_W + PODIUM_PC_W + (AIR_CONDITIONER_W if self._cooling[p] else 0.0)
        if PERIODS[0][0] - 10 <= m < PERIODS[-1][1]:  # breaks: lights on, the projector idles
            return LIGHTS_W + PROJECTOR_W * 0.3 + PODIUM_PC_W
        if PERIODS[-1][1] <= m < 22 * 60 and self._left_on:  # forgotten until the caretaker's round
            return LIGHTS_W + PROJECTOR_W + PODIUM_PC_W
        return STANDBY_W

    def step(self, seconds: float) -> None:
        """Advance the simulated clock by `seconds`: the power drawn meanwhile adds to the energy."""
        self.minute += seconds / 60
        target = self._target_w()
        self.power_w = max(0.0, target * (1 + self.rng.gauss(0, 0.02))) if target > STANDBY_W else target
        self.voltage_v = 220.0 + self.rng.gauss(0, 1.5)
        self.current_a = self.power_w / (self.voltage_v * POWER_FACTOR)
        self.energy_kwh += self.power_w * seconds / 3.6e6

    def replace(self, energy_kwh: float = 0.0) -> None:
        """A new meter (or a cleared register): the counter starts again from `energy_kwh`."""
        self.energy_kwh = energy_kwh

    def values(self) -> dict[str, float]:
        """What the meter shows: energy truncated to its 0.01 kWh register (so it never steps back)."""
        out = {"energy_kwh": math.floor(self.energy_kwh * 100) / 100, "power_w": round(self.power_w, 1),
               "voltage_v": round(self.voltage_v, 1), "current_a": round(self.current_a, 3)}
        out.update(self.overrides)
        return out


class DLT645Meter(SerialDeviceSim):
    """A DL/T 645-2007 meter at `address` on the device end of a pty, its values from `load`.

    `time_scale` simulated seconds pass per real second (the demo's day goes faster); `frozen`
    stops the clock (tests compare exact values). Counters beyond the base's: `reads` (data reads
    answered with a value), `errors_sent` (error replies).
    """

    def __init__(self, link: str | Path | None = None, *, address: str = "000000000001",
                 load: ClassroomLoad | None = None, seed: int = 1, time_scale: float = 1.0,
                 tick: float = 1.0) -> None:
        super().__init__(link, seed=seed)
        dlt645.address_bytes(address)  # a ValueError now, not a silent meter later
        self.address = address
        self.load = load or ClassroomLoad(seed=seed)
        self.time_scale, self.tick = time_scale, tick
        self.frozen = False
        self.reads = 0
        self.errors_sent = 0
        self._clock: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        if self._clock is None:
            self._clock = asyncio.create_task(self._run_clock())

    async def stop(self) -> None:
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
        await super().stop()

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if not self.frozen:
                self.load.step(self.tick * self.time_scale)

    def _split(self, buf: bytes) -> tuple[list[Any], bytes]:
        return dlt645.split_frames(buf)

    def _corrupt(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes((reply[-2] ^ 0x5A, reply[-1]))

    def _handle(self, frame: dlt645.Frame) -> bytes | None:
        if frame.is_reply:
            return None  # another meter's reply on the shared line
        if frame.function == dlt645.READ_ADDRESS and frame.address in (dlt645.BROADCAST, self.address):
            return dlt645.address_reply(self.address)
        if frame.address != self.address:
            return None  # for another meter (or a broadcast this meter does not answer)
        if frame.function != dlt645.READ_DATA:
            self.errors_sent += 1
            return dlt645.error_reply(self.address, frame.function, dlt645.ERR_OTHER)
        item = dlt645.BY_DI.get(int.from_bytes(frame.data[:4], "little")) if len(frame.data) >= 4 else None
        if item is None:
            self.errors_sent += 1
            return dlt645.error_reply(self.address, dlt645.READ_DATA, dlt645.ERR_NO_DATA)
        value = self.load.values()[item.metric]
        self.reads += 1
        return dlt645.read_reply(self.address, item, max(-item.largest, min(item.largest, value)))


def start_minute(dev: DeviceConfig) -> float | None:
    """The `simulator: start` (HH:MM of the simulated day) of a device, in minutes; None if not set."""
    start = dev.simulator.get("start")
    if not start:
        return None
    try:
        h, m = (int(x) for x in str(start).split(":"))
    except ValueError:
        raise ConfigError(f"device {dev.id}: simulator start must be HH:MM, got {start!r}") from None
    return h * 60 + m


def load_for(dev: DeviceConfig, index: int) -> ClassroomLoad:
    """The load model of a meter device of a gateway config; `simulator:` options `seed` (default
    index + 1), `start` (HH:MM), `energy_kwh` (the register at start, default a few thousand)."""
    opts = dev.simulator
    seed = int(opts.get("seed", index + 1))
    kwargs: dict[str, Any] = {"seed": seed, "energy_kwh": float(opts.get("energy_kwh", 2000 + 173.31 * seed))}
    minute = start_minute(dev)
    if minute is not None:
        kwargs["start_minute"] = minute
    return ClassroomLoad(**kwargs)


def simulator_for(dev: DeviceConfig, index: int) -> DLT645Meter:
    """A configured, not started, DL/T 645 meter for one device of a gateway config: its pty symlinked at
    `address.serial`, answering at `address.meter_address`. `simulator:` options: those of `load_for`,
    `time_scale`, `frozen`, and the switches `silent`, `noise`, `corrupt_checksum`, `truncate`."""
    meter = DLT645Meter(dev.address["serial"], address=str(dev.address[dlt645.ADDRESS_FIELD]),
                        load=load_for(dev, index), seed=int(dev.simulator.get("seed", index + 1)),
                        time_scale=float(dev.simulator.get("time_scale", 1.0)))
    meter.frozen = bool(dev.simulator.get("frozen", False))
    for switch in ("silent", "noise", "corrupt_checksum", "truncate"):
        if switch in dev.simulator:
            setattr(meter, switch, dev.simulator[switch])
    return meter
