"""What the serial request/response drivers share: one request/response loop.

The RS-232 display drivers (Samsung MDC, LG) and the DL/T 645 meter driver on RS-485 stand on it.

Both display protocols are half-duplex request/response over a serial line
that can carry line noise, a reply cut short, a corrupted byte or a reply
from the wrong display. This module holds what the two drivers have in
common so that it exists once: the serial link's life cycle, and
`transact`, which

- drops stale bytes and writes the request,
- feeds whatever arrives to the protocol's pure frame splitter, which
  resyncs on the next frame and reports every bad frame it skipped,
- counts each bad frame (`bad_frames`) and, when the line went quiet after
  one, sends the request again (every request the drivers send is a query
  or sets an absolute value, so repeating it is safe),
- and turns silence into a `DeviceError` after the reply timeout, without
  retrying (a display that says nothing will not say more when asked twice).

A port that cannot be opened, or that disappears, is `DeviceUnreachable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import serial

from campus.errors import DeviceError
from campus.i18n import LazyText, lazy_gettext, message_of
from device_profiles import Profile
from edge_agent.drivers.base import DeviceUnreachable, Driver
from edge_agent.drivers.serial_link import SerialLink, serial_settings
from protocols.serial_line import BadFrame, Scanner

log = logging.getLogger(__name__)

T = TypeVar("T")


class SerialDisplayDriver(Driver):
    """Base of the serial display drivers: address, link, and `transact`.

    Subclasses name their address id field (`display_id`, `set_id`) and its
    default, and the id that addresses every display on the line (the
    address itself is checked by the protocol's schema, protocols/).
    Options (else the profile's `timings`, else the default): `timeout`
    (`reply_timeout`, 1 s), `power_timeout` (for power on/off, which some
    sets acknowledge only when done), `frame_gap` (0.1 s of quiet that ends
    a partial frame), `retries` (2 repeats after bad frames).
    """

    id_field: ClassVar[str]
    default_id: ClassVar[int]
    broadcast_id: ClassVar[int]
    device_word: ClassVar[str] = "display"  # what the device is, as the no-reply message says it: display or meter

    def __init__(self, device_id: str, profile: Profile, address: dict[str, Any],
                 options: dict[str, Any] | None = None) -> None:
        super().__init__(device_id, profile, address, options)
        self.check_address(self.address)
        self.unit_id = int(self.address.get(self.id_field, self.default_id))
        timings = self.profile.timings
        self.timeout = float(self.options.get("timeout", timings.get("reply_timeout", 1.0)))
        self.power_timeout = max(self.timeout, float(self.options.get("power_timeout",
                                                                      timings.get("power_timeout", 0.0))))
        self.frame_gap = float(self.options.get("frame_gap", timings.get("frame_gap", 0.1)))
        self.retries = max(0, int(self.options.get("retries", 2)))
        self.link: SerialLink | None = None
        self._lock = asyncio.Lock()

    def accepts_id(self, ident: int) -> bool:
        """Is a reply from display `ident` one for us? (Any, when we address every display.)"""
        return self.unit_id == self.broadcast_id or ident == self.unit_id

    async def open(self) -> None:
        if self.link is None:
            self.link = SerialLink(self.address["serial"], **serial_settings(self.profile.serial, self.address))
        try:
            await self.link.open()
        except DeviceUnreachable as exc:
            self.link = None
            raise DeviceUnreachable(lazy_gettext("%(device)s: %(error)s", device=self.device_id,
                                                 error=message_of(exc))) from None

    async def close(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await link.close()

    def _bad(self, frame: BadFrame, reasons: list[str | LazyText]) -> None:
        self.count("bad_frames")
        reasons.append(frame.reason)
        log.debug("%s: bad frame (%s): %s", self.device_id, frame.reason, frame.raw[:64].hex(" "))

    async def _gone(self, exc: object) -> DeviceUnreachable:
        port = self.address["serial"]
        await self.close()
        return DeviceUnreachable(lazy_gettext("%(device)s: serial port %(port)s failed: %(error)s",
                                              device=self.device_id, port=str(port), error=str(exc)))

    async def transact(self, request: bytes, scan: Scanner, match: Callable[[Any], T | BadFrame],
                       what: str | LazyText, timeout: float | None = None) -> T:
        """Send `request`; return the first frame `match` accepts.

        `match` gets every good frame `scan` yields and returns either the
        reply (done) or a BadFrame saying why that frame is not it (wrong
        display id, reply to another command).
        """
        await self.open()
        limit = timeout or self.timeout
        loop = asyncio.get_running_loop()
        reasons: list[str | LazyText] = []
        attempts = 0
        async with self._lock:
            for _ in range(1 + self.retries):
                link = self.link
                if link is None:  # closed under us (close() during a poll)
                    await self.open()
                    link = self.link
                assert link is not None
                attempts += 1
                stale = link.discard_input()
                if stale.strip(b" \r\n"):
                    self._bad(BadFrame(stale, "stale bytes before the request"), reasons)
                try:
                    await link.write(request)
                except (OSError, serial.SerialException) as exc:
                    raise await self._gone(exc) from None
                buf = b""
                bad_now = False
                deadline = loop.time() + limit
                while (remaining := deadline - loop.time()) > 0:
                    # After a bad frame or inside a partial one, a short quiet
                    # spell means nothing more is coming for this request.
                    wait = min(remaining, self.frame_gap) if (buf or bad_now) else remaining
                    try:
                        chunk = await link.read_some(wait)
                    except (OSError, serial.SerialException) as exc:
                        raise await self._gone(exc) from None
                    if not chunk:
                        if link.reader is not None and link.reader.at_eof():
                            raise await self._gone("end of file")
                        if buf:
                            self._bad(BadFrame(buf, "truncated frame"), reasons)
                            buf, bad_now = b"", True
                        if bad_now:
                            break
                        continue
                    items, buf = scan(buf + chunk)
                    for item in items:
                        if not isinstance(item, BadFrame):
                            item = match(item)
                            if not isinstance(item, BadFrame):
                                return item
                        self._bad(item, reasons)
                        bad_now = True
                if not bad_now:
                    break  # silence: do not ask again
        seconds = f"{limit:g}"
        if reasons:
            # One reason (a checksum, every attempt): its own marked text, translated; several: their English.
            distinct = list(dict.fromkeys(reasons))
            raise DeviceError(lazy_gettext("%(device)s: no valid reply to %(what)s within %(seconds)ss (%(attempts)s "
                                           "attempt(s); bad frames: %(reasons)s)", device=self.device_id, what=what,
                                           seconds=seconds, attempts=attempts,
                                           reasons=distinct[0] if len(distinct) == 1 else ", ".join(map(str, distinct))))
        params = {"device": self.device_id, "what": what, "seconds": seconds, "id_field": self.id_field,
                  "id": str(self.address.get(self.id_field, self.default_id))}
        if self.device_word == "meter":
            raise DeviceError(lazy_gettext("%(device)s: no reply to %(what)s within %(seconds)ss (is the meter "
                                           "connected, and is its %(id_field)s %(id)s?)", **params))
        raise DeviceError(lazy_gettext("%(device)s: no reply to %(what)s within %(seconds)ss (is the display "
                                       "connected, and is its %(id_field)s %(id)s?)", **params))
