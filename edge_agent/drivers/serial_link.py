"""An asyncio serial port for the drivers that talk RS-232/RS-485.

Opened by path with pyserial (through pyserial-asyncio-fast), exactly as
`/dev/ttyUSB0` would be; tests open the slave end of a pseudo-terminal
whose master a simulator drives. One place for timeouts and the clear
error when a port is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import serial
import serial_asyncio_fast

from campus.i18n import lazy_gettext
from edge_agent.drivers.base import DeviceUnreachable

SERIAL_KEYS = ("baudrate", "bytesize", "parity", "stopbits")


def serial_settings(profile_serial: dict[str, Any], address: dict[str, Any]) -> dict[str, Any]:
    """Line settings: the profile's defaults, overridden by the device's address."""
    settings = {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}
    settings.update({k: v for k, v in profile_serial.items() if k in SERIAL_KEYS})
    settings.update({k: v for k, v in address.items() if k in SERIAL_KEYS})
    return settings


class SerialLink:
    def __init__(self, port: str, **settings: Any) -> None:
        self.port = port
        self.settings = settings
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def open(self) -> None:
        if self.is_open:
            return
        try:
            self.reader, self.writer = await serial_asyncio_fast.open_serial_connection(url=self.port, **self.settings)
        except (serial.SerialException, OSError) as exc:
            raise DeviceUnreachable(lazy_gettext("cannot open serial port %(port)s: %(error)s", port=self.port,
                                                 error=str(exc))) from None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def write(self, data: bytes) -> None:
        await self.open()
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    def discard_input(self) -> bytes:
        """Drop bytes already received (stale replies, line noise); returns them."""
        if self.reader is None:
            return b""
        buf = bytes(self.reader._buffer)  # StreamReader offers no public "drain what is buffered"
        self.reader._buffer.clear()
        return buf

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        await self.open()
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            return await self.reader.readexactly(n)

    async def read_until(self, separator: bytes, timeout: float) -> bytes:
        await self.open()
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            return await self.reader.readuntil(separator)

    async def read_some(self, timeout: float, limit: int = 4096) -> bytes:
        """Whatever arrives within `timeout` (b"" if nothing)."""
        await self.open()
        assert self.reader is not None
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(limit)
        except TimeoutError:
            return b""
