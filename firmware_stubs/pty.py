"""The device end of a pseudo-terminal: how serial simulators stand in for hardware.

`SerialDeviceSim` is what every request/response serial simulator shares on top of it.

`PtyPort` opens a pty pair, keeps the slave open (so the master never sees
EIO while no client is attached), optionally symlinks the slave's path to a
stable name (`/tmp/room101/ttyCARD`) that a gateway config can name, and
gives the simulator async byte I/O on the master. The agent opens the path
with pyserial, exactly as it opens `/dev/ttyUSB0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tty
from pathlib import Path
from typing import Any, Self

from protocols.serial_line import BadFrame


class PtyPort:
    def __init__(self, link: str | Path | None = None) -> None:
        self.link = Path(link) if link else None
        self.master = -1
        self.slave = -1
        self.path = ""
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffer = bytearray()

    def open(self) -> str:
        """Create the pty; returns the path a client opens."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)
        asyncio.get_running_loop().add_reader(self.master, self._on_readable)
        return str(self.link or self.path)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # no client attached right now
        if data:
            self._queue.put_nowait(data)

    async def read(self) -> bytes:
        """The next chunk a client wrote (any size)."""
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        return await self._queue.get()

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer.extend(await self._queue.get())
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_until(self, separator: bytes) -> bytes:
        while separator not in self._buffer:
            self._buffer.extend(await self._queue.get())
        end = self._buffer.index(separator) + len(separator)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue  # the pty buffer is full: frames here are small, the client drains it
            view = view[n:]

    def close(self) -> None:
        if self.master >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master)
            for fd in (self.master, self.slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.master = self.slave = -1
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()


class NullModem:
    """Two ptys joined like a null-modem cable, for simulators that open a port by path.

    pymodbus' serial server opens a serial port by name, as the agent does; a
    single pty cannot serve both (one end is a bare fd). The bridge copies
    bytes between the two masters, so the simulator opens `device_path` and
    the agent opens `link` (or `host_path`), each with pyserial.
    """

    def __init__(self, link: str | Path | None = None) -> None:
        self.device_side = PtyPort()
        self.host_side = PtyPort(link)
        self.device_path = ""
        self.host_path = ""
        self._tasks: list[asyncio.Task[None]] = []

    def open(self) -> str:
        self.device_path = self.device_side.open()
        self.host_path = self.host_side.open()
        self._tasks = [asyncio.create_task(self._pump(self.device_side, self.host_side)),
                       asyncio.create_task(self._pump(self.host_side, self.device_side))]
        return self.host_path

    @staticmethod
    async def _pump(src: PtyPort, dst: PtyPort) -> None:
        while True:
            dst.write(await src.read())

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.device_side.close()
        self.host_side.close()


class SerialDeviceSim:
    """A simulated serial device on a pty: the serving task, the misbehaviour switches and counters.

    Subclasses (the displays, the DL/T 645 meter) give the protocol: `_split` (the protocol's pure
    frame splitter), `_handle` (a frame in, the reply or None out) and `_corrupt` (a reply damaged as
    a noisy line damages it). Switches: `corrupt_checksum`, `noise` (random bytes before the reply),
    `truncate` (half a reply), `silent` (no reply); True stays on until set back to False, a number n
    affects only the next n replies. Counters: `frames_received` (well-formed frames, whoever they
    were for), `bad_frames` (bytes it could not parse), `replies_sent`.
    """

    def __init__(self, link: str | Path | None, *, seed: int) -> None:
        self.port = PtyPort(link)
        self.path = ""
        self.rng = random.Random(seed)
        self.corrupt_checksum: bool | int = False
        self.noise: bool | int = False
        self.truncate: bool | int = False
        self.silent: bool | int = False
        self.frames_received = 0
        self.bad_frames = 0
        self.replies_sent = 0
        self._buffer = b""
        self._task: asyncio.Task[None] | None = None

    # -- life cycle

    async def start(self) -> None:
        """Open the pty; afterwards `path` is what a driver opens."""
        if self._task is None:
            self.path = self.port.open()
            self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.port.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- serving

    async def _serve(self) -> None:
        while True:
            chunk = await self.port.read()
            items, self._buffer = self._split(self._buffer + chunk)
            for item in items:
                if isinstance(item, BadFrame):
                    self.bad_frames += 1
                    continue
                self.frames_received += 1
                reply = self._handle(item)
                if reply is not None:
                    self._send(reply)

    def _take(self, switch: str) -> bool:
        """Is a misbehaviour switch on for this reply? (Counts down numeric switches.)"""
        value = getattr(self, switch)
        if value is True:
            return True
        if isinstance(value, int) and value > 0:
            setattr(self, switch, value - 1)
            return True
        return False

    def _send(self, reply: bytes) -> None:
        if self._take("silent"):
            return
        if self._take("corrupt_checksum"):
            reply = self._corrupt(reply)
        if self._take("truncate"):
            reply = reply[:max(1, len(reply) // 2)]
        if self._take("noise"):
            reply = self.rng.randbytes(self.rng.randint(3, 12)) + reply
        self.port.write(reply)
        self.replies_sent += 1

    def _split(self, buf: bytes) -> tuple[list[Any], bytes]:
        raise NotImplementedError

    def _handle(self, frame: Any) -> bytes | None:
        raise NotImplementedError

    def _corrupt(self, reply: bytes) -> bytes:
        raise NotImplementedError
