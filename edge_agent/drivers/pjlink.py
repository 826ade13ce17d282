"""PJLink driver: classroom projectors over JBMIA PJLink (TCP 4352), class 1 and class 2.

Most classroom projectors of every brand speak PJLink, so one driver covers
the "班班通" projector fleet: power, input, AV mute, lamp hours, filter
hours (class 2) and the six error flags of `ERST`.

Connection policy: one TCP connection per operation (one poll, or one
command including its wait for a warm-up to end), closed afterwards.
Projectors drop a connection after ~30 s without traffic, some after every
exchange, and many accept only one client at a time; a kept connection
would be dead at most poll intervals and would lock out a teacher's own
control software between polls. A fresh connection costs one handshake and
one greeting (plus one MD5 when a password is set), nothing next to a poll
interval of seconds. Within an operation the connection is reused; if the
projector closes it between two exchanges the driver reconnects once and
repeats the exchange, which is safe because every PJLink set command this
driver sends is absolute (`POWR 1`, `INPT 32`, `AVMT 31`), never a toggle.

Commands other than power wait while the projector is warming up or
cooling down (polling `POWR ?`) and are then sent, so a queue of commands
to a busy projector runs in order instead of failing with ERR3; power on
waits out a cool-down and power off a warm-up for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from campus.errors import ActionRejected, DeviceError
from campus.i18n import N_, LazyText, lazy_gettext, message_of
from edge_agent.drivers.base import DeviceUnreachable, Driver, Reading
from protocols import pjlink
from protocols.pjlink import (
    AV_MUTE,
    CLASS1_INPUT,
    CLASS2_INPUT,
    ERRORS,
    ERST_LEVELS,
    ERST_METRICS,
    MAX_LINE,
    PJLINK_PORT,
    POWER,
    auth_digest,
)

# What an ERRn answer says, per code (protocols/pjlink.py ERRORS), as a person reads it: one message each, so
# the meaning is translated with the rest of the sentence.
ERROR_MESSAGES = {
    "ERR1": N_("%(device)s: %(command)s %(param)s: ERR1 (undefined command)"),
    "ERR2": N_("%(device)s: %(command)s %(param)s: ERR2 (parameter out of range)"),
    "ERR3": N_("%(device)s: %(command)s %(param)s: ERR3 (unavailable at this time)"),
    "ERR4": N_("%(device)s: %(command)s %(param)s: ERR4 (projector failure)"),
}


class PJLinkError(DeviceError):
    """The projector answered a command with ERR1-ERR4."""

    def __init__(self, message: str | LazyText, code: str, command: str = "", param: str = "") -> None:
        super().__init__(message)
        self.code, self.command, self.param = code, command, param


class _Closed(DeviceError):
    """The projector closed the connection (idle timeout, or one exchange per connection)."""


class _Connection:
    """One authenticated PJLink TCP connection: greeting, auth prefix, line exchange."""

    def __init__(self, name: str, host: str, port: int, password: str | None, timeout: float) -> None:
        self.name, self.host, self.port, self.password, self.timeout = name, host, port, password, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.prefix = ""      # auth digest, sent in front of the first command only
        self.exchanges = 0

    async def open(self) -> None:
        address, seconds = f"{self.host}:{self.port}", f"{self.timeout:g}"
        try:
            async with asyncio.timeout(self.timeout):
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1024)
        except TimeoutError:
            raise DeviceUnreachable(lazy_gettext("%(device)s: no TCP connection to %(address)s within %(seconds)ss",
                                                 device=self.name, address=address, seconds=seconds)) from None
        except OSError as exc:
            raise DeviceUnreachable(lazy_gettext("%(device)s: cannot connect to PJLink %(address)s (%(error)s)",
                                                 device=self.name, address=address,
                                                 error=str(exc.strerror or exc))) from None
        greeting = await self._line(lazy_gettext("greeting"))
        if greeting == "PJLINK 0":
            return
        if greeting.startswith("PJLINK 1 ") and 0 < len(greeting[9:]) <= 32:
            if not self.password:
                raise DeviceError(lazy_gettext("%(device)s: the projector requires a PJLink password; "
                                               "set address.password", device=self.name))
            self.prefix = auth_digest(greeting[9:], self.password)
            return
        if greeting.upper() == "PJLINK ERRA":
            raise DeviceError(lazy_gettext("%(device)s: PJLink authentication failed", device=self.name))
        if greeting.upper().startswith("PJLINK ERR"):
            raise DeviceError(lazy_gettext("%(device)s: projector refused the connection (%(greeting)s)",
                                           device=self.name, greeting=greeting[:40]))
        raise DeviceError(lazy_gettext("%(device)s: not a PJLink greeting: %(greeting)s", device=self.name,
                                       greeting=repr(greeting[:40])))

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _line(self, what: LazyText) -> str:
        """One CR-terminated line; `what` names it in an error (marked: "greeting", "reply to POWR")."""
        assert self.reader is not None
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self.reader.readuntil(b"\r")
        except TimeoutError:
            seconds = f"{self.timeout:g}"
            raise DeviceError(lazy_gettext("%(device)s: no %(what)s within %(seconds)ss", device=self.name,
                                           what=what, seconds=seconds)) from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise DeviceError(lazy_gettext("%(device)s: %(what)s cut off after %(n)s bytes (no CR terminator)",
                                               device=self.name, what=what, n=len(exc.partial))) from None
            raise _Closed(lazy_gettext("%(device)s: the projector closed the connection before the %(what)s",
                                       device=self.name, what=what)) from None
        except asyncio.LimitOverrunError:
            raise DeviceError(lazy_gettext("%(device)s: overlong %(what)s: no CR terminator within 1024 bytes "
                                           "(PJLink allows %(max)s)", device=self.name, what=what, max=MAX_LINE)) from None
        except ConnectionError:
            raise _Closed(lazy_gettext("%(device)s: connection reset while waiting for the %(what)s",
                                       device=self.name, what=what)) from None
        raw = raw.lstrip(b"\n")  # tolerate CR LF from the previous line
        if len(raw) > MAX_LINE:
            raise DeviceError(lazy_gettext("%(device)s: overlong %(what)s: %(n)s bytes, PJLink allows %(max)s",
                                           device=self.name, what=what, n=len(raw), max=MAX_LINE))
        try:
            text = raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise DeviceError(lazy_gettext("%(device)s: garbage %(what)s: %(raw)s is not text", device=self.name,
                                           what=what, raw=repr(raw[:40]))) from None
        if not text.isprintable():
            raise DeviceError(lazy_gettext("%(device)s: garbage %(what)s: control characters in %(text)s",
                                           device=self.name, what=what, text=repr(text[:40])))
        return text

    async def exchange(self, cls: str, cmd: str, param: str) -> str:
        """Send `%<cls><cmd> <param>` and return the reply's parameter; ERRn raises PJLinkError."""
        assert self.writer is not None
        line = f"%{cls}{cmd} {param}\r"
        try:
            self.writer.write((self.prefix + line).encode("utf-8"))
            await self.writer.drain()
        except ConnectionError:
            raise _Closed(lazy_gettext("%(device)s: connection lost sending %(command)s", device=self.name,
                                       command=cmd)) from None
        authenticating, self.prefix = bool(self.prefix), ""
        reply = await self._line(lazy_gettext("reply to %(command)s", command=cmd))
        if reply.upper() == "PJLINK ERRA" or (authenticating and reply.upper().endswith("=ERRA")):
            raise DeviceError(lazy_gettext("%(device)s: PJLink authentication failed (wrong password)",
                                           device=self.name))
        if len(reply) < 7 or reply[0] != "%" or reply[1] not in "12" or reply[6] != "=":
            raise DeviceError(lazy_gettext("%(device)s: malformed reply to %(command)s: %(reply)s", device=self.name,
                                           command=cmd, reply=repr(reply[:40])))
        if reply[2:6].upper() != cmd:
            raise DeviceError(lazy_gettext("%(device)s: reply to %(command)s is for %(other)s", device=self.name,
                                           command=cmd, other=repr(reply[2:6])))
        self.exchanges += 1
        value = reply[7:]
        if value.upper() in ERRORS:
            code = value.upper()
            raise PJLinkError(lazy_gettext(ERROR_MESSAGES[code], device=self.name, command=cmd, param=param)
                              if code in ERROR_MESSAGES else f"{self.name}: {cmd} {param}: {code} ({ERRORS[code]})",
                              code, cmd, param)
        return value


class PJLinkDriver(Driver):
    protocol = pjlink.NAME

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_address(self.address)
        self.host = str(self.address["host"])
        self.port = int(self.address.get("port", PJLINK_PORT))
        self.password: str | None = self.address.get("password")
        self.timeout = float(self.options.get("timeout", 3.0))  # the spec gives projectors 2 s to answer
        self.busy_poll_s = float(self.options.get("busy_poll_s", 0.5))
        timings = self.profile.timings
        longest = max(float(timings.get("warmup_s", 60)), float(timings.get("cooldown_s", 90)))
        self.busy_max_s = float(self.options.get("busy_max_s", max(60.0, 3 * longest)))
        self.pjlink_class: int | None = None   # learnt from CLSS on the first operation
        self._codes = {str(code).upper(): name for name, code in self.profile.inputs.items()}
        self._unsupported: set[str] = set()    # queries answered ERR1: not asked again
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        async with self._lock:
            try:
                await self._reconnect()
                if self.pjlink_class is None:
                    self.pjlink_class = await self._detect_class()
                yield
            finally:
                await self.close()

    async def _reconnect(self) -> None:
        await self.close()
        conn = _Connection(self.device_id, self.host, self.port, self.password, self.timeout)
        self._conn = conn
        await conn.open()

    async def _call(self, cls: str, cmd: str, param: str = "?") -> str:
        assert self._conn is not None
        try:
            return await self._conn.exchange(cls, cmd, param)
        except _Closed:
            if self._conn.exchanges == 0:
                raise
            self.count("reconnects")  # the projector dropped a used connection: once more on a new one
            await self._reconnect()
            return await self._conn.exchange(cls, cmd, param)

    async def _detect_class(self) -> int:
        try:
            value = await self._call("1", "CLSS")
        except PJLinkError:
            return 1
        if not (value.isascii() and value.isdigit()):
            raise DeviceError(lazy_gettext("%(device)s: CLSS reply %(reply)s is not a class number",
                                           device=self.device_id, reply=repr(value[:40])))
        return 2 if int(value) >= 2 else 1

    async def _power(self) -> str:
        value = await self._call("1", "POWR")
        if value not in POWER:
            raise DeviceError(lazy_gettext("%(device)s: POWR reply %(reply)s is not 0-3", device=self.device_id,
                                           reply=repr(value[:40])))
        return POWER[value]

    async def _optional(self, cls: str, cmd: str) -> str | None:
        """A query some projectors or states do not answer: ERRn leaves the metric out."""
        if cmd in self._unsupported:
            return None
        try:
            return await self._call(cls, cmd)
        except PJLinkError as exc:
            if exc.code == "ERR1":
                self._unsupported.add(cmd)
            if exc.code != "ERR3":  # ERR3 is the normal answer in standby: not worth counting
                self.count(f"{cmd.lower()}_{exc.code.lower()}")
            return None

    # ------------------------------------------------------------------ read

    async def read(self) -> Reading:
        wanted = self.profile.metrics
        values: dict[str, Any] = {}
        async with self._session():
            values["power"] = await self._power()
            cls2 = "2" if self.pjlink_class == 2 else "1"
            if "input" in wanted and (code := await self._optional(cls2, "INPT")) is not None:
                values["input"] = self._codes.get(code.upper(), code)
            if "muted" in wanted and (mute := await self._optional("1", "AVMT")) is not None:
                if mute not in AV_MUTE:
                    raise DeviceError(lazy_gettext("%(device)s: AVMT reply %(reply)s is not one of %(allowed)s",
                                                   device=self.device_id, reply=repr(mute[:40]),
                                                   allowed=", ".join(sorted(AV_MUTE))))
                values["muted"] = "on" if mute[1] == "1" else "off"
            if "lamp_hours" in wanted and (lamp := await self._optional("1", "LAMP")) is not None:
                values["lamp_hours"] = self._lamp_hours(lamp)
            if any(m in wanted for m in ERST_METRICS) and (erst := await self._optional("1", "ERST")) is not None:
                if len(erst) != 6 or any(c not in ERST_LEVELS for c in erst):
                    raise DeviceError(lazy_gettext("%(device)s: ERST reply %(reply)s is not six digits 0-2",
                                                   device=self.device_id, reply=repr(erst[:40])))
                values.update(zip(ERST_METRICS, (ERST_LEVELS[c] for c in erst), strict=True))
            if self.pjlink_class == 2 and "filter_hours" in wanted \
                    and (filt := await self._optional("2", "FILT")) is not None:
                if not (filt.isascii() and filt.isdigit()):
                    raise DeviceError(lazy_gettext("%(device)s: FILT reply %(reply)s is not a number of hours",
                                                   device=self.device_id, reply=repr(filt[:40])))
                values["filter_hours"] = int(filt)
        return Reading(values={k: v for k, v in values.items() if k in wanted or k == "power"})

    def _lamp_hours(self, lamp: str) -> int:
        parts = lamp.split()
        if not parts or len(parts) % 2 or not all(p.isascii() and p.isdigit() for p in parts) or parts[1] not in "01":
            raise DeviceError(lazy_gettext("%(device)s: LAMP reply %(reply)s is not '<hours> <0|1>' pairs",
                                           device=self.device_id, reply=repr(lamp[:40])))
        return int(parts[0])

    # --------------------------------------------------------------- execute

    async def _execute(self, action: str, params: dict[str, Any]) -> str | LazyText:
        async with self._session():
            if action == "power_on":
                state = await self._settle({"cooling"})
                await self._set("1", "POWR", "1", state)
                return lazy_gettext("already on") if state == "on" else lazy_gettext("power on accepted (warming up)")
            if action == "power_off":
                state = await self._settle({"warming"})
                await self._set("1", "POWR", "0", state)
                return lazy_gettext("already off") if state == "off" \
                    else lazy_gettext("power off accepted (cooling down)")
            if action == "select_input":
                name = params["input"]
                code = str(self.profile.inputs[name]).upper()
                if CLASS1_INPUT.fullmatch(code):
                    cls = "2" if self.pjlink_class == 2 else "1"
                elif CLASS2_INPUT.fullmatch(code) and self.pjlink_class == 2:
                    cls = "2"
                else:
                    raise ActionRejected(lazy_gettext(
                        "input %(name)s has code %(code)s, which this PJLink class %(pjlink_class)s projector "
                        "cannot select", name=repr(name), code=repr(code), pjlink_class=str(self.pjlink_class)))
                state = await self._settle({"warming", "cooling"})
                await self._set(cls, "INPT", code, state)
                return lazy_gettext("input %(name)s (%(code)s) selected", name=name, code=code)
            if action in ("mute", "unmute"):
                state = await self._settle({"warming", "cooling"})
                await self._set("1", "AVMT", "31" if action == "mute" else "30", state)
                return lazy_gettext("picture and sound muted") if action == "mute" \
                    else lazy_gettext("picture and sound unmuted")
        raise ActionRejected(lazy_gettext("%(action)s is not a projector action", action=repr(action)))

    async def _settle(self, busy: set[str]) -> str:
        """Wait while the power state is one of `busy` (a warm-up or cool-down); return the state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_max_s
        while True:
            state = await self._power()
            if state not in busy:
                return state
            if loop.time() >= deadline:
                seconds = f"{self.busy_max_s:g}"
                raise DeviceError(
                    lazy_gettext("%(device)s: projector still warming after %(seconds)ss",
                                 device=self.device_id, seconds=seconds) if state == "warming" else
                    lazy_gettext("%(device)s: projector still cooling after %(seconds)ss",
                                 device=self.device_id, seconds=seconds))
            self.count("busy_waits")
            await asyncio.sleep(self.busy_poll_s)

    async def _set(self, cls: str, cmd: str, param: str, state: str) -> None:
        try:
            value = await self._call(cls, cmd, param)
        except PJLinkError as exc:
            if exc.code in ("ERR1", "ERR2"):
                raise ActionRejected(message_of(exc)) from None
            if exc.code == "ERR3" and state == "off":
                raise DeviceError(lazy_gettext(
                    "%(device)s: %(command)s %(param)s: ERR3 (unavailable at this time) - the projector is in "
                    "standby; power it on first", device=self.device_id, command=cmd, param=param)) from None
            raise
        if value.upper() != "OK":
            raise DeviceError(lazy_gettext("%(device)s: %(command)s %(param)s: expected OK, got %(reply)s",
                                           device=self.device_id, command=cmd, param=param, reply=repr(value[:40])))
