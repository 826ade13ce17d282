"""DL/T 645-2007: the Chinese national standard protocol of electricity meters on RS-485.

Every watt-hour meter a Chinese school buys (single-phase DDSU/DDZY, three-phase DTSU) speaks it,
usually at 2400 baud 8E1. The codec is pure functions, shared by the driver
(edge_agent/drivers/dlt645.py) and the simulated meter (firmware_stubs/meter.py), so the two can
never disagree; the fuzzers feed `split_frames`. Maintained Python libraries were weighed: the one
complete package is a young single-author project that owns its own threads and serial port, which
fits neither the agent's asyncio link nor a simulator on a pty; the others read a few items over
infrared and are marked incomplete. The codec is small, so it is ours, with the standard's
examples as test vectors (tests/test_dlt645.py).

Frame (DL/T 645-2007, 4.1)::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA...  CS  16

- FE FE FE FE: an optional wake-up preamble a master (and many meters) send before a frame; any
  number of FE is skipped before the first 68.
- A0..A5: the meter's address, the 12 decimal digits on its nameplate as 6 BCD bytes, lowest pair
  first (nameplate 123456789012 is 12 90 78 56 34 12 on the wire). AA AA AA AA AA AA is the
  broadcast address a master uses to ask the only meter on a line for its address (13H).
- C: the control code. Bit 7 the direction (1: the meter's reply), bit 6 an abnormal reply, bit 5
  a follow-up frame comes, bits 4-0 the function: 11H read data, 13H read address. Replies: 91H
  (normal), B1H (normal, follow-up frames come), D1H (error; one data byte: the error word), 93H
  (the address).
- L: the number of data bytes. DATA: each byte sent +33H (mod 256), so a frame of zeros is not a
  line of zero bytes. A read carries the data identifier DI0..DI3 (lowest byte first, each +33H);
  its reply the identifier again, then the value.
- CS: the sum of every byte from the first 68 to the end of the data, mod 256. 16: the end.

Values are BCD, lowest byte first; for current and power the top bit of the highest byte is the
sign (1: negative, energy flowing back). The items read here (the metric each becomes, and its
format in the standard's appendix A):

=============  ===========  ==========  =====  =====================
metric          DI3..DI0     format      bytes  what
=============  ===========  ==========  =====  =====================
energy_kwh      00 00 00 00  XXXXXX.XX   4      combined active energy, total (kWh)
voltage_v       02 01 01 00  XXX.X       2      phase A voltage (V)
current_a       02 02 01 00  XXX.XXX     3      phase A current (A), signed
power_w         02 03 00 00  XX.XXXX     3      instantaneous total active power (kW, reported in W), signed
=============  ===========  ==========  =====  =====================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from campus.i18n import N_, LazyText, lazy_gettext
from protocols import serial_line
from protocols.serial_line import BadFrame
from protocols.spec import Address, Field, Protocol

NAME = "dlt645"
ADDRESS_FIELD = "meter_address"

START, END, WAKE = 0x68, 0x16, 0xFE
PREAMBLE = bytes((WAKE,)) * 4
OFFSET = 0x33
HEADER_LEN = 10  # 68 A0..A5 68 C L
MIN_FRAME = HEADER_LEN + 2  # + CS 16

READ_DATA = 0x11
READ_ADDRESS = 0x13
REPLY = 0x80  # control bit 7: the meter answers
ABNORMAL = 0x40  # control bit 6: an error reply
FOLLOWS = 0x20  # control bit 5: follow-up frames come
FUNCTION = 0x1F

BROADCAST = "AAAAAAAAAAAA"  # read-address broadcast (A0..A5 = AAH)

# The error word of a D1H reply (DL/T 645-2007, 7.1.3): bit -> meaning.
# Marked for translation: a meter's refusal names them (a device's fault reason on the board).
ERROR_BITS = {0: N_("other error"), 1: N_("no such data (unknown data identifier)"),
              2: N_("password wrong or not authorised"), 3: N_("baud rate cannot be changed"),
              4: N_("too many annual time zones"), 5: N_("too many daily time slots"), 6: N_("too many tariffs")}
ERR_OTHER, ERR_NO_DATA = 0x01, 0x02

ADDRESS = Address(fields=(
    serial_line.serial_port(N_("RS-485 port, e.g. /dev/ttyUSB0")),
    Field(ADDRESS_FIELD, "text", required=True, pattern=r"[0-9]{12}",
          label="the meter's address, the 12 digits on its nameplate",
          must='the 12 digits of the meter\'s nameplate address, quoted in YAML (e.g. "000012345678")',
          hint=N_("nameplate address, 12 digits, e.g. 000012345678")),
    *serial_line.LINE,
))


@dataclass(frozen=True)
class DataItem:
    """One value a meter reports: its data identifier and its BCD format."""

    metric: str
    di: int          # DI3 DI2 DI1 DI0 as one number, e.g. 0x02010100
    size: int        # bytes of the value
    decimals: int    # digits after the point
    signed: bool     # top bit of the highest byte is the sign
    scale: float = 1.0  # what the metric is in the standard's unit (kW -> W: 1000)

    @property
    def di_bytes(self) -> bytes:
        """DI0..DI3, as sent (before +33H)."""
        return self.di.to_bytes(4, "little")

    @property
    def largest(self) -> float:
        """The largest magnitude the format holds (one bit fewer for the sign)."""
        top = (8 if self.signed else 10) * 10 ** (2 * self.size - 1) - 1
        return top / 10 ** self.decimals * self.scale


DATA_ITEMS: dict[str, DataItem] = {item.metric: item for item in (
    DataItem("energy_kwh", 0x00000000, 4, 2, False),
    DataItem("voltage_v", 0x02010100, 2, 1, False),
    DataItem("current_a", 0x02020100, 3, 3, True),
    DataItem("power_w", 0x02030000, 3, 4, True, scale=1000.0),
)}
BY_DI = {item.di: item for item in DATA_ITEMS.values()}

PROTOCOL = Protocol(
    name=NAME, label="DL/T 645-2007 electricity meter (RS-485)", address=ADDRESS,
    driver="edge_agent.drivers.dlt645:DLT645Driver", simulator="firmware_stubs.meter:simulator_for",
    # A profile lists the items to read by metric name; the identifiers and formats are the standard's (above).
    profile_schema={"properties": {"metrics": {"minProperties": 1,
                                               "propertyNames": {"enum": list(DATA_ITEMS)}}}},
)


class DLT645FrameError(ValueError):
    """Bytes that are not one well-formed DL/T 645 frame, or a value that is not BCD; the message names
    what is wrong and shows the frame."""


@dataclass(frozen=True)
class Frame:
    """One checksum-valid frame, its data with the +33H taken off."""

    address: str  # the 12 nameplate digits (or AAAAAAAAAAAA)
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ABNORMAL)


def show(raw: bytes, limit: int = 40) -> str:
    """A frame as hex for a message, cut after `limit` bytes."""
    text = bytes(raw[:limit]).hex(" ")
    return text + (" …" if len(raw) > limit else "")


def checksum(body: bytes) -> int:
    """Sum of the bytes from the first 68 to the end of the data, mod 256."""
    return sum(body) & 0xFF


def address_bytes(address: str) -> bytes:
    """A0..A5 of a nameplate address (12 digits, lowest pair first) or of the broadcast address."""
    if address.upper() == BROADCAST:
        return bytes((0xAA,)) * 6
    if len(address) != 12 or not address.isdigit() or not address.isascii():
        raise ValueError(f"a meter address is 12 digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def address_text(a: bytes) -> str:
    """The nameplate address of A0..A5; raises DLT645FrameError if a byte is not BCD (AA..AA excepted)."""
    if a == bytes((0xAA,)) * 6:
        return BROADCAST
    digits = bytes(a[::-1]).hex()
    if not digits.isdigit():
        raise DLT645FrameError(f"address {show(a)} is not BCD")
    return digits


def encode_frame(address: str, control: int, data: bytes = b"", preamble: bool = True) -> bytes:
    """A complete frame (with the wake-up preamble unless `preamble` is False); `data` before +33H."""
    if not 0 <= control <= 0xFF:
        raise ValueError(f"a control code is one byte, got {control}")
    if len(data) > 255:
        raise ValueError(f"at most 255 data bytes, got {len(data)}")
    body = bytes((START,)) + address_bytes(address) + bytes((START, control, len(data))) \
        + bytes((b + OFFSET) & 0xFF for b in data)
    return (PREAMBLE if preamble else b"") + body + bytes((checksum(body), END))


def _problem(raw: bytes, frame: str | None = None) -> LazyText | None:
    """Why raw (68 to 16, its length right) is not a good frame, or None; naming the frame (`frame`, its bytes
    as `show` writes them) when given. Marked for translation: a meter's fault reason says it (a bad frame is the
    only reason of a "no valid reply", which the gateway's state carries to the board)."""
    if raw[-1] != END:
        got = f"0x{raw[-1]:02x}"
        return lazy_gettext("end byte %(got)s, not 0x16", got=got) if frame is None else \
            lazy_gettext("end byte %(got)s, not 0x16 in frame %(frame)s", got=got, frame=frame)
    expected = checksum(raw[:-2])
    if raw[-2] != expected:
        params = {"got": f"0x{raw[-2]:02x}", "expected": f"0x{expected:02x}"}
        return lazy_gettext("checksum %(got)s, expected %(expected)s", **params) if frame is None else \
            lazy_gettext("checksum %(got)s, expected %(expected)s in frame %(frame)s", frame=frame, **params)
    return None


def _frame(raw: bytes) -> Frame:
    return Frame(address_text(raw[1:7]), raw[8], bytes((b - OFFSET) & 0xFF for b in raw[HEADER_LEN:-2]))


def decode_frame(raw: bytes) -> Frame:
    """Exactly one frame (after any FE preamble); raises DLT645FrameError naming what is wrong and the frame."""
    raw = bytes(raw)
    body = raw.lstrip(bytes((WAKE,)))
    try:
        if len(body) < MIN_FRAME:
            raise DLT645FrameError(f"frame too short ({len(body)} bytes, at least {MIN_FRAME})")
        if body[0] != START or body[7] != START:
            raise DLT645FrameError("no 68h at bytes 0 and 7")
        length = body[9]
        if len(body) != MIN_FRAME + length:
            raise DLT645FrameError(f"length byte says {length} data bytes, frame has {len(body) - MIN_FRAME}")
        problem = _problem(body)
        if problem:
            raise DLT645FrameError(problem)
        return _frame(body)
    except DLT645FrameError as exc:
        raise DLT645FrameError(f"{exc} in frame {show(raw)}") from None


def _complete_at(buf: bytes, k: int) -> bool:
    """Does a complete, good frame start at `k`?"""
    if k + MIN_FRAME > len(buf) or buf[k] != START or buf[k + 7] != START:
        return False
    end = k + MIN_FRAME + buf[k + 9]
    return end <= len(buf) and _problem(buf[k:end]) is None


def _next_good(buf: bytes, start: int) -> int | None:
    k = buf.find(START, start)
    while k >= 0:
        if _complete_at(buf, k):
            return k
        k = buf.find(START, k + 1)
    return None


def _pending(buf: bytes, start: int, stop: int) -> bool:
    """Is there a 68 in buf[start:stop] that may still start a frame when more bytes come?"""
    k = buf.find(START, start, stop)
    while k >= 0:
        if k + HEADER_LEN > len(buf) or (buf[k + 7] == START and k + MIN_FRAME + buf[k + 9] > len(buf)):
            return True
        k = buf.find(START, k + 1, stop)
    return False


def _skip(items: list[Frame | BadFrame], raw: bytes, reason: str | LazyText) -> None:
    """Record skipped bytes; adjacent skipped spans are one bad frame (one burst of noise)."""
    if items and isinstance(items[-1], BadFrame):
        last = items[-1]
        items[-1] = BadFrame(last.raw + raw,
                             last.reason if str(reason) in str(last.reason) else f"{last.reason} + {reason}")
    else:
        items.append(BadFrame(raw, reason))


def split_frames(buf: bytes) -> tuple[list[Frame | BadFrame], bytes]:
    """Split a byte stream into frames; never raises.

    Returns the good frames and the skipped bytes (as BadFrame, each reason naming the bytes: noise,
    a bad checksum or end byte, a frame cut short by the next one, an address that is not BCD), plus
    the tail that may still become a frame when more bytes come. Wake-up bytes (FE) before a frame are
    not noise. A candidate that fails is skipped only up to the next 68 that starts a good frame, so a
    68 in noise (or a data byte 35h + 33h) cannot swallow a real reply.
    """
    items: list[Frame | BadFrame] = []
    buf = bytes(buf)
    i, n = 0, len(buf)
    while i < n:
        while i < n and buf[i] == WAKE:
            i += 1
        j = buf.find(START, i)
        if j < 0:
            if i < n:
                _skip(items, buf[i:], f"noise {show(buf[i:])}")
            return items, b""
        if j > i:
            _skip(items, buf[i:j], f"noise before a frame {show(buf[i:j])}")
        if j + HEADER_LEN > n:
            return items, buf[j:]
        if buf[j + 7] != START:  # not a frame start: noise up to the next 68
            nxt = buf.find(START, j + 1)
            stop = n if nxt < 0 else nxt
            _skip(items, buf[j:stop], f"no second 68h in {show(buf[j:stop])}")
            i = stop
            continue
        end = j + MIN_FRAME + buf[j + 9]
        if end > n:  # incomplete, unless a good frame starts inside it
            k = _next_good(buf, j + 1)
            if k is None:
                return items, buf[j:]
            _skip(items, buf[j:k], f"truncated frame {show(buf[j:k])}")
            i = k
            continue
        problem = _problem(buf[j:end])
        if problem:
            k = _next_good(buf, j + 1)
            if k is not None and k < end:  # a frame starting inside cut this one short
                _skip(items, buf[j:k], f"truncated frame {show(buf[j:k])}")
                i = k
                continue
            if _pending(buf, j + 1, end):  # a real frame may start inside: wait for its bytes
                return items, buf[j:]
            _skip(items, buf[j:end], _problem(buf[j:end], show(buf[j:end])) or problem)
            i = end
            continue
        try:
            items.append(_frame(buf[j:end]))
        except DLT645FrameError as exc:
            _skip(items, buf[j:end], f"{exc} in frame {show(buf[j:end])}")
        i = end
    return items, b""


# -- values

def encode_value(item: DataItem, value: float) -> bytes:
    """The BCD bytes (lowest first, before +33H) a meter sends for `value` in the metric's unit."""
    raw = round(abs(value) / item.scale * 10 ** item.decimals)
    top = (8 if item.signed else 10) * 10 ** (2 * item.size - 1) - 1
    if raw > top or (value < 0 and not item.signed):
        raise ValueError(f"{item.metric}: {value} does not fit {item.size} BCD bytes")
    out = bytearray(bytes.fromhex(f"{raw:0{2 * item.size}d}")[::-1])
    if value < 0 and raw:
        out[-1] |= 0x80
    return bytes(out)


def decode_value(item: DataItem, data: bytes) -> float:
    """The value (in the metric's unit) of the BCD bytes of `item`; DLT645FrameError if they are not BCD."""
    if len(data) != item.size:
        raise DLT645FrameError(lazy_gettext("%(metric)s: %(n)s value bytes, expected %(size)s (%(data)s)",
                                            metric=item.metric, n=len(data), size=item.size, data=show(data)))
    msb_first = bytearray(data[::-1])
    negative = item.signed and bool(msb_first[0] & 0x80)
    if item.signed:
        msb_first[0] &= 0x7F
    digits = msb_first.hex()
    if not digits.isdigit():
        raise DLT645FrameError(lazy_gettext("%(metric)s: value %(data)s is not BCD", metric=item.metric,
                                            data=show(data)))
    value = int(digits) * item.scale / 10 ** item.decimals
    # Round away float noise to the format's resolution in the metric's unit (XX.XXXX kW: 0.1 W).
    value = round(-value if negative else value, max(0, item.decimals - round(math.log10(item.scale))))
    return value + 0.0  # -0.0 (a sign bit on zero) is 0


def errors_of(word: int) -> LazyText | str:
    """The error word of a D1H reply in words: one bit (the usual case) marked for translation, several in
    English (a marked text carries one level of marked parameters: campus/contract.py)."""
    named = [text for bit, text in ERROR_BITS.items() if word & (1 << bit)]
    if len(named) > 1:
        return ", ".join(named)
    return LazyText(named[0] if named else N_("no error bit set"))


# -- the requests and replies this product uses

def read_request(address: str, item: DataItem) -> bytes:
    return encode_frame(address, READ_DATA, item.di_bytes)


def read_address_request() -> bytes:
    """68 AA AA AA AA AA AA 68 13 00 DF 16: which meter is on this line?"""
    return encode_frame(BROADCAST, READ_ADDRESS)


def read_reply(address: str, item: DataItem, value: float, follows: bool = False) -> bytes:
    return encode_frame(address, READ_DATA | REPLY | (FOLLOWS if follows else 0), item.di_bytes + encode_value(item, value))


def error_reply(address: str, function: int, word: int) -> bytes:
    return encode_frame(address, function | REPLY | ABNORMAL, bytes((word,)))


def address_reply(address: str) -> bytes:
    return encode_frame(address, READ_ADDRESS | REPLY, address_bytes(address))
