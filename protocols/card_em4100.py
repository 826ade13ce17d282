"""EM4100 (125 kHz) card readers in ASCII mode: RDM6300, ID-12LA/ID-20LA, on a serial line.

Frame (checked against the ID-Innovations ID-12LA/ID-20LA datasheet and Tasmota's RDM6300 driver;
their examples are test vectors in the tests), 9600 8N1: STX 0x02, 10 ASCII-hex digits
(version/customer byte + 32-bit ID), 2 ASCII-hex digits of the XOR of those 5 bytes, ETX 0x03.
ID-12LA/ID-20LA put CR LF between the checksum and ETX; other readers send CR LF after ETX: both
are accepted. The parser is pure, incremental and never raises, so it can be fuzzed; the driver
(edge_agent/drivers/card_reader.py) feeds it, the simulated reader (firmware_stubs/card_reader.py)
sends `encode_frame`.
"""

from __future__ import annotations

from typing import ClassVar

from campus.i18n import N_
from protocols import serial_line
from protocols.spec import Address, Protocol

NAME = "card_em4100"
STX, ETX, CR, LF = 0x02, 0x03, 0x0D, 0x0A
EM4100_BODY_LEN = 12          # 10 data + 2 checksum ASCII-hex characters
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")

ADDRESS = Address(fields=(serial_line.serial_port(N_("reader port, e.g. /dev/ttyUSB1")), *serial_line.READER_LINE))

PROTOCOL = Protocol(name=NAME, label="EM4100 card reader (serial)", address=ADDRESS,
                    driver="edge_agent.drivers.card_reader:EM4100ReaderDriver",
                    simulator="firmware_stubs.card_reader:simulator_for")


def xor_checksum(data: bytes) -> int:
    """XOR of all bytes: the EM4100 ASCII-frame checksum over the 5 ID bytes."""
    acc = 0
    for b in data:
        acc ^= b
    return acc


def encode_frame(uid: str, crlf: bool = False) -> bytes:
    """The frame a reader sends for a 5-byte ID (10 hex digits); `crlf` as ID-12LA/ID-20LA do."""
    data = bytes.fromhex(uid)
    if len(data) != 5:
        raise ValueError(f"an EM4100 ID is 5 bytes (10 hex digits), got {uid!r}")
    body = f"{data.hex().upper()}{xor_checksum(data):02X}".encode()
    return bytes((STX,)) + body + (b"\r\n" if crlf else b"") + bytes((ETX,))


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
