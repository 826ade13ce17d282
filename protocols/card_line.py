"""Card readers that send one UID per line: 13.56 MHz (Mifare) serial readers, keyboard-style readers.

One UID per line (CR, LF or CR LF; silence also ends a line), 4- or 7-byte UIDs as 8 or 14 hex
digits (optionally with `:`, `-` or space between bytes), or a 4-byte UID as 10 decimal digits
(USB keyboard style). The parser is pure, incremental and never raises, so it can be fuzzed.
"""

from __future__ import annotations

import re
from typing import ClassVar

from campus.i18n import N_
from protocols import serial_line
from protocols.spec import Address, Protocol

NAME = "card_line"
CR, LF = 0x0D, 0x0A
MAX_LINE = 64                  # longer than any UID line: the rest of it is discarded
UID_FORMATS = ("auto", "hex", "decimal")
BYTE_ORDERS = ("big", "little")

ADDRESS = Address(fields=(serial_line.serial_port(N_("reader port, e.g. /dev/ttyUSB1")), *serial_line.READER_LINE))

PROTOCOL = Protocol(name=NAME, label="UID-per-line card reader (serial)", address=ADDRESS,
                    driver="edge_agent.drivers.card_reader:LineReaderDriver",
                    simulator="firmware_stubs.card_reader:simulator_for")


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
