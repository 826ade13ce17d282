"""Fuzzing the PJLink driver's greeting and reply parsing over a real TCP socket.

PJLink parsing is only reachable through the socket, so each example starts
a tiny asyncio server on a loopback port that sends a fuzzed greeting and
answers each command line with a fuzzed reply (often a well-formed
`%<class><CMD>=` prefix with a hostile value, so the value parsers are
reached). Property: `read()` and `execute()` return or raise `DeviceError`
(which covers `ActionRejected`, `DeviceUnreachable` and `PJLinkError`),
nothing else, and what `read()` returns is well-formed. Known bugs and
`only(...)`: see `tests/test_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from campus.errors import DeviceError
from campus.i18n import LazyText
from device_profiles import load_profile
from edge_agent.drivers.base import Reading
from edge_agent.drivers.pjlink import PJLinkDriver
from protocols.pjlink import ERST_LEVELS, ERST_METRICS, POWER
from tests.test_fuzz import KnownBug, fuzz_settings, only

PROFILES = [load_profile("projector-pjlink"), load_profile("projector-pjlink2")]
J_INT = [KnownBug("J1 str.isdigit() accepts non-ASCII digits that int() rejects", ValueError,
                  f"edge_agent/drivers/pjlink.py:{fn}", "invalid literal for int") for fn in ("_detect_class",
                                                                                              "_lamp_hours", "read")]


# A well-formed answer to each query, and to every set command ("OK").
VALID = {b"CLSS": b"2", b"POWR": b"1", b"INPT": b"31", b"AVMT": b"30", b"LAMP": b"1200 1", b"ERST": b"000000",
         b"FILT": b"50"}


@dataclass
class Echo:
    """Answer `%<class><CMD>=<value><end>`, class and command taken from the request (or a wrong one).

    `value` None: a well-formed value for that command, so a script can fuzz one reply among valid ones.
    """

    value: bytes | None = None
    end: bytes = b"\r"
    wrong_prefix: bytes | None = None

    def answer(self, line: bytes) -> bytes:
        request = line.split(b"%")[-1]  # "2INPT 32\r": class, command, parameter (an auth prefix dropped)
        value = self.value
        if value is None:
            value = VALID.get(request[1:5], b"OK") if request[6:7] == b"?" else b"OK"
        return b"%" + (self.wrong_prefix or request[:5]) + b"=" + value + self.end


@dataclass
class ScriptedProjector:
    greeting: bytes
    replies: list[bytes | Echo]
    received: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.greeting)
            await writer.drain()
            if b"\r" not in self.greeting:
                return
            while self.replies:
                line = await reader.readuntil(b"\r")
                self.received.append(line)
                reply = self.replies.pop(0)
                if isinstance(reply, Echo):
                    reply = reply.answer(line)
                writer.write(reply)
                await writer.drain()
                if b"\r" not in reply:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


values = st.one_of(
    st.sampled_from([b"0", b"1", b"2", b"3", b"OK", b"ok", b"ERR1", b"ERR2", b"ERR3", b"ERR4", b"erra", b"ERRA", b"",
                     b"31", b"30", b"11", b"32", b"4A", b"000000", b"012012", b"0120123", b"100 1", b"100 0 200 1",
                     b"100", b"100 2", b"1 0 x 1", b"2", b"9" * 120, "\u00b2".encode(), "\u0661\u0662".encode(),
                     "12 \u00b9".encode(), "\u0663 1".encode(), b"\xff\xfe", b"\x00", b"\x1b[0m", b"=", b"%1POWR=1"]),
    st.sampled_from(["\u00b2", "\u00b9 1", "1 \u00b2", "\u0663", "\u2460", "\uff11"]).map(str.encode),  # digit-like
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=12),
)
replies = st.one_of(
    st.just(Echo()), st.just(Echo()), st.just(Echo()), st.just(Echo()),
    st.builds(Echo, values, st.sampled_from([b"\r", b"\r", b"\r\n", b"", b"\n"]),
              st.none() | st.sampled_from([b"1POWR", b"2CLSS", b"3POWR", b"1powr", b"1POW"])),
    st.sampled_from([b"PJLINK ERRA\r", b"%1POWR=ERRA\r", b"%1POWR\r", b"%\r", b"\r", b"\n\r", b"x" * 200 + b"\r",
                     b"y" * 1100, b"%1POWR=1", b"%1CLSS=2\r%1POWR=1\r"]),
    st.binary(max_size=20),
)
greetings = st.one_of(
    st.just(b"PJLINK 0\r"), st.just(b"PJLINK 1 498e4a67\r"),
    st.sampled_from([b"PJLINK 0\r", b"PJLINK 1 498e4a67\r", b"PJLINK 1 \r", b"PJLINK 1 " + b"a" * 40
                     + b"\r", b"PJLINK ERRA\r", b"PJLINK ERR3\r", b"PJLINK 0", b"PJLINK 0\r\n", b"\r", b"",
                     b"pjlink 0\r", "PJLINK 1 \u00e9\r".encode(), b"PJLINK 1 \xff\r"]),
    st.binary(max_size=16),
)
actions = st.sampled_from([("power_on", {}), ("power_off", {}), ("mute", {}), ("unmute", {}),
                           ("select_input", {"input": "hdmi1"}), ("select_input", {"input": "nope"}),
                           ("select_input", {"input": "usb"}), ("set_volume", {"level": 5}), ("reboot", {})])


def check_reading(reading: Reading) -> None:
    v = reading.values
    assert v["power"] in POWER.values()
    assert v.get("muted", "on") in ("on", "off")
    for name in ERST_METRICS:
        assert v.get(name, "ok") in ERST_LEVELS.values()
    for name in ("lamp_hours", "filter_hours"):
        assert isinstance(v.get(name, 0), int) and v.get(name, 0) >= 0
    assert isinstance(v.get("input", ""), str)


async def run_against(projector: ScriptedProjector, profile_i: int, password: str | None,
                      operations: list[tuple[str, dict[str, Any]] | None]) -> None:
    server = await asyncio.start_server(projector.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    address: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if password:
        address["password"] = password
    driver = PJLinkDriver("proj", PROFILES[profile_i], address, {"timeout": 1.0, "busy_poll_s": 0, "busy_max_s": 0})
    try:
        for op in operations:
            with only(DeviceError, J_INT) as outcome:
                if op is None:
                    reading = await driver.read()
                else:
                    detail = await driver.execute(*op)
            event(f"{'read' if op is None else 'execute'}: " + (
                "ok" if outcome.ok else type(outcome.error).__name__ if outcome.error else "known bug"))
            if outcome.ok:
                if op is None:
                    check_reading(reading)
                else:
                    # What the gateway says of it: a plain text, or one marked for translation (campus/i18n.py).
                    assert isinstance(detail, str | LazyText) and str(detail)
    finally:
        await driver.close()
        server.close()
        await server.wait_closed()


@fuzz_settings(100)
@given(greetings, st.lists(replies, max_size=12), st.sampled_from([0, 1]), st.sampled_from([None, "JBMIAProjectorLink"]),
       st.lists(st.none() | actions, min_size=1, max_size=3))
def test_pjlink_driver_on_fuzzed_replies(greeting: bytes, script: list[bytes | Echo], profile_i: int,
                                         password: str | None, operations: list[tuple[str, dict[str, Any]] | None]
                                         ) -> None:
    projector = ScriptedProjector(greeting, list(script))
    asyncio.run(asyncio.wait_for(run_against(projector, profile_i, password, operations), 30))


@fuzz_settings(100)
@given(st.lists(st.tuples(st.integers(0, 6), values), min_size=1, max_size=3), st.sampled_from([0, 1]))
def test_pjlink_read_with_fuzzed_values_only(fuzzed: list[tuple[int, bytes]], profile_i: int) -> None:
    """Every reply well-framed and all but one to three values valid: reaches each value parser of read()."""
    script: list[bytes | Echo] = [Echo() for _ in range(7)]
    for i, value in fuzzed:
        script[i] = Echo(value)
    asyncio.run(asyncio.wait_for(run_against(ScriptedProjector(b"PJLINK 0\r", script), profile_i, None, [None]), 30))


# ------------------------------------------------------------------ regressions for the bugs found


@pytest.mark.parametrize("script", [
    [Echo("\u00b2".encode())],                                                     # CLSS=²
    [Echo(b"1"), Echo(b"1"), Echo(b"31"), Echo(b"30"), Echo("\u00b9 1".encode())],  # LAMP=¹ 1
    [Echo(b"2"), Echo(b"1"), Echo(b"31"), Echo(b"30"), Echo(b"ERR1"), Echo(b"000000"),
     Echo("\u00b2".encode())],                                                     # FILT=²
], ids=["CLSS", "LAMP", "FILT"])
def test_bug_j1_non_ascii_digits_in_numeric_replies(script: list[bytes | Echo]) -> None:
    async def main() -> None:
        projector = ScriptedProjector(b"PJLINK 0\r", list(script))
        server = await asyncio.start_server(projector.handle, "127.0.0.1", 0)
        address = {"host": "127.0.0.1", "port": server.sockets[0].getsockname()[1]}
        driver = PJLinkDriver("proj", PROFILES[1], address, {"timeout": 10.0})
        try:
            with pytest.raises(DeviceError):
                await driver.read()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
