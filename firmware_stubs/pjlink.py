"""A classroom projector behind a real PJLink TCP server (class 1 or class 2).

`PJLinkProjector` models what a facility manager and a teacher see of a
projector: standby -> warming (for `warmup_s`) -> on -> cooling (for
`cooldown_s`) -> standby, the selected input, AV mute, lamp hours counting
while the lamp is lit (sped up by `time_scale`), filter hours (class 2) and
the six `ERST` error flags. It answers like a real projector: `ERR3` for
input and mute while not on (also in standby), `ERR2` for an input it does
not have, `ERR1` for a command its class lacks, `PJLINK ERRA` and a closed
connection for a wrong password, and it closes connections idle for
`idle_timeout_s` (30 s, as projectors do). State advances lazily from a
monotonic clock, so there is no ticking task and, for the same seed and
the same timing, the same answers.

Misbehaviour a test can switch on at any time: `fault_error` (ERST reports
the fault, e.g. a lamp error, and set commands answer ERR4), `silent`
(accepts connections, never says a word), `garbage` (`True`: junk bytes
instead of replies; `"overlong"`: a 200-byte line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from campus.errors import ConfigError
from protocols.pjlink import CLASS1_INPUT, CLASS2_INPUT, MAX_LINE, PJLINK_PORT, POWER, auth_digest

if TYPE_CHECKING:
    from device_profiles.config import DeviceConfig

log = logging.getLogger(__name__)

LIT = ("1", "3")  # the lamp burns while on and while warming up
CLASS2_ONLY = {"FILT", "SNUM", "SVER", "RLMP", "RFIL", "FREZ"}
QUERIES = {"ERST", "LAMP", "INST", "NAME", "INF1", "INF2", "INFO", "CLSS", "FILT", "SNUM", "SVER", "RLMP", "RFIL"}
DEFAULT_INPUTS = ("11", "21", "32", "33", "51")


class PJLinkProjector:
    """A simulated PJLink projector listening on host:port."""

    def __init__(self, host: str = "127.0.0.1", port: int = PJLINK_PORT, *, password: str | None = None,
                 pjlink_class: int = 1, warmup_s: float = 30.0, cooldown_s: float = 60.0,
                 lamp_hours: float = 0.0, filter_hours: float = 0.0, inputs: Sequence[str] = DEFAULT_INPUTS,
                 input: str | None = None, power: str = "off", time_scale: float = 1.0, seed: int = 1,
                 name: str = "classroom-projector", manufacturer: str = "CAMPUS", model: str = "SIM-PJ1",
                 idle_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if pjlink_class not in (1, 2):
            raise ValueError(f"pjlink_class must be 1 or 2, got {pjlink_class!r}")
        pattern = CLASS2_INPUT if pjlink_class == 2 else CLASS1_INPUT
        self.inputs = [str(c).upper() for c in inputs]
        bad = [c for c in self.inputs if not pattern.fullmatch(c)]
        if bad or not self.inputs:
            raise ValueError(f"inputs must be PJLink class {pjlink_class} input codes, got {bad or 'none'}")
        if power not in ("off", "on"):
            raise ValueError(f"power must start 'off' or 'on', got {power!r}")
        self.host, self.port, self.password, self.pjlink_class = host, port, password, pjlink_class
        self.warmup_s, self.cooldown_s, self.time_scale = warmup_s, cooldown_s, time_scale
        self.name, self.manufacturer, self.model = name, manufacturer, model
        self.idle_timeout_s = idle_timeout_s
        self.input = str(input).upper() if input is not None else self.inputs[0]
        self.video_mute = self.audio_mute = False
        self.frozen = False
        self.errors = "000000"          # ERST digits a test may set (warnings) without failing commands
        self.fault_error: bool | str = False
        self.silent = False
        self.garbage: bool | str = False
        self.log: list[tuple[str, str]] = []   # (command without auth prefix, reply) in arrival order
        self.connections = 0
        self.auth_failures = 0
        self._rng = random.Random(seed)
        self._clock = clock
        self._t = clock()
        self._power = "1" if power == "on" else "0"
        self._until: float | None = None
        self._lamp_s = lamp_hours * 3600.0
        self._filter_s = filter_hours * 3600.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ state

    def _run_lamp(self, t: float) -> None:
        if self._power in LIT:
            self._lamp_s += (t - self._t) * self.time_scale
            self._filter_s += (t - self._t) * self.time_scale
        self._t = t

    def _advance(self) -> None:
        now = self._clock()
        while self._until is not None and self._until <= now:
            self._run_lamp(self._until)
            self._power = {"3": "1", "2": "0"}[self._power]
            self._until = None
        self._run_lamp(now)

    @property
    def power(self) -> str:
        """`off`, `on`, `warming` or `cooling` (the contract's names)."""
        self._advance()
        return POWER[self._power]

    @property
    def muted(self) -> bool:
        return self.video_mute and self.audio_mute

    @property
    def lamp_hours(self) -> int:
        self._advance()
        return int(self._lamp_s // 3600)

    @lamp_hours.setter
    def lamp_hours(self, hours: float) -> None:
        self._advance()
        self._lamp_s = hours * 3600.0

    @property
    def filter_hours(self) -> int:
        self._advance()
        return int(self._filter_s // 3600)

    @property
    def commands(self) -> list[str]:
        """Every command received, in order, without the auth prefix."""
        return [c for c, _ in self.log]

    def _fault(self) -> str | None:
        if not self.fault_error:
            return None
        return self.fault_error if isinstance(self.fault_error, str) else "020000"  # lamp error

    # ------------------------------------------------------------ protocol

    def answer(self, line: str) -> str | None:
        """The reply (without CR) to one command line, or None for a line that is not PJLink."""
        if len(line) < 7 or line[0] != "%" or line[6] != " " or len(line) + 1 > MAX_LINE:
            if len(line) >= 6 and line[0] == "%" and line[1] in "12":
                return f"{line[:6]}=ERR1"
            return None
        cls, cmd, param = line[1], line[2:6].upper(), line[7:]
        head = f"%{cls}{cmd}="
        if cls not in "12" or int(cls) > self.pjlink_class or (cls == "1" and cmd in CLASS2_ONLY):
            return head + "ERR1"
        if cmd in QUERIES and param != "?":
            return head + "ERR2"
        handler = getattr(self, f"_cmd_{cmd.lower()}", None)
        if handler is None:
            return head + "ERR1"
        self._advance()
        return head + handler(cls, param)

    def _cmd_powr(self, cls: str, param: str) -> str:
        if param == "?":
            return self._power
        if param not in ("0", "1"):
            return "ERR2"
        if self._fault():
            return "ERR4"
        now = self._clock()
        if param == "1":
            if self._power == "2":
                return "ERR3"   # cannot switch on during the cool-down
            if self._power == "0":
                self._power, self._until = "3", now + self.warmup_s
        else:
            if self._power == "3":
                return "ERR3"   # cannot switch off during the warm-up
            if self._power == "1":
                self._power, self._until = "2", now + self.cooldown_s
                self.video_mute = self.audio_mute = self.frozen = False
        self._advance()
        return "OK"

    def _cmd_inpt(self, cls: str, param: str) -> str:
        pattern = CLASS2_INPUT if cls == "2" else CLASS1_INPUT
        if param == "?":
            if self._power != "1":
                return "ERR3"
            return self.input if pattern.fullmatch(self.input) else "ERR3"
        if not pattern.fullmatch(param.upper()):
            return "ERR2"
        if self._fault():
            return "ERR4"
        if self._power != "1":
            return "ERR3"
        if param.upper() not in self.inputs:
            return "ERR2"
        self.input = param.upper()
        return "OK"

    def _cmd_avmt(self, cls: str, param: str) -> str:
        if param == "?":
            if self._power != "1":
                return "ERR3"
            if self.video_mute and self.audio_mute:
                return "31"
            return "11" if self.video_mute else "21" if self.audio_mute else "30"
        if param not in ("10", "11", "20", "21", "30", "31"):
            return "ERR2"
        if self._fault():
            return "ERR4"
        if self._power != "1":
            return "ERR3"
        on = param[1] == "1"
        if param[0] in "13":
            self.video_mute = on
        if param[0] in "23":
            self.audio_mute = on
        return "OK"

    def _cmd_erst(self, cls: str, param: str) -> str:
        return self._fault() or self.errors

    def _cmd_lamp(self, cls: str, param: str) -> str:
        return f"{min(int(self._lamp_s // 3600), 99999)} {1 if self._power in LIT else 0}"

    def _cmd_inst(self, cls: str, param: str) -> str:
        if param != "?":
            return "ERR2"
        pattern = CLASS2_INPUT if cls == "2" else CLASS1_INPUT
        return " ".join(c for c in self.inputs if pattern.fullmatch(c))

    def _cmd_name(self, cls: str, param: str) -> str:
        return self.name

    def _cmd_inf1(self, cls: str, param: str) -> str:
        return self.manufacturer

    def _cmd_inf2(self, cls: str, param: str) -> str:
        return self.model

    def _cmd_info(self, cls: str, param: str) -> str:
        return "campus-iot simulator"

    def _cmd_clss(self, cls: str, param: str) -> str:
        return str(self.pjlink_class)

    def _cmd_filt(self, cls: str, param: str) -> str:
        return str(min(int(self._filter_s // 3600), 99999))

    def _cmd_snum(self, cls: str, param: str) -> str:
        return f"SIM{self.port:05d}"

    def _cmd_sver(self, cls: str, param: str) -> str:
        return "1.0.0"

    def _cmd_rlmp(self, cls: str, param: str) -> str:
        return "LMP-SIM1"

    def _cmd_rfil(self, cls: str, param: str) -> str:
        return "FLT-SIM1"

    def _cmd_frez(self, cls: str, param: str) -> str:
        if param not in ("?", "0", "1"):
            return "ERR2"
        if self._power != "1":
            return "ERR3"
        if param == "?":
            return "1" if self.frozen else "0"
        self.frozen = param == "1"
        return "OK"

    def _encode(self, reply: str) -> bytes:
        if self.garbage == "overlong":
            return reply[:7].encode() + b"0" * 200 + b"\r"
        if self.garbage:
            return b"\xff\xfe" + bytes(self._rng.randrange(32, 127) for _ in range(10)) + b"\r"
        return reply.encode("utf-8") + b"\r"

    # ------------------------------------------------------------ server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self.silent:
                await reader.read()  # a hung projector: holds the connection, says nothing
                return
            token = None
            if self.password is not None:
                token = "".join(self._rng.choice("0123456789abcdef") for _ in range(8))
                writer.write(f"PJLINK 1 {token}\r".encode())
            else:
                writer.write(b"PJLINK 0\r")
            await writer.drain()
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        raw = await reader.readuntil(b"\r")
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return  # idle timeout, client gone, or a runaway line: drop the connection
                line = raw[:-1].lstrip(b"\n").decode("utf-8", "replace")
                if token is not None:
                    digest, line = line[:32], line[32:]
                    if self.password is None or digest != auth_digest(token, self.password):
                        self.auth_failures += 1
                        writer.write(b"PJLINK ERRA\r")
                        await writer.drain()
                        return
                    token = None
                reply = self.answer(line)
                self.log.append((line, reply or ""))
                if reply is None or self.silent:
                    continue
                writer.write(self._encode(reply))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> PJLinkProjector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def simulator_for(dev: DeviceConfig, index: int) -> PJLinkProjector:
    """A configured, not yet started projector where `dev.address` says the device is.

    `dev.simulator` options: pjlink_class (default 2 if the profile has
    filter_hours, else 1), warmup_s / cooldown_s (default: the profile's
    timings), lamp_hours, filter_hours, time_scale, seed (default index+1),
    inputs (codes; default the profile's), input, power (`off`/`on`), name,
    idle_timeout_s, and the faults fault_error, silent, garbage.
    """
    profile = dev.profile_obj
    opts: dict[str, Any] = dict(dev.simulator)
    timings = profile.timings
    cls = int(opts.pop("pjlink_class", 2 if "filter_hours" in profile.metrics else 1))
    faults = {k: opts.pop(k) for k in ("fault_error", "silent", "garbage") if k in opts}
    kwargs: dict[str, Any] = {
        "password": dev.address.get("password"), "pjlink_class": cls,
        "warmup_s": float(opts.pop("warmup_s", timings.get("warmup_s", 30.0))),
        "cooldown_s": float(opts.pop("cooldown_s", timings.get("cooldown_s", 60.0))),
        "seed": int(opts.pop("seed", index + 1)),
        "inputs": [str(c) for c in opts.pop("inputs", profile.inputs.values())] or list(DEFAULT_INPUTS),
        "name": str(opts.pop("name", dev.id)),
    }
    for key in ("lamp_hours", "filter_hours", "time_scale", "idle_timeout_s"):
        if key in opts:
            kwargs[key] = float(opts.pop(key))
    for key in ("input", "power"):
        if key in opts:
            kwargs[key] = str(opts.pop(key))
    if opts:
        log.warning("device %s: simulator options %s mean nothing to a PJLink projector", dev.id, sorted(opts))
    try:
        sim = PJLinkProjector(str(dev.address.get("host", "127.0.0.1")),
                              int(dev.address.get("port", PJLINK_PORT)), **kwargs)
    except ValueError as exc:
        raise ConfigError(f"device {dev.id}: simulator: {exc}") from None
    for key, value in faults.items():
        setattr(sim, key, value)
    return sim
