"""LG RS-232C: LG signage and TVs with LG's two-letter text commands.

Many classrooms have LG panels whose serial port speaks this command set;
the driver (edge_agent/drivers/lg_serial.py) reads and sets power, volume,
mute and input on them, and the simulated set (firmware_stubs/displays.py)
answers. The codec is pure functions (so it can be fuzzed).

Frames (LG owner's manuals, "External control device setup" / RS-232C):

    command  [Command1][Command2][ ][Set ID][ ][Data][Cr]    e.g. "ka 01 01\\r"
    ack      [Command2][ ][Set ID][ ][OK][Data][x]           e.g. "a 01 OK01x"
    error    [Command2][ ][Set ID][ ][NG][Data][x]           e.g. "a 01 NG01x"

Set ID and data are hexadecimal (the set answers in lower case); data "ff"
reads the current value. There is no checksum: a reply is good when it
matches the grammar, names the command and comes from our set. Set ID 1-255
is one set, 0 every set on the line (not on all models).

Commands used: `ka` power (00 off, 01 on; some sets acknowledge only when
power-on has finished, hence `power_timeout`), `kf` volume (00-64 hex, i.e.
0-100), `ke` volume mute (NOTE the inverted sense: 00 = mute on / sound off,
01 = mute off / sound on; `kd` is *screen* mute, not used), `xb` input (e.g.
60 RGB-PC, 70 DVI-PC, 90 HDMI1, 91 HDMI2, a0 HDMI1-PC, c0 DisplayPort, d0
DisplayPort-PC; sets differ, the profile lists its own). Many sets answer
nothing but `ka` in standby, so a poll of a set that is off reports `power`
only.

NG codes: 00 or 01 illegal code, 02 function not supported (both:
`ActionRejected` for an action), 03 wait more time (the set is busy:
`DeviceError`, worth retrying later). Any NG to a poll is a `DeviceError`.

Metrics: `power` and `muted` are "on"/"off", `volume` 0-100, `input` the
profile's name for the code, or "0x.." for a code the profile does not name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from campus.errors import ConfigError
from campus.i18n import N_, LazyText
from protocols import serial_line
from protocols.serial_line import BadFrame
from protocols.spec import Address, Field, Protocol

NAME = "lg_serial"
ID_FIELD = "set_id"
DEFAULT_ID = 1

ADDRESS = Address(fields=(
    serial_line.serial_port(N_("RS-232 port, e.g. /dev/ttyUSB0")),
    Field(ID_FIELD, "int", minimum=0, maximum=255, default=DEFAULT_ID),
    *serial_line.LINE,
))

PROTOCOL = Protocol(name=NAME, label="LG display (RS-232)", address=ADDRESS,
                    driver="edge_agent.drivers.lg_serial:LGSerialDriver",
                    simulator="firmware_stubs.displays:simulator_for")

BROADCAST_ID = 0
# Marked for translation: the meaning is shown inside a refusal's sentence (a command result's detail).
NG_MEANINGS = {"00": N_("illegal code"), "01": N_("illegal code"), "02": N_("function not supported"),
               "03": N_("wait more time (the set is busy)")}
NG_BUSY = "03"

_REPLY = re.compile(rb"([a-z]) ([0-9A-Fa-f]{2}) (OK|NG)([0-9A-Fa-f]*)x")
_COMMAND = re.compile(r"([a-z]{2}) ([0-9A-Fa-f]{2}) ([0-9A-Fa-f]{2}(?: [0-9A-Fa-f]{2})*)")
HEX2 = re.compile(r"[0-9a-f]{2}")
MAX_REPLY = 64  # far longer than any reply this driver expects
MAX_COMMAND = 64


class LGFrameError(ValueError):
    """Bytes that are not one well-formed LG command."""


@dataclass(frozen=True)
class LGCommand:
    command: str  # two letters, e.g. "ka"
    set_id: int
    data: str  # lower-case hex, e.g. "01" or "ff"


@dataclass(frozen=True)
class LGReply:
    command2: str  # the command's second letter, e.g. "a" for "ka"
    set_id: int
    ok: bool
    data: str  # lower-case hex: the value after OK, the error code after NG


def encode_command(command: str, set_id: int, data: str) -> bytes:
    """`ka 01 01\\r`: command letters, set id and data in hex, carriage return."""
    if not re.fullmatch(r"[a-z]{2}", command):
        raise ValueError(f"command must be two lower-case letters, got {command!r}")
    if not 0 <= set_id <= 0xFF:
        raise ValueError(f"set id must be 0-255, got {set_id}")
    if not re.fullmatch(r"[0-9A-Fa-f]{2}( [0-9A-Fa-f]{2})*", data):
        raise ValueError(f"data must be hex byte(s), got {data!r}")
    return f"{command} {set_id:02x} {data.lower()}\r".encode("ascii")


def encode_reply(command2: str, set_id: int, ok: bool, data: str) -> bytes:
    """`a 01 OK01x`: what a set answers."""
    return f"{command2} {set_id:02x} {'OK' if ok else 'NG'}{data.lower()}x".encode("ascii")


def split_replies(buf: bytes) -> tuple[list[LGReply | BadFrame], bytes]:
    """Split what a set sent into replies; never raises.

    Bytes before a reply that are not white space are a BadFrame (noise, or
    a garbled reply). Bytes that do not yet form a reply are kept, at most
    MAX_REPLY of them: a reply cannot be longer, so older bytes are noise.
    """
    items: list[LGReply | BadFrame] = []
    buf = bytes(buf)
    pos = 0
    for m in _REPLY.finditer(buf):
        skipped = buf[pos:m.start()]
        if skipped.strip():
            items.append(BadFrame(skipped, "noise or a garbled reply"))
        items.append(LGReply(m.group(1).decode(), int(m.group(2), 16), m.group(3) == b"OK",
                             m.group(4).decode().lower()))
        pos = m.end()
    rest = buf[pos:]
    if len(rest) > MAX_REPLY:
        items.append(BadFrame(rest[:-MAX_REPLY], "noise"))
        rest = rest[-MAX_REPLY:]
    return items, rest


def parse_command(line: bytes) -> LGCommand:
    """One command line (without or with its CR); raises LGFrameError."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise LGFrameError("not ASCII") from None
    m = _COMMAND.fullmatch(text)
    if not m:
        raise LGFrameError(f"not an LG command: {text[:MAX_COMMAND]!r}")
    return LGCommand(m.group(1), int(m.group(2), 16), m.group(3).lower())


def split_commands(buf: bytes) -> tuple[list[LGCommand | BadFrame], bytes]:
    """The set's side: split received bytes at CR into commands; never raises."""
    items: list[LGCommand | BadFrame] = []
    buf = bytes(buf)
    *lines, rest = buf.split(b"\r")
    for line in lines:
        if not line.strip():
            continue
        try:
            items.append(parse_command(line))
        except LGFrameError as exc:
            items.append(BadFrame(line, str(exc)))
    if len(rest) > MAX_COMMAND:
        items.append(BadFrame(rest, "line too long"))
        rest = b""
    return items, rest


def input_code(name: str, value: Any) -> str:
    """A profile's input code: two hex digits as a string ("90", "a0")."""
    if not isinstance(value, str) or not HEX2.fullmatch(value.lower()):
        raise ConfigError(f"input {name!r}: write LG input codes as two quoted hex digits "
                          f"(e.g. \"90\" for HDMI1), got {value!r}")
    return value.lower()


def ng_meaning(code: str) -> LazyText:
    """What an NG code means, marked for translation (a parameter of the driver's refusal)."""
    return LazyText(NG_MEANINGS.get(code, N_("unknown error code")))


