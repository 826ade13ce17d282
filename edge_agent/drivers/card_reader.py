"""Campus-card readers on a serial line: 125 kHz EM4100 frames and 13.56 MHz UID lines.

Why this module exists: a card reader is not polled, it talks whenever a card
is near it, and a card held on it repeats its read several times a second.
So the driver reads the serial line continuously in a background task started
by `open()`, turns each *swipe* (not each read) into a `card_swipe` event, and
`read()` hands over (and forgets) the swipes collected since the last poll,
with the line's frame counters as metrics.

Privacy: a raw card UID never leaves this module. Each UID is normalised
(upper-case hex of the card's ID bytes) and replaced at once by
HMAC-SHA256(per-school secret, UID); events, logs and the repeat filter only
ever see that hash. Without a secret the driver refuses to start, rather than
hash with an empty key.

The frames (EM4100 STX...ETX, one UID per line) and their pure, incremental
parsers are protocols/card_em4100.py and protocols/card_line.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import serial

from campus.contract import CARD_SWIPE_EVENT, MetricValue
from campus.errors import ConfigError, DeviceError
from campus.i18n import lazy_gettext
from edge_agent.drivers.base import (  # CardSecretMissing: imported from here too
    CardSecretMissing,
    DeviceEvent,
    DeviceUnreachable,
    Driver,
    Reading,
    card_secret_option,
)
from edge_agent.drivers.serial_link import SerialLink, serial_settings
from protocols import card_em4100, card_line
from protocols.card_em4100 import EM4100Parser
from protocols.card_ids import card_hash
from protocols.card_line import BYTE_ORDERS, UID_FORMATS, LineParser

log = logging.getLogger(__name__)

DEFAULT_REPEAT_WINDOW_S = 2.0
DEFAULT_FRAME_TIMEOUT_S = 0.2  # a 14-byte frame takes 15 ms at 9600 baud
MAX_PENDING_EVENTS = 10_000    # swipes kept while nobody polls; oldest dropped beyond


class RepeatFilter:
    """One swipe per card presentation: reads of the same card closer together than `window_s` are repeats.

    The window slides: a card left on the reader keeps being a repeat for as
    long as it stays; read again after more than `window_s` without a read, it
    is a new swipe. Keyed by whatever the caller passes (the driver passes the
    card's hash, never the raw UID).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}

    def is_new(self, key: str, now: float) -> bool:
        if self.window_s <= 0:
            return True  # no window: every read is a swipe
        last = self._last.get(key)
        self._last[key] = now
        if len(self._last) > 256:
            self._last = {k: t for k, t in self._last.items() if now - t <= self.window_s}
        return last is None or now - last > self.window_s


# ------------------------------------------------------------------ drivers


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


class _CardReaderDriver(Driver):
    """What both card readers share: the serial pump, hashing, repeat filter, counters."""

    COUNTERS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_address(self.address)
        self.port = str(self.address["serial"])
        self.settings = serial_settings(self.profile.serial, self.address)
        self.repeat_window_s = self._timing("repeat_window_s", DEFAULT_REPEAT_WINDOW_S)
        self.frame_timeout_s = max(0.01, self._timing("frame_timeout_s", DEFAULT_FRAME_TIMEOUT_S))
        self._secret = card_secret_option(self.options)
        self.parser = self._new_parser()
        self.filter = RepeatFilter(self.repeat_window_s)
        self.counters.update(dict.fromkeys(self.COUNTERS, 0))
        self._events: collections.deque[DeviceEvent] = collections.deque()
        self._link: SerialLink | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._lost: DeviceError | None = None
        # Called when a swipe is collected: the agent reads the reader at once instead of at its next poll,
        # so the podium acts in milliseconds, not up to a poll interval (5 s by default) later.
        self.on_swipe: Callable[[], None] | None = None

    def _timing(self, name: str, default: float) -> float:
        if name in self.options:
            return _number(self.options[name], f"{self.device_id}: option {name}")
        return _number(self.profile.timings.get(name, default), f"{self.profile.name}: timings.{name}")

    def _new_parser(self) -> EM4100Parser | LineParser:
        raise NotImplementedError

    # -------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._pump_task is not None and not self._pump_task.done()

    async def open(self) -> None:
        """Open the port and start reading it; raises CardSecretMissing or DeviceUnreachable."""
        if self._secret is None:
            raise CardSecretMissing(lazy_gettext("%(device)s: card reader refused to start: the gateway config needs "
                                                 "card_secret (cards are pseudonymised with it, never sent raw)",
                                                 device=self.device_id))
        if self.running:
            return
        link = SerialLink(self.port, **self.settings)
        await link.open()
        self.parser.reset()
        recovered, self._link, self._lost = self._lost is not None, link, None
        self._pump_task = asyncio.create_task(self._pump(link), name=f"card-reader-{self.device_id}")
        log.info("card reader %s %s %s", self.device_id, "is back on" if recovered else "reading", self.port)

    async def close(self) -> None:
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def _pump(self, link: SerialLink) -> None:
        try:
            while True:
                data = await link.read_some(self.frame_timeout_s)
                if data:
                    self._ingest(data)
                elif link.reader is None or link.reader.at_eof():
                    raise DeviceUnreachable(f"{self.device_id}: serial port {self.port} closed")
                elif self.parser.pending:
                    self.parser.expire()
                    self._sync_counts()
        except DeviceUnreachable as exc:
            self._port_lost(exc)
        except (serial.SerialException, OSError) as exc:
            self._port_lost(DeviceUnreachable(f"{self.device_id}: serial port {self.port} lost: {exc}"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must surface as a fault, not a silently dead reader
            log.exception("card reader %s: reader task failed", self.device_id)
            self._port_lost(DeviceError(f"{self.device_id}: reader task failed: {exc}"))
        finally:
            await link.close()

    def _port_lost(self, exc: DeviceError) -> None:
        self._lost = exc
        self.count("port_lost")
        log.warning("%s", exc)

    # -------------------------------------------------------------- data path

    def _ingest(self, data: bytes) -> None:
        now, mono = time.time(), time.monotonic()
        uids = self.parser.feed(data)
        self._sync_counts()
        assert self._secret is not None
        for uid in uids:
            card = card_hash(self._secret, uid)  # the raw UID goes no further than this line
            if not self.filter.is_new(card, mono):
                continue
            if len(self._events) >= MAX_PENDING_EVENTS:
                self._events.popleft()
                self.count("events_dropped")
            self._events.append(DeviceEvent(CARD_SWIPE_EVENT, {"card": card, "reader": self.device_id}, now))
            self.count("swipes")
            log.debug("card reader %s: swipe %s…", self.device_id, card[:8])
            if self.on_swipe is not None:
                self.on_swipe()

    def _sync_counts(self) -> None:
        for name, total in self.parser.counts.items():
            delta = total - self.counters.get(name, 0)
            if delta:
                self.count(name, delta)

    def metrics(self) -> dict[str, MetricValue]:
        values: dict[str, MetricValue] = {name: self.counters.get(name, 0) for name in self.COUNTERS}
        values["frames_bad"] = sum(self.counters.get(n, 0) for n in ("bad_checksum", "truncated", "malformed"))
        return values

    async def read(self) -> Reading:
        """The swipes since the last poll (each once) and the line counters.

        Swipes already collected are handed over even if the port has just
        been lost; the loss is raised (DeviceUnreachable) on the first poll
        with nothing left to deliver, and the port is reopened on each poll
        after that until it is back.
        """
        if not self.running and not self._events:
            await self.open()
        events = list(self._events)
        self._events.clear()
        return Reading(values=self.metrics(), events=events)


class EM4100ReaderDriver(_CardReaderDriver):
    """125 kHz EM4100 readers (RDM6300, ID-12LA/ID-20LA ASCII mode) sending STX…ETX frames."""

    protocol = card_em4100.NAME
    COUNTERS = ("swipes", "frames_ok", "bad_checksum", "truncated", "malformed", "noise_bytes")

    def _new_parser(self) -> EM4100Parser:
        return EM4100Parser()


class LineReaderDriver(_CardReaderDriver):
    """13.56 MHz (Mifare) serial readers and keyboard-style readers sending one UID per line.

    Options: `uid_format` ("auto" default: 8/14 hex digits or 10 decimal
    digits; "hex"; "decimal") and `decimal_byte_order` ("big" default, or
    "little" for readers that print the UID bytes least significant first).
    """

    protocol = card_line.NAME
    COUNTERS = ("swipes", "frames_ok", "truncated", "malformed", "noise_bytes")

    def _new_parser(self) -> LineParser:
        uid_format = self.options.get("uid_format", "auto")
        if uid_format not in UID_FORMATS:
            raise ConfigError(f"{self.device_id}: option uid_format must be one of {', '.join(UID_FORMATS)}, "
                              f"got {uid_format!r}")
        order = self.options.get("decimal_byte_order", "big")
        if order not in BYTE_ORDERS:
            raise ConfigError(f"{self.device_id}: option decimal_byte_order must be big or little, got {order!r}")
        return LineParser(uid_format, order)
