"""What the serial-line protocols share: skipped-bytes reports and the line settings of an address.

`BadFrame` is what a pure frame splitter (Samsung MDC, LG) returns for bytes it skipped, so the
driver can count them and the simulator can ignore them alike. The line settings (baud rate, byte
size, parity, stop bits) are address fields of every serial device; displays accept any rate their
set can be configured to, card readers one of the standard rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from campus.i18n import LazyText
from protocols.spec import Field


@dataclass(frozen=True)
class BadFrame:
    """Bytes a frame splitter skipped, and why (noise, checksum, truncated, ...)."""

    raw: bytes
    reason: str | LazyText  # marked for translation where a page may show it (a meter's checksum)


# A pure splitter: (buffer) -> (frames and BadFrames found, bytes kept for later).
Scanner = Callable[[bytes], tuple[list[Any], bytes]]

SERIAL_PORT = Field("serial", "text", required=True, label="the path of the serial port (e.g. /dev/ttyUSB0)")
STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

# Any line a device can be set to (displays, Modbus RTU).
LINE = (
    Field("baudrate", "int", minimum=1, form=False),
    Field("bytesize", "choice", choices=(5, 6, 7, 8), form=False),
    Field("parity", "choice", choices=("N", "E", "O", "M", "S"), form=False),
    Field("stopbits", "choice", choices=(1, 1.5, 2), form=False),
)

# Card readers: the standard rates and parities only.
READER_LINE = (
    Field("baudrate", "choice", choices=STANDARD_BAUDRATES, default=9600),
    Field("bytesize", "choice", choices=(5, 6, 7, 8), form=False),
    Field("parity", "choice", choices=("N", "E", "O"), form=False),
    Field("stopbits", "choice", choices=(1, 1.5, 2), form=False),
)


def serial_port(hint: str) -> Field:
    """The `serial` field with this protocol's example for the form."""
    return replace(SERIAL_PORT, hint=hint)
