"""Modbus driver: environment sensors over Modbus TCP or Modbus RTU (RS-485).

The same profile works over both transports. Several sensors on one RS-485
bus (or behind one Modbus TCP gateway) share one client, and requests on it
are serialised by a lock, because a bus carries one transaction at a time.
Each poll reads the profile's registers in as few contiguous requests as
possible. A Modbus exception or a timeout fails this device's poll only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from campus.errors import DeviceError
from campus.i18n import lazy_gettext
from edge_agent.drivers.base import DeviceUnreachable, Driver, Reading
from protocols import modbus


@dataclass
class _Bus:
    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


# One client per TCP endpoint or serial port, shared by the drivers on it.
_buses: dict[tuple[str, ...], _Bus] = {}


class ModbusDriver(Driver):
    protocol = modbus.NAME

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_address(self.address)
        self.unit = int(modbus.ADDRESS.value(self.address, "unit"))
        self.timeout = float(self.options.get("timeout", 1.0))
        self.blocks = modbus.read_plan([m for m in self.profile.metrics.values() if m.register is not None])
        self._key: tuple[str, ...] | None = None

    def _bus_key(self) -> tuple[str, ...]:
        return modbus.link_key(self.address)

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if "host" in self.address:
            return AsyncModbusTcpClient(self.address["host"], port=int(modbus.ADDRESS.value(self.address, "port")),
                                        timeout=self.timeout, retries=0, reconnect_delay=0)
        serial = {**self.profile.serial, **{k: v for k, v in self.address.items()
                                            if k in ("baudrate", "bytesize", "parity", "stopbits")}}
        return AsyncModbusSerialClient(self.address["serial"], timeout=self.timeout, retries=0,
                                       reconnect_delay=0, **serial)

    async def open(self) -> None:
        if self._key is None:
            self._key = self._bus_key()
            bus = _buses.get(self._key)
            if bus is None:
                bus = _buses[self._key] = _Bus(self._new_client())
            bus.users += 1
        bus = _buses[self._key]
        if not bus.client.connected:
            async with bus.lock:
                if not bus.client.connected and not await bus.client.connect():
                    raise DeviceUnreachable(lazy_gettext("%(device)s: cannot connect to Modbus %(address)s",
                                                         device=self.device_id, address="/".join(self._key[1:])))

    async def close(self) -> None:
        if self._key is None:
            return
        bus = _buses.get(self._key)
        self._key = None
        if bus is not None:
            bus.users -= 1
            if bus.users <= 0:
                bus.client.close()
                del _buses[self._bus_key()]

    async def read(self) -> Reading:
        await self.open()
        assert self._key is not None
        bus = _buses[self._key]
        values: dict[str, float] = {}
        async with bus.lock:
            for function, start, count, metrics in self.blocks:
                read = bus.client.read_input_registers if function == "input" else bus.client.read_holding_registers
                try:
                    result = await read(start, count=count, device_id=self.unit)
                except ModbusException as exc:
                    # A timeout leaves the transaction state unknown: drop the
                    # connection so the next poll starts clean.
                    bus.client.close()
                    raise DeviceError(lazy_gettext("%(device)s: no valid answer from unit %(unit)s (%(error)s)",
                                                   device=self.device_id, unit=self.unit, error=str(exc))) from None
                if result.isError():
                    code = getattr(result, "exception_code", 0)
                    raise DeviceError(lazy_gettext("%(device)s: Modbus exception %(code)s (%(meaning)s) reading "
                                                   "%(start)s+%(count)s", device=self.device_id, code=code,
                                                   meaning=modbus.exception_meaning(code), start=start, count=count))
                regs = list(result.registers)
                if len(regs) < count:
                    raise DeviceError(lazy_gettext("%(device)s: short answer, %(n)s of %(count)s registers",
                                                   device=self.device_id, n=len(regs), count=count))
                for m in metrics:
                    assert m.register is not None
                    off = m.register - start
                    values[m.name] = modbus.decode(m, regs[off:off + m.register_count])
        return Reading(values=values)
