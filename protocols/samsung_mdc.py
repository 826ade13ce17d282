"""Samsung MDC (Multiple Display Control): Samsung commercial displays over RS-232C.

Classrooms use Samsung signage panels as their main screen; MDC is how a
controller reads and sets power, volume, mute and input on them. The frame
codec here is pure functions (so it can be fuzzed), shared by the driver
(edge_agent/drivers/samsung_mdc.py) and the simulated panel
(firmware_stubs/displays.py).

Frames (MDC protocol specification; byte layout checked against the
`python-samsung-mdc` implementation of spec v15.0):

    request  0xAA, command, display id, data length, data..., checksum
    reply    0xAA, 0xFF, display id, data length, 'A'|'N', r-command, values..., checksum

The checksum is the sum of every byte after the 0xAA header, modulo 256. A
request with no data is a query. An 'A' (0x41) reply carries the current
value(s); an 'N' (0x4E) reply carries one error code, whose meaning the
public specification leaves to the model, so it is reported raw.

Commands used: 0x00 status (power, volume, mute, input, aspect, N/F time;
one query gives all four metrics), 0x11 power (0 off, 1 on), 0x12 volume
(0-100), 0x13 mute (0 off, 1 on), 0x14 input source (e.g. 0x14 PC, 0x18 DVI,
0x21 HDMI1, 0x23 HDMI2, 0x25 DisplayPort1). Display id 0-253 is one
display; 0xFE addresses every display on the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from campus.errors import ConfigError
from campus.i18n import N_
from protocols import serial_line
from protocols.serial_line import BadFrame
from protocols.spec import Address, Field, Protocol

NAME = "samsung_mdc"
ID_FIELD = "display_id"
DEFAULT_ID = 0

ADDRESS = Address(fields=(
    serial_line.serial_port(N_("RS-232 port, e.g. /dev/ttyUSB0")),
    Field(ID_FIELD, "int", minimum=0, maximum=254, default=DEFAULT_ID),
    *serial_line.LINE,
))

PROTOCOL = Protocol(name=NAME, label="Samsung MDC display (RS-232)", address=ADDRESS,
                    driver="edge_agent.drivers.samsung_mdc:SamsungMDCDriver",
                    simulator="firmware_stubs.displays:simulator_for")

HEADER = 0xAA
REPLY = 0xFF  # the command byte of every reply
ACK = 0x41  # 'A'
NAK = 0x4E  # 'N'
BROADCAST_ID = 0xFE

CMD_STATUS = 0x00
CMD_POWER = 0x11
CMD_VOLUME = 0x12
CMD_MUTE = 0x13
CMD_INPUT = 0x14

MAX_FRAME = 4 + 255 + 1


class MDCFrameError(ValueError):
    """Bytes that are not one well-formed MDC frame."""


@dataclass(frozen=True)
class MDCFrame:
    """One checksum-valid frame: a request (command, id, data) or a reply (command 0xFF)."""

    command: int
    display_id: int
    data: bytes


@dataclass(frozen=True)
class MDCReply:
    display_id: int
    ack: bool
    command: int  # the command this reply answers (r-command)
    values: bytes  # the current value(s) after an ACK; the error code after a NAK

    @property
    def error_code(self) -> int | None:
        return None if self.ack else (self.values[0] if self.values else 0)


def checksum(body: bytes) -> int:
    """Sum of the bytes after the header, modulo 256."""
    return sum(body) & 0xFF


def encode_frame(command: int, display_id: int, data: bytes = b"") -> bytes:
    """A complete frame, header to checksum."""
    if not 0 <= command <= 0xFF or not 0 <= display_id <= 0xFF:
        raise ValueError("command and display id are single bytes")
    if len(data) > 255:
        raise ValueError(f"at most 255 data bytes, got {len(data)}")
    body = bytes((command, display_id, len(data))) + bytes(data)
    return bytes((HEADER,)) + body + bytes((checksum(body),))


def encode_reply(display_id: int, command: int, values: bytes, ack: bool = True) -> bytes:
    """A display's reply: ACK with the current value(s), or NAK with an error code."""
    return encode_frame(REPLY, display_id, bytes((ACK if ack else NAK, command)) + bytes(values))


def decode_frame(raw: bytes) -> MDCFrame:
    """Exactly one frame; raises MDCFrameError naming what is wrong."""
    if len(raw) < 5:
        raise MDCFrameError(f"frame too short ({len(raw)} bytes)")
    if raw[0] != HEADER:
        raise MDCFrameError(f"header is 0x{raw[0]:02x}, not 0xaa")
    length = raw[3]
    if len(raw) != 5 + length:
        raise MDCFrameError(f"length byte says {length} data bytes, frame has {len(raw) - 5}")
    if checksum(raw[1:-1]) != raw[-1]:
        raise MDCFrameError(f"checksum 0x{raw[-1]:02x}, expected 0x{checksum(raw[1:-1]):02x}")
    return MDCFrame(raw[1], raw[2], bytes(raw[4:-1]))


def parse_reply(frame: MDCFrame) -> MDCReply:
    """Interpret a frame as a display's reply; raises MDCFrameError if it is not one."""
    if frame.command != REPLY:
        raise MDCFrameError(f"command byte 0x{frame.command:02x} where a reply has 0xff")
    if len(frame.data) < 2:
        raise MDCFrameError("reply without ack/nak and r-command")
    if frame.data[0] not in (ACK, NAK):
        raise MDCFrameError(f"reply byte 0x{frame.data[0]:02x} is neither 'A' nor 'N'")
    return MDCReply(frame.display_id, frame.data[0] == ACK, frame.data[1], bytes(frame.data[2:]))


def _complete_frame_at(buf: bytes, k: int) -> bool:
    """Does a complete, checksum-valid frame start at `k`?"""
    if k + 5 > len(buf) or buf[k] != HEADER:
        return False
    end = k + 5 + buf[k + 3]
    return end <= len(buf) and checksum(buf[k + 1:end - 1]) == buf[end - 1]


def _next_valid(buf: bytes, start: int) -> int | None:
    k = buf.find(HEADER, start)
    while k >= 0:
        if _complete_frame_at(buf, k):
            return k
        k = buf.find(HEADER, k + 1)
    return None


def _incomplete_header(buf: bytes, start: int, stop: int) -> bool:
    """Is there a header in buf[start:stop] whose frame has not fully arrived yet?"""
    k = buf.find(HEADER, start, stop)
    while k >= 0:
        if k + 4 > len(buf) or k + 5 + buf[k + 3] > len(buf):
            return True
        k = buf.find(HEADER, k + 1, stop)
    return False


def _skip(items: list[MDCFrame | BadFrame], raw: bytes, reason: str) -> None:
    """Record skipped bytes; adjacent skipped spans are one bad frame (one burst of noise)."""
    if items and isinstance(items[-1], BadFrame):
        last = items[-1]
        reasons = last.reason if reason in str(last.reason).split(" + ") else f"{last.reason} + {reason}"
        items[-1] = BadFrame(last.raw + raw, reasons)
    else:
        items.append(BadFrame(raw, reason))


def split_frames(buf: bytes) -> tuple[list[MDCFrame | BadFrame], bytes]:
    """Split a byte stream into frames; never raises.

    Returns the checksum-valid frames and the skipped bytes (as BadFrame:
    noise before a header, a bad checksum, a frame cut short by the next
    one; adjacent skipped bytes are one BadFrame), plus the tail that may
    still become a frame when more bytes come.
    A candidate frame that fails is skipped only up to the next header that
    starts a valid frame, so a 0xAA in noise cannot swallow a real reply.
    """
    items: list[MDCFrame | BadFrame] = []
    buf = bytes(buf)
    i, n = 0, len(buf)
    while i < n:
        j = buf.find(HEADER, i)
        if j < 0:
            _skip(items, buf[i:], "noise")
            return items, b""
        if j > i:
            _skip(items, buf[i:j], "noise before the header")
        if j + 4 > n:
            return items, buf[j:]
        end = j + 5 + buf[j + 3]
        if end > n:  # incomplete, unless a complete frame starts inside it
            k = _next_valid(buf, j + 1)
            if k is None:
                return items, buf[j:]
            _skip(items, buf[j:k], "truncated frame")
            i = k
            continue
        if checksum(buf[j + 1:end - 1]) != buf[end - 1]:
            k = _next_valid(buf, j + 1)
            if k is not None and k < end:  # a frame starting inside cut this one short
                _skip(items, buf[j:k], "truncated frame")
                i = k
                continue
            if _incomplete_header(buf, j + 1, end):  # a real frame may start inside: wait for its bytes
                return items, buf[j:]
            _skip(items, buf[j:end], "checksum error")
            i = end
            continue
        items.append(MDCFrame(buf[j + 1], buf[j + 2], buf[j + 4:end - 1]))
        i = end
    return items, b""


def split_replies(buf: bytes) -> tuple[list[MDCReply | BadFrame], bytes]:
    """`split_frames` for the controller's side: frames that are not replies are bad."""
    frames, rest = split_frames(buf)
    out: list[MDCReply | BadFrame] = []
    for frame in frames:
        if isinstance(frame, BadFrame):
            out.append(frame)
            continue
        try:
            out.append(parse_reply(frame))
        except MDCFrameError as exc:
            out.append(BadFrame(encode_frame(frame.command, frame.display_id, frame.data), str(exc)))
    return out, rest


def input_code(name: str, value: Any) -> int:
    """A profile's input code: an integer byte (YAML 0x21) or a string "0x21"."""
    code: Any = value
    if isinstance(value, str):
        if not value.lower().startswith("0x"):
            raise ConfigError(f"input {name!r}: write Samsung MDC codes as 0x.. (e.g. 0x21), got {value!r}")
        try:
            code = int(value, 16)
        except ValueError:
            raise ConfigError(f"input {name!r}: {value!r} is not a hex number") from None
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 0xFF:
        raise ConfigError(f"input {name!r}: an MDC input code is one byte (0x00-0xff), got {value!r}")
    return code


