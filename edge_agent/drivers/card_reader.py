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

Protocols (checked against the ID-Innovations ID-12LA/ID-20LA datasheet and
Tasmota's RDM6300 driver; their examples are test vectors in the tests):
- EM4100 (RDM6300 / ID-12LA style), 9600 8N1: STX 0x02, 10 ASCII-hex digits
  (version/customer byte + 32-bit ID), 2 ASCII-hex digits of the XOR of those
  5 bytes, ETX 0x03. ID-12LA/ID-20LA put CR LF between the checksum and ETX;
  other readers send CR LF after ETX: both are accepted.
- Line readers: one UID per line (CR, LF or CR LF; silence also ends a line),
  4- or 7-byte UIDs as 8 or 14 hex digits (optionally with `:`, `-` or space
  between bytes), or a 4-byte UID as 10 decimal digits (USB keyboard style).

The frame parsers are pure, incremental and never raise, so they can be
fuzzed: feed them any byte chunks, read the UIDs they return and their counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import re
import time
from typing import Any, ClassVar

import serial

from campus.contract import MetricValue
from campus.errors import ConfigError, DeviceError
from edge_agent.drivers.base import DeviceEvent, DeviceUnreachable, Driver, Reading
from edge_agent.drivers.serial_link import SerialLink, serial_settings

log = logging.getLogger(__name__)

STX, ETX, CR, LF = 0x02, 0x03, 0x0D, 0x0A
EM4100_BODY_LEN = 12          # 10 data + 2 checksum ASCII-hex characters
DEFAULT_REPEAT_WINDOW_S = 2.0
DEFAULT_FRAME_TIMEOUT_S = 0.2  # a 14-byte frame takes 15 ms at 9600 baud
MAX_PENDING_EVENTS = 10_000    # swipes kept while nobody polls; oldest dropped beyond
MAX_LINE = 64                  # longer than any UID line: the rest of it is discarded

_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
_ADDRESS_KEYS = ("serial", "baudrate", "bytesize", "parity", "stopbits")
_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
UID_FORMATS = ("auto", "hex", "decimal")
BYTE_ORDERS = ("big", "little")


class CardSecretMissing(DeviceError, ConfigError):
    """A card reader cannot run without the gateway's card_secret (a config error, reported as a device fault)."""


def card_hash(secret: str | bytes, uid: str) -> str:
    """The pseudonym of a card: HMAC-SHA256 of its normalised UID, keyed with the school's secret (hex)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, uid.encode("ascii"), hashlib.sha256).hexdigest()


def xor_checksum(data: bytes) -> int:
    """XOR of all bytes: the EM4100 ASCII-frame checksum over the 5 ID bytes."""
    acc = 0
    for b in data:
        acc ^= b
    return acc


# ------------------------------------------------------------------ parsers


class EM4100Parser:
    """Incremental EM4100 ASCII-frame parser.

    `feed(chunk)` takes any bytes (frames split across chunks, several frames
    in one, noise between them) and returns the normalised UIDs (10 upper-case
    hex digits) of the valid frames completed in it. Counts, never raises:
    `frames_ok`; `bad_checksum`; `truncated` (a new STX before ETX, a frame of
    the wrong length, or one cut off by silence, see `expire`); `malformed`
    (right length, not hex, or the all-zero ID some readers emit as a false
    read); `noise_bytes` (bytes outside any frame other than CR/LF).
    """

    COUNTERS: ClassVar[tuple[str, ...]] = ("frames_ok", "bad_checksum", "truncated", "malformed", "noise_bytes")

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self._body = bytearray()
        self._in_frame = False
        self._overlong = False

    @property
    def pending(self) -> bool:
        """A frame has started and not ended yet."""
        return self._in_frame

    def reset(self) -> None:
        """Forget a partial frame without counting it (the line was reopened)."""
        self._body.clear()
        self._in_frame = self._overlong = False

    def expire(self) -> None:
        """The line went quiet in the middle of a frame: count it truncated and drop it."""
        if self._in_frame:
            self.counts["truncated"] += 1
        self.reset()

    def feed(self, data: bytes) -> list[str]:
        uids: list[str] = []
        for b in data:
            if b == STX:
                if self._in_frame:
                    self.counts["truncated"] += 1
                self.reset()
                self._in_frame = True
            elif not self._in_frame:
                if b not in (CR, LF):
                    self.counts["noise_bytes"] += 1
            elif b == ETX:
                uid = self._finish()
                if uid is not None:
                    uids.append(uid)
            elif not self._overlong:
                self._body.append(b)
                if len(self._body) > EM4100_BODY_LEN + 2:  # longer than body + CR LF: keep no more
                    self._overlong = True
        return uids

    def _finish(self) -> str | None:
        body = bytes(self._body)
        overlong = self._overlong
        self.reset()
        for tail in (b"\r\n", b"\n", b"\r"):
            if body.endswith(tail):
                body = body[:-len(tail)]
                break
        if overlong or len(body) != EM4100_BODY_LEN:
            self.counts["truncated"] += 1
            return None
        if not all(c in _HEX_DIGITS for c in body):
            self.counts["malformed"] += 1
            return None
        raw = bytes.fromhex(body.decode("ascii"))
        if xor_checksum(raw[:5]) != raw[5]:
            self.counts["bad_checksum"] += 1
            return None
        if not any(raw[:5]):
            self.counts["malformed"] += 1
            return None
        self.counts["frames_ok"] += 1
        return raw[:5].hex().upper()


_SEPARATED_HEX = re.compile(r"^[0-9A-Fa-f]{2}(?:([:\- ])[0-9A-Fa-f]{2})+$")


def parse_uid_line(text: str, uid_format: str = "auto", decimal_byte_order: str = "big") -> tuple[str | None, str]:
    """Normalise one line of a line reader: `(uid, "ok")` or `(None, "truncated" | "malformed")`.

    Hex: 8 or 14 digits (4- or 7-byte UID), bytes optionally separated by one
    of `:`, `-`, space. Decimal: 10 digits, a 4-byte UID as an unsigned 32-bit
    number, most significant byte first unless `decimal_byte_order` is
    "little" (readers differ). The result is upper-case hex of the UID bytes,
    so a card hashes the same whether a reader types it in hex or decimal.
    A run of digits of another length is `truncated`; anything else is
    `malformed`.
    """
    s = text.strip()
    m = _SEPARATED_HEX.match(s)
    if m and s.count(m.group(1)) == len(s) // 3:
        s = s.replace(m.group(1), "")
    if not s.isascii() or not s.isalnum():
        return None, "malformed"
    is_decimal = s.isdigit()
    is_hex = all(c in "0123456789ABCDEFabcdef" for c in s)
    if uid_format in ("auto", "decimal") and is_decimal and len(s) == 10:
        value = int(s)
        if value > 0xFFFFFFFF or value == 0:
            return None, "malformed"
        order = "little" if decimal_byte_order == "little" else "big"
        return value.to_bytes(4, order).hex().upper(), "ok"
    if uid_format in ("auto", "hex") and is_hex and len(s) in (8, 14):
        if not any(bytes.fromhex(s)):
            return None, "malformed"
        return s.upper(), "ok"
    if (uid_format == "decimal" and is_decimal) or (uid_format != "decimal" and is_hex):
        return None, "truncated"
    return None, "malformed"


class LineParser:
    """Incremental parser for readers that send one UID per line.

    Printable ASCII builds the line; CR or LF ends it (empty lines are
    ignored); other bytes are `noise_bytes` and make the line they fall in
    `malformed` (a line reader has no checksum, so a line hit by noise is not
    trusted). A line longer than `MAX_LINE` is dropped as `malformed`.
    `expire()` (the line went quiet) ends a pending line, for readers that
    send no line end. Never raises.
    """

    COUNTERS: ClassVar[tuple[str, ...]] = ("frames_ok", "truncated", "malformed", "noise_bytes")

    def __init__(self, uid_format: str = "auto", decimal_byte_order: str = "big") -> None:
        self.uid_format = uid_format
        self.decimal_byte_order = decimal_byte_order
        self.counts: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self._line = bytearray()
        self._tainted = False
        self._overlong = False

    @property
    def pending(self) -> bool:
        return bool(self._line) or self._tainted or self._overlong

    def reset(self) -> None:
        self._line.clear()
        self._tainted = self._overlong = False

    def expire(self) -> None:
        if self.pending:
            self._end_line()

    def feed(self, data: bytes) -> list[str]:
        uids: list[str] = []
        for b in data:
            if b in (CR, LF):
                uid = self._end_line()
                if uid is not None:
                    uids.append(uid)
            elif 0x20 <= b < 0x7F or b == 0x09:
                if len(self._line) < MAX_LINE:
                    self._line.append(b)
                else:
                    self._overlong = True
            else:
                self.counts["noise_bytes"] += 1
                self._tainted = True
        return uids

    def _end_line(self) -> str | None:
        text = self._line.decode("ascii").strip()
        tainted, overlong = self._tainted, self._overlong
        self.reset()
        if not text:
            return None  # CR LF's second half, or a burst of noise alone
        if tainted or overlong:
            self.counts["malformed"] += 1
            return None
        uid, verdict = parse_uid_line(text, self.uid_format, self.decimal_byte_order)
        if uid is None:
            self.counts[verdict] += 1
            return None
        self.counts["frames_ok"] += 1
        return uid


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

    @classmethod
    def check_address(cls, address: dict[str, Any]) -> None:
        super().check_address(address)
        for key in address:
            if key not in _ADDRESS_KEYS:
                raise ValueError(f"{key}: not a card reader address field (use {', '.join(_ADDRESS_KEYS)})")
        port = address.get("serial")
        if not isinstance(port, str) or not port.strip():
            raise ValueError(f"serial: the reader's serial port path is required, got {port!r}")
        baud = address.get("baudrate", 9600)
        if isinstance(baud, bool) or baud not in _BAUDRATES:
            raise ValueError(f"baudrate must be one of {', '.join(map(str, _BAUDRATES))}, got {baud!r}")
        bytesize = address.get("bytesize", 8)
        if isinstance(bytesize, bool) or bytesize not in (5, 6, 7, 8):
            raise ValueError(f"bytesize must be 5, 6, 7 or 8, got {bytesize!r}")
        if address.get("parity", "N") not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {address.get('parity')!r}")
        stopbits = address.get("stopbits", 1)
        if isinstance(stopbits, bool) or stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits must be 1, 1.5 or 2, got {stopbits!r}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_address(self.address)
        self.port = str(self.address["serial"])
        self.settings = serial_settings(self.profile.serial, self.address)
        self.repeat_window_s = self._timing("repeat_window_s", DEFAULT_REPEAT_WINDOW_S)
        self.frame_timeout_s = max(0.01, self._timing("frame_timeout_s", DEFAULT_FRAME_TIMEOUT_S))
        secret = self.options.get("secret")
        self._secret: bytes | None = None
        if isinstance(secret, str | bytes) and secret.strip():
            self._secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.parser = self._new_parser()
        self.filter = RepeatFilter(self.repeat_window_s)
        self.counters.update(dict.fromkeys(self.COUNTERS, 0))
        self._events: collections.deque[DeviceEvent] = collections.deque()
        self._link: SerialLink | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._lost: DeviceError | None = None

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
            raise CardSecretMissing(f"{self.device_id}: card reader refused to start: the gateway config "
                                    "needs card_secret (cards are pseudonymised with it, never sent raw)")
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
            self._events.append(DeviceEvent("card_swipe", {"card": card, "reader": self.device_id}, now))
            self.count("swipes")
            log.debug("card reader %s: swipe %s…", self.device_id, card[:8])

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

    protocol = "card_em4100"
    COUNTERS = ("swipes", "frames_ok", "bad_checksum", "truncated", "malformed", "noise_bytes")

    def _new_parser(self) -> EM4100Parser:
        return EM4100Parser()


class LineReaderDriver(_CardReaderDriver):
    """13.56 MHz (Mifare) serial readers and keyboard-style readers sending one UID per line.

    Options: `uid_format` ("auto" default: 8/14 hex digits or 10 decimal
    digits; "hex"; "decimal") and `decimal_byte_order` ("big" default, or
    "little" for readers that print the UID bytes least significant first).
    """

    protocol = "card_line"
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
