"""Campus-card reader simulators: what a real reader writes on its serial line, on a pty.

Why this module exists: the card-reader driver must be tested against the
bytes real readers send, over a real serial open path, including the ways a
real line misbehaves. `EM4100Reader` writes 125 kHz EM4100 ASCII frames
(RDM6300 / ID-12LA style: STX, 10 hex digits, XOR checksum, optional CR LF,
ETX); `LineReader` writes one UID per line like 13.56 MHz Mifare serial
readers (hex) and keyboard-style readers (10 decimal digits). A card held on
the reader repeats its frame (`swipe(uid, repeats=…)`); a test can send a
bad checksum, a truncated frame, line noise or raw bytes. Frames are built
here independently of the driver's parser, so the two check each other.

For the demo, `swipe_every_s` makes the reader swipe cards from a
deterministic, seeded deck by itself; or, given a class `roster` (the card
UIDs of the room's class) and the school's `class_periods`, it swipes those
cards as a class arrives (`plan_period`: most on time, some late, a few
absent, the odd card swiped twice, and now and then an unknown card from the
deck), so the demo's class register fills. Bytes nobody reads are discarded
when the pty's input queue fills, as a UART would lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import random
import struct
import termios
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self
from zoneinfo import ZoneInfo

from firmware_stubs.pty import PtyPort
from protocols import card_em4100, card_line

_PTY_QUEUE_LIMIT = 2048  # flush the unread input beyond this (a pty's raw queue holds ~4 KiB)
DEFAULT_TIMEZONE = "Asia/Shanghai"

# A class arriving, in fractions of the period's length from its start (a 10-minute demo period: on time
# within a minute either side of the bell, late from 5.5 to 8.5 minutes in, which a 5-minute grace calls late).
ON_TIME = (-0.1, 0.08)
LATE = (0.55, 0.85)
P_ABSENT, P_LATE, P_TWICE, P_UNKNOWN = 0.08, 0.12, 0.15, 0.6
DEFAULT_CATCH_UP_S = 30.0  # swipes planned before now (a period under way at start) are spread over this


def plan_period(cards: Sequence[str], unknown: Sequence[str], start: float, end: float,
                rng: random.Random) -> list[tuple[float, str]]:
    """When each card of a class is swiped for the period from `start` to `end` (unix times): (time, UID)
    pairs in time order. Each card is on time, late or absent (never swiped); some on-time cards are
    swiped again later (a register folds the repeat); with `unknown` cards, one of them now and then."""
    length = end - start
    plan: list[tuple[float, str]] = []
    for card in cards:
        r = rng.random()
        if r < P_ABSENT:
            continue
        late = r < P_ABSENT + P_LATE
        at = start + length * rng.uniform(*(LATE if late else ON_TIME))
        plan.append((at, card))
        if not late and rng.random() < P_TWICE:
            plan.append((at + length * rng.uniform(0.1, 0.4), card))
    if unknown and rng.random() < P_UNKNOWN:
        plan.append((start + length * rng.uniform(-0.1, 0.9), rng.choice(list(unknown))))
    return sorted(plan)


def parse_class_periods(periods: Sequence[Sequence[Any]]) -> list[tuple[int, int, int]]:
    """`[[weekday, "HH:MM", "HH:MM"], ...]` (ISO weekday, Monday 1; local times) as (weekday, start minute,
    end minute); ValueError naming the entry that is wrong."""
    out = []
    for i, entry in enumerate(periods):
        try:
            weekday, start, end = entry
            minutes = [int(h) * 60 + int(m) for h, m in (str(t).split(":") for t in (start, end))]
            if not (1 <= int(weekday) <= 7 and 0 <= minutes[0] < minutes[1] <= 24 * 60):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"class_periods[{i}] must be [weekday 1-7, \"HH:MM\", \"HH:MM\"] with the start "
                             f"before the end, got {entry!r}") from None
        out.append((int(weekday), minutes[0], minutes[1]))
    return out


def period_windows(periods: Sequence[tuple[int, int, int]], timezone: str, after: float) -> Iterator[tuple[float, float]]:
    """The occurrences (start, end as unix times) of weekly `periods` in `timezone` that end after `after`,
    in time order, day after day."""
    if not periods:
        return
    zone = ZoneInfo(timezone)
    day = datetime.fromtimestamp(after, zone).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    while True:
        for _weekday, start, end in sorted((p for p in periods if p[0] == day.isoweekday()), key=lambda p: p[1]):
            begins, ends = ((day + timedelta(minutes=m)).replace(tzinfo=zone).timestamp() for m in (start, end))
            if ends > after:
                yield begins, ends
        day += timedelta(days=1)


class _CardReaderSim:
    """Shared machinery: the pty, counters, misbehaviour flags and the background swiper."""

    def __init__(self, link: str | Path | None = None, seed: int = 1, *, swipe_every_s: float | None = None,
                 deck_size: int = 40, hold_repeats: int = 3, repeat_interval_s: float = 0.1,
                 error_rate: float = 0.0, roster: Sequence[str] = (),
                 class_periods: Sequence[tuple[int, int, int]] = (), timezone: str = DEFAULT_TIMEZONE,
                 catch_up_s: float = DEFAULT_CATCH_UP_S) -> None:
        self.port = PtyPort(link)
        self.seed = seed
        self.swipe_every_s = swipe_every_s
        self.hold_repeats = max(1, hold_repeats)
        self.repeat_interval_s = repeat_interval_s
        self.error_rate = error_rate
        self.rng = random.Random(f"{seed}-line")
        self.deck: list[str] = self._make_deck(random.Random(f"{seed}-deck"), deck_size)
        self.roster = list(roster)  # the room's class: swiped in its periods instead of the deck
        self.class_periods = list(class_periods)
        self.timezone = timezone
        self.catch_up_s = catch_up_s
        ZoneInfo(timezone)  # a wrong name fails here, not in the background task
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0, "truncated": 0, "noise_bytes": 0,
                                         "swipes": 0, "overrun_bytes": 0}
        self._corrupt_next = False
        self._truncate_next = False
        self._path = ""
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- overridden per reader type

    def _make_deck(self, rng: random.Random, n: int) -> list[str]:
        raise NotImplementedError

    def _frame(self, uid: str) -> bytes:
        raise NotImplementedError

    def _corrupt(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def _truncate(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def _noise(self, n: int) -> bytes:
        raise NotImplementedError

    # ------------------------------------------------------------- lifecycle

    @property
    def path(self) -> str:
        """What a driver opens: the symlink if one was given, else the pty's own path (after start)."""
        return self._path

    @property
    def frames_sent(self) -> int:
        """Valid frames written (each repeat of a held card counts)."""
        return self.counters["frames"]

    async def start(self) -> None:
        self._path = self.port.open()
        if self.roster and self.class_periods:
            self._task = asyncio.create_task(self._swipe_roster_forever(), name=f"card-sim-{self._path}")
        elif self.swipe_every_s:
            self._task = asyncio.create_task(self._swipe_forever(), name=f"card-sim-{self._path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.port.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------- what a test calls

    def corrupt_next(self) -> None:
        """The next frame goes out damaged (EM4100: wrong checksum; line reader: a non-hex character)."""
        self._corrupt_next = True

    def truncate_next(self) -> None:
        """The next frame is cut short (EM4100: no ETX; line reader: digits lost before the line end)."""
        self._truncate_next = True

    def send_raw(self, data: bytes) -> None:
        self._write(data)

    def noise(self, n: int) -> bytes:
        """Write `n` bytes of line noise that can never be part of a frame; returns them."""
        data = self._noise(n)
        self.counters["noise_bytes"] += n
        self._write(data)
        return data

    def send_frame(self, uid: str) -> None:
        """One read of `uid`, with any pending misbehaviour applied."""
        frame = self._frame(uid)
        if self._corrupt_next:
            self._corrupt_next = False
            frame = self._corrupt(frame)
            self.counters["corrupt"] += 1
        elif self._truncate_next:
            self._truncate_next = False
            frame = self._truncate(frame)
            self.counters["truncated"] += 1
        else:
            self.counters["frames"] += 1
        self._write(frame)

    async def swipe(self, uid: str, repeats: int = 1, interval: float = 0.1) -> None:
        """Present a card: its frame `repeats` times, `interval` seconds apart (a card held on the reader)."""
        self.counters["swipes"] += 1
        for i in range(repeats):
            if i:
                await asyncio.sleep(interval)
            self.send_frame(uid)

    # ------------------------------------------------------------- internals

    def _write(self, data: bytes) -> None:
        if self.port.master < 0:
            raise RuntimeError("card reader simulator is not started")
        # With no client reading, the pty fills and PtyPort.write would spin: drop what nobody read.
        with contextlib.suppress(OSError):
            queued = struct.unpack("i", fcntl.ioctl(self.port.slave, termios.FIONREAD, b"\0\0\0\0"))[0]
            if queued + len(data) > _PTY_QUEUE_LIMIT:
                termios.tcflush(self.port.slave, termios.TCIFLUSH)
                self.counters["overrun_bytes"] += queued
        self.port.write(data)

    async def _swipe_forever(self) -> None:
        assert self.swipe_every_s
        while True:
            await asyncio.sleep(self.swipe_every_s * self.rng.uniform(0.5, 1.5))
            if self.error_rate and self.rng.random() < self.error_rate:
                fault = self.rng.randrange(3)
                if fault == 0:
                    self.corrupt_next()
                elif fault == 1:
                    self.truncate_next()
                else:
                    self.noise(self.rng.randint(1, 8))
            uid = self.rng.choice(self.deck)
            await self.swipe(uid, repeats=self.rng.randint(1, self.hold_repeats), interval=self.repeat_interval_s)


    async def _swipe_roster_forever(self) -> None:
        """The class arrives for each period (`plan_period`). Swipes planned before now (the period under
        way when the demo began) are spread over the next `catch_up_s` seconds rather than sent at once: the
        agent may not have opened the port yet, and opening a serial port flushes what waited in it."""
        on_roster = set(self.roster)
        unknown = [card for card in self.deck if card not in on_roster]
        for start, end in period_windows(self.class_periods, self.timezone, time.time()):
            plan = plan_period(self.roster, unknown, start, end, self.rng)
            gap = self.catch_up_s / max(1, sum(1 for at, _ in plan if at <= time.time()))
            for at, uid in plan:
                wait = at - time.time()
                await asyncio.sleep(wait if wait > 0 else gap * self.rng.uniform(0.5, 1.5))
                await self.swipe(uid, repeats=self.rng.randint(1, self.hold_repeats), interval=self.repeat_interval_s)
            await asyncio.sleep(max(0.0, end - time.time()))


class EM4100Reader(_CardReaderSim):
    """A 125 kHz EM4100 reader: `swipe("14008EC793")` sends `02 "14008EC793" "CE" 03`.

    `crlf=True` adds CR LF between the checksum and ETX, as ID-12LA/ID-20LA do.
    """

    def __init__(self, link: str | Path | None = None, seed: int = 1, *, crlf: bool = False, **kwargs: Any) -> None:
        self.crlf = crlf
        super().__init__(link, seed, **kwargs)

    def _make_deck(self, rng: random.Random, n: int) -> list[str]:
        version = rng.randrange(1, 256)  # one batch of school cards shares a customer/version byte
        return [f"{version:02X}{rng.randrange(1, 2**32):08X}" for _ in range(n)]

    def _frame(self, uid: str) -> bytes:
        return card_em4100.encode_frame(uid, self.crlf)

    def _corrupt(self, frame: bytes) -> bytes:
        good = int(frame[11:13], 16)
        bad = good ^ self.rng.randrange(1, 256)
        return frame[:11] + f"{bad:02X}".encode() + frame[13:]

    def _truncate(self, frame: bytes) -> bytes:
        return frame[:self.rng.randint(2, 11)]  # STX and part of the digits, never the ETX

    def _noise(self, n: int) -> bytes:
        allowed = [b for b in range(256) if b not in (0x02, 0x03, 0x0A, 0x0D)]
        return bytes(self.rng.choice(allowed) for _ in range(n))


class LineReader(_CardReaderSim):
    """A reader that sends one UID per line: `swipe("04A1B2C3D4E5F6")`, `swipe("0012345678")`.

    The text passed to `swipe` is sent as is, followed by `eol`. The deck used by
    the background swiper holds 4- and 7-byte hex UIDs (`uid_format="hex"`) or
    4-byte UIDs as 10 decimal digits (`uid_format="decimal"`).
    """

    def __init__(self, link: str | Path | None = None, seed: int = 1, *, uid_format: str = "hex",
                 eol: bytes = b"\r\n", **kwargs: Any) -> None:
        if uid_format not in ("hex", "decimal"):
            raise ValueError(f"uid_format must be hex or decimal, got {uid_format!r}")
        self.uid_format = uid_format
        self.eol = eol
        super().__init__(link, seed, **kwargs)

    def _make_deck(self, rng: random.Random, n: int) -> list[str]:
        deck = []
        for _ in range(n):
            if self.uid_format == "decimal":
                deck.append(f"{rng.randrange(1, 2**32):010d}")
            elif rng.random() < 0.3:  # 7-byte UIDs start with the NXP manufacturer byte 0x04
                deck.append("04" + "".join(f"{rng.randrange(256):02X}" for _ in range(6)))
            else:
                deck.append(f"{rng.randrange(1, 2**32):08X}")
        return deck

    def _frame(self, uid: str) -> bytes:
        return uid.encode("ascii") + self.eol

    def _corrupt(self, frame: bytes) -> bytes:
        text = bytearray(frame[:-len(self.eol)])
        text[self.rng.randrange(len(text))] = ord(self.rng.choice("GHJKXZ?*"))
        return bytes(text) + self.eol

    def _truncate(self, frame: bytes) -> bytes:
        text = frame[:-len(self.eol)]
        return text[:self.rng.randint(1, len(text) - 1)] + self.eol

    def _noise(self, n: int) -> bytes:
        # Control and 8-bit bytes (never CR/LF): a burst the reader's next line end closes.
        allowed = [b for b in range(256) if (b < 0x20 or b >= 0x7F) and b not in (0x09, 0x0A, 0x0D)]
        return bytes(self.rng.choice(allowed) for _ in range(n)) + self.eol


def simulator_for(dev: Any, index: int) -> EM4100Reader | LineReader:
    """The simulator for one card-reader device of a gateway config (not started).

    `dev` is a `device_profiles.config.DeviceConfig`; the pty is symlinked at
    `dev.address["serial"]`, the path the agent opens. `dev.simulator` options:
    `seed` (default index + 1), `swipe_every_s` (background swipes; default
    off), `deck_size` (40), `hold_repeats` (3), `repeat_interval_s` (0.1),
    `error_rate` (0: share of background swipes preceded by a bad frame or
    noise), EM4100 `crlf` (false), line reader `uid_format` (hex | decimal);
    `roster` (card UIDs as the reader sends them), `class_periods`
    ([[weekday, "HH:MM", "HH:MM"], ...]) and `timezone` (Asia/Shanghai) make it
    swipe the roster's cards as a class arrives in those periods instead
    (`catch_up_s`, 30: over how long the arrivals already due at start go out).
    """
    opts = dict(dev.simulator)
    protocol = dev.profile_obj.protocol
    common: dict[str, Any] = {
        "swipe_every_s": float(opts["swipe_every_s"]) if opts.get("swipe_every_s") else None,
        "deck_size": int(opts.get("deck_size", 40)),
        "hold_repeats": int(opts.get("hold_repeats", 3)),
        "repeat_interval_s": float(opts.get("repeat_interval_s", 0.1)),
        "error_rate": float(opts.get("error_rate", 0.0)),
        "roster": [str(card) for card in opts.get("roster") or ()],
        "class_periods": parse_class_periods(opts.get("class_periods") or ()),
        "timezone": str(opts.get("timezone", DEFAULT_TIMEZONE)),
        "catch_up_s": float(opts.get("catch_up_s", DEFAULT_CATCH_UP_S)),
    }
    link, seed = dev.address["serial"], int(opts.get("seed", index + 1))
    if protocol == card_em4100.NAME:
        return EM4100Reader(link, seed, crlf=bool(opts.get("crlf", False)), **common)
    if protocol == card_line.NAME:
        return LineReader(link, seed, uid_format=str(opts.get("uid_format", "hex")), **common)
    raise ValueError(f"device {dev.id}: protocol {protocol!r} is not a card reader")
