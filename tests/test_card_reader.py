"""Card readers: the frame parsers on their own, then the drivers against the simulators over a real pty."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campus.errors import ConfigError, DeviceError
from device_profiles import load_profile
from device_profiles.config import DeviceConfig
from edge_agent.drivers.base import DeviceEvent, DeviceUnreachable, Reading
from edge_agent.drivers.card_reader import (
    CardSecretMissing,
    EM4100ReaderDriver,
    LineReaderDriver,
    RepeatFilter,
)
from firmware_stubs.card_reader import EM4100Reader, LineReader, simulator_for
from protocols.card_em4100 import EM4100Parser
from protocols.card_line import LineParser, parse_uid_line

SECRET = "school-42-card-secret"
EM = load_profile("card-em4100")
LINE = load_profile("card-mifare-line")


def expected_hash(uid: str) -> str:
    return hmac.new(SECRET.encode(), uid.encode(), hashlib.sha256).hexdigest()


def em_frame(body: str) -> bytes:
    return b"\x02" + body.encode() + b"\x03"


# Published examples: Tasmota's RDM6300 driver (02 "14008EC793" "CE" 03) and the
# ID-Innovations ID-12LA datasheet (data 0C 00 06 21 A5, XOR checksum 8E).
RDM6300_EXAMPLE = em_frame("14008EC793CE")
ID12_EXAMPLE = b"\x02" + b"0C000621A58E" + b"\r\n\x03"


# ------------------------------------------------------------------ EM4100 parser


def test_em4100_published_examples() -> None:
    p = EM4100Parser()
    assert p.feed(RDM6300_EXAMPLE + ID12_EXAMPLE) == ["14008EC793", "0C000621A5"]
    assert p.counts == {"frames_ok": 2, "bad_checksum": 0, "truncated": 0, "malformed": 0, "noise_bytes": 0}


def test_em4100_frame_split_across_reads_byte_by_byte() -> None:
    p = EM4100Parser()
    out = [uid for b in RDM6300_EXAMPLE for uid in p.feed(bytes([b]))]
    assert out == ["14008EC793"] and not p.pending


def test_em4100_several_frames_in_one_chunk_and_crlf_after_etx() -> None:
    p = EM4100Parser()
    assert p.feed((RDM6300_EXAMPLE + b"\r\n") * 3 + ID12_EXAMPLE) == ["14008EC793"] * 3 + ["0C000621A5"]
    assert p.counts["noise_bytes"] == 0 and p.counts["frames_ok"] == 4


def test_em4100_lowercase_hex_is_normalised() -> None:
    assert EM4100Parser().feed(em_frame("14008ec793ce")) == ["14008EC793"]


def test_em4100_noise_between_frames_is_counted() -> None:
    p = EM4100Parser()
    assert p.feed(b"\xff\x00zz" + RDM6300_EXAMPLE + b"\x80" + ID12_EXAMPLE) == ["14008EC793", "0C000621A5"]
    assert p.counts["noise_bytes"] == 5


def test_em4100_bad_checksum() -> None:
    p = EM4100Parser()
    assert p.feed(em_frame("14008EC793CF") + RDM6300_EXAMPLE) == ["14008EC793"]
    assert p.counts["bad_checksum"] == 1 and p.counts["frames_ok"] == 1


@pytest.mark.parametrize("data", [
    b"\x02140" + RDM6300_EXAMPLE,       # a new STX before ETX
    em_frame("14008EC793C") + RDM6300_EXAMPLE,   # one digit short
    em_frame("14008EC793CEE") + RDM6300_EXAMPLE,  # one digit long
    em_frame("14008EC793CE" + "0" * 40) + RDM6300_EXAMPLE,  # far too long
])
def test_em4100_truncated_or_wrong_length(data: bytes) -> None:
    p = EM4100Parser()
    assert p.feed(data) == ["14008EC793"]
    assert p.counts["truncated"] == 1


def test_em4100_frame_cut_off_by_silence_expires() -> None:
    p = EM4100Parser()
    assert p.feed(b"\x0214008E") == [] and p.pending
    p.expire()
    assert p.counts["truncated"] == 1 and not p.pending
    assert p.feed(b"C793CE\x03") == []  # the tail alone is noise, not a frame
    assert p.counts["noise_bytes"] == 7


def test_em4100_malformed_frames() -> None:
    p = EM4100Parser()
    assert p.feed(em_frame("14008EC79GCE") + em_frame("000000000000")) == []
    assert p.counts["malformed"] == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_em4100_parser_never_raises(chunks: list[bytes]) -> None:
    p = EM4100Parser()
    for chunk in chunks:
        for uid in p.feed(chunk):
            assert len(uid) == 10 and uid == uid.upper()
    p.expire()
    assert all(v >= 0 for v in p.counts.values())


_NOISE = st.binary(max_size=8).map(lambda b: bytes(x for x in b if x not in (2, 3)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=5, max_size=5).filter(any), _NOISE), min_size=1, max_size=8),
       st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=10))
def test_em4100_valid_frames_in_noise_survive_any_chunking(frames: list[tuple[bytes, bytes]],
                                                          cuts: list[int]) -> None:
    stream = bytearray()
    for data, noise in frames:
        checksum = 0
        for b in data:
            checksum ^= b
        stream += noise + b"\x02" + (data.hex().upper() + f"{checksum:02X}").encode() + b"\x03"
    p, out, pos, i = EM4100Parser(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += p.feed(bytes(stream[pos:pos + step]))
        pos, i = pos + step, i + 1
    assert out == [d.hex().upper() for d, _ in frames]
    assert p.counts["frames_ok"] == len(frames)


# ------------------------------------------------------------------ line parser


@pytest.mark.parametrize("line, uid", [
    ("A1B2C3D4", "A1B2C3D4"),
    ("a1b2c3d4", "A1B2C3D4"),
    ("04A1B2C3D4E5F6", "04A1B2C3D4E5F6"),
    ("A1:B2:C3:D4", "A1B2C3D4"),
    ("04 A1 B2 C3 D4 E5 F6", "04A1B2C3D4E5F6"),
    ("  2712847316 ", "A1B2C3D4"),      # 0xA1B2C3D4 as 10 decimal digits
    ("0000012345", "00003039"),
])
def test_line_uids_are_normalised_to_upper_hex(line: str, uid: str) -> None:
    assert parse_uid_line(line) == (uid, "ok")


@pytest.mark.parametrize("line, verdict", [
    ("A1B2C3", "truncated"), ("04A1B2C3D4E5", "truncated"), ("271284731", "truncated"),
    ("A1B2C3G4", "malformed"), ("UID=A1B2C3D4", "malformed"), ("A1:B2-C3:D4", "malformed"),
    ("9999999999", "malformed"),  # more than 32 bits
    ("00000000", "malformed"), ("0000000000", "malformed"),
])
def test_line_rejects(line: str, verdict: str) -> None:
    assert parse_uid_line(line) == (None, verdict)


def test_line_decimal_byte_order_and_format_restrictions() -> None:
    assert parse_uid_line("2712847316", decimal_byte_order="little") == ("D4C3B2A1", "ok")
    assert parse_uid_line("2712847316", uid_format="hex") == (None, "truncated")
    assert parse_uid_line("A1B2C3D4", uid_format="decimal") == (None, "malformed")
    assert parse_uid_line("12345678", uid_format="decimal") == (None, "truncated")


def test_line_parser_chunks_line_ends_and_noise() -> None:
    p = LineParser()
    out = p.feed(b"A1B2C3D4\r\n04A1B2")
    out += p.feed(b"C3D4E5F6\n\r\n2712847316\r")
    assert out == ["A1B2C3D4", "04A1B2C3D4E5F6", "A1B2C3D4"]
    assert p.feed(b"\x00\xff\r\nA1\x07B2C3D4\r\nA1B2C3D4\r\n") == ["A1B2C3D4"]
    assert p.counts == {"frames_ok": 4, "truncated": 0, "malformed": 1, "noise_bytes": 3}
    assert p.feed(b"F" * 500 + b"\r\n") == [] and p.counts["malformed"] == 2


def test_line_parser_silence_ends_a_line_without_line_end() -> None:
    p = LineParser()
    assert p.feed(b"A1B2C3D4") == [] and p.pending
    p.expire()
    assert p.counts["frames_ok"] == 1 and not p.pending


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20), st.sampled_from(["auto", "hex", "decimal"]))
def test_line_parser_never_raises(chunks: list[bytes], uid_format: str) -> None:
    p = LineParser(uid_format)
    for chunk in chunks:
        for uid in p.feed(chunk):
            assert len(uid) in (8, 14)
    p.expire()


# ------------------------------------------------------------------ repeat filter, address, config


def test_repeat_window_slides_while_the_card_stays() -> None:
    f = RepeatFilter(2.0)
    assert f.is_new("a", 100.0)
    assert not any(f.is_new("a", 100.0 + 1.5 * i) for i in range(1, 10))  # held for 13.5 s
    assert f.is_new("b", 114.0)                                           # another card
    assert f.is_new("a", 113.5 + 2.1)                                     # removed > window, back


@pytest.mark.parametrize("address, field", [
    ({}, "serial"), ({"serial": ""}, "serial"), ({"serial": 3}, "serial"),
    ({"serial": "/dev/ttyUSB0", "baudrate": 9601}, "baudrate"),
    ({"serial": "/dev/ttyUSB0", "parity": "X"}, "parity"),
    ({"serial": "/dev/ttyUSB0", "stopbits": 3}, "stopbits"),
    ({"serial": "/dev/ttyUSB0", "bytesize": 9}, "bytesize"),
    ({"serial": "/dev/ttyUSB0", "host": "10.0.0.5"}, "host"),
])
def test_check_address_names_the_bad_field(address: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EM4100ReaderDriver.check_address(address)
    LineReaderDriver.check_address({"serial": "/dev/ttyUSB0", "baudrate": 9600, "parity": "N"})


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="uid_format"):
        LineReaderDriver("c", LINE, {"serial": "/x"}, {"secret": SECRET, "uid_format": "octal"})
    with pytest.raises(ConfigError, match="repeat_window_s"):
        EM4100ReaderDriver("c", EM, {"serial": "/x"}, {"secret": SECRET, "repeat_window_s": "2s"})


@pytest.mark.parametrize("options", [{}, {"secret": ""}, {"secret": "   "}, {"secret": None}])
def test_missing_secret_is_refused(options: dict[str, Any]) -> None:
    async def main() -> None:
        drv = EM4100ReaderDriver("card1", EM, {"serial": "/dev/null"}, options)
        for attempt in (drv.open, drv.read):
            with pytest.raises(CardSecretMissing, match="card_secret") as info:
                await attempt()
            assert isinstance(info.value, DeviceError) and isinstance(info.value, ConfigError)
        assert not drv.running
    asyncio.run(main())


def test_missing_port_is_unreachable(tmp_path: Path) -> None:
    async def main() -> None:
        drv = EM4100ReaderDriver("card1", EM, {"serial": str(tmp_path / "ttyNONE")}, {"secret": SECRET})
        with pytest.raises(DeviceUnreachable):
            await drv.read()
        await drv.close()
    asyncio.run(main())


# ------------------------------------------------------------------ driver against simulator over a pty


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


async def drain(drv: Any, cond: Callable[[], bool]) -> list[DeviceEvent]:
    """Wait for `cond` on the driver's counters, then poll once: the events collected."""
    await wait_until(cond)
    reading = await drv.read()
    return reading.events


def assert_private(events: list[DeviceEvent], *raw: str) -> None:
    for ev in events:
        text = json.dumps(ev.data) + repr(ev)
        for uid in raw:
            assert uid.upper() not in text.upper()
        assert set(ev.data) == {"card", "reader"} and ev.type == "card_swipe" and ev.ts


def em_driver(path: str, **options: Any) -> EM4100ReaderDriver:
    return EM4100ReaderDriver("card1", EM, {"serial": path, "baudrate": 9600}, {"secret": SECRET, **options})


def test_one_swipe_is_one_pseudonymous_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with EM4100Reader(seed=1) as sim, em_driver(sim.path) as drv:
            before = time.time()
            await sim.swipe("14008EC793")
            events = await drain(drv, lambda: drv.counters["frames_ok"] == 1)
            assert [e.data for e in events] == [{"card": expected_hash("14008EC793"), "reader": "card1"}]
            assert before <= events[0].ts <= time.time()
            assert_private(events, "14008EC793", str(0x14008EC793), str(0x008EC793))
            # Handed over once: the next poll has no events, and the counters as metrics.
            reading = await drv.read()
            assert reading.events == []
            assert reading.values["swipes"] == 1 and reading.values["frames_ok"] == 1
            assert reading.values["frames_bad"] == 0 and set(reading.values) == set(EM.metrics)
    asyncio.run(main())
    assert "14008EC793" not in caplog.text.upper()


def test_a_held_card_is_one_swipe_and_a_new_presentation_is_another() -> None:
    async def main() -> None:
        async with EM4100Reader(seed=2) as sim, em_driver(sim.path, repeat_window_s=0.25) as drv:
            await sim.swipe("0C000621A5", repeats=10, interval=0.03)  # held ~0.3 s: longer than the window
            events = await drain(drv, lambda: drv.counters["frames_ok"] == 10)
            assert len(events) == 1 and sim.frames_sent == 10
            await asyncio.sleep(0.4)  # the card is away for longer than the window (scenario, not sync)
            await sim.swipe("0C000621A5", repeats=3, interval=0.03)
            await sim.swipe("14008EC793")  # another card straight after: its own swipe
            events += await drain(drv, lambda: drv.counters["frames_ok"] == 14)
            assert [e.data["card"] for e in events] == [expected_hash("0C000621A5")] * 2 + \
                [expected_hash("14008EC793")]
            assert events[0].ts < events[1].ts <= events[2].ts
            assert drv.counters["swipes"] == 3
    asyncio.run(main())


def test_bad_frames_are_counted_and_good_ones_around_them_all_arrive() -> None:
    uids = [f"0A{i:08X}" for i in range(1, 7)]

    async def main() -> None:
        async with EM4100Reader(seed=3, crlf=True) as sim, em_driver(sim.path) as drv:
            await sim.swipe(uids[0])
            sim.corrupt_next()
            await sim.swipe("0AFFFFFFFF")
            await sim.swipe(uids[1])
            sim.truncate_next()
            await sim.swipe("0AEEEEEEEE")
            await sim.swipe(uids[2])
            sim.noise(7)
            await sim.swipe(uids[3])
            sim.send_raw(b"\x02" + b"0AFFFFFFFF00".lower() + b"\x03")  # bad checksum, lower case
            await sim.swipe(uids[4])
            sim.truncate_next()
            await sim.swipe("0ADDDDDDDD")  # the last thing sent: cut off by silence
            events = await drain(drv, lambda: drv.counters["frames_ok"] == 5 and drv.counters["truncated"] == 2)
            assert [e.data["card"] for e in events] == [expected_hash(u) for u in uids[:5]]
            assert sim.counters["corrupt"] == 1 and sim.counters["truncated"] == 2
            values = (await drv.read()).values
            assert values["bad_checksum"] == 2 and values["truncated"] == 2 and values["noise_bytes"] == 7
            assert values["frames_bad"] == 4 and values["malformed"] == 0
    asyncio.run(main())


def line_driver(path: str, **options: Any) -> LineReaderDriver:
    return LineReaderDriver("card2", LINE, {"serial": path}, {"secret": SECRET, **options})


def test_line_reader_hex_7_byte_and_decimal_uids() -> None:
    async def main() -> None:
        async with LineReader(seed=4) as sim, line_driver(sim.path) as drv:
            await sim.swipe("A1B2C3D4")
            await sim.swipe("04a1b2c3d4e5f6", repeats=5, interval=0.02)
            sim.corrupt_next()
            await sim.swipe("0458AA12")
            sim.truncate_next()
            await sim.swipe("045C6B2271AA80")
            sim.noise(5)
            await sim.swipe("0000012345")  # a keyboard-style 10-digit decimal UID
            events = await drain(drv, lambda: drv.counters["frames_ok"] == 7)
            assert [e.data["card"] for e in events] == [
                expected_hash("A1B2C3D4"), expected_hash("04A1B2C3D4E5F6"), expected_hash("00003039")]
            assert_private(events, "A1B2C3D4", "04A1B2C3D4E5F6", "0000012345", "12345")
            values = (await drv.read()).values
            assert values["malformed"] == 1 and values["truncated"] == 1 and values["noise_bytes"] == 5
            assert values["frames_bad"] == 2 and set(values) == set(LINE.metrics)
    asyncio.run(main())


def test_line_reader_decimal_and_hex_of_one_card_hash_alike() -> None:
    async def main() -> None:
        async with LineReader(seed=5) as sim, line_driver(sim.path, repeat_window_s=0) as drv:
            await sim.swipe(str(0xA1B2C3D4))
            await sim.swipe("A1B2C3D4")
            events = await drain(drv, lambda: drv.counters["frames_ok"] == 2)
            assert [e.data["card"] for e in events] == [expected_hash("A1B2C3D4")] * 2
    asyncio.run(main())


def test_port_lost_goes_offline_and_recovers(tmp_path: Path) -> None:
    link = tmp_path / "ttyCARD"

    async def poll(drv: EM4100ReaderDriver) -> Reading | Exception:
        try:
            return await drv.read()
        except DeviceError as exc:
            return exc

    async def main() -> None:
        sim = EM4100Reader(link, seed=6)
        await sim.start()
        drv = em_driver(str(link))
        await drv.open()
        await sim.swipe("14008EC793")
        await wait_until(lambda: drv.counters["frames_ok"] == 1)
        await sim.stop()                       # reader unplugged: the pty and its link vanish
        await wait_until(lambda: not drv.running)
        first = await poll(drv)                # the swipe read before the loss is still delivered
        assert isinstance(first, Reading) and len(first.events) == 1
        assert isinstance(await poll(drv), DeviceUnreachable)
        sim = EM4100Reader(link, seed=6)       # plugged back in
        await sim.start()
        assert isinstance(await poll(drv), Reading) and drv.running
        await sim.swipe("0C000621A5")
        events = await drain(drv, lambda: drv.counters["frames_ok"] == 2)
        assert [e.data["card"] for e in events] == [expected_hash("0C000621A5")]
        assert drv.counters["port_lost"] == 1
        await drv.close()
        await sim.stop()
    asyncio.run(main())


# ------------------------------------------------------------------ simulator_for (campus sim)


def _device(tmp_path: Path, profile: str, **simulator: Any) -> DeviceConfig:
    # model_construct: the driver registry in edge_agent.drivers is wired up separately.
    return DeviceConfig.model_construct(id="card1", profile=profile, address={"serial": str(tmp_path / "ttyCARD")},
                                        options={}, simulator=simulator, poll_interval=None)


def test_simulator_for_background_swipes_from_a_seeded_deck(tmp_path: Path) -> None:
    dev = _device(tmp_path, "card-em4100", seed=7, swipe_every_s=0.02, hold_repeats=4, repeat_interval_s=0.01)
    sim = simulator_for(dev, 0)
    assert isinstance(sim, EM4100Reader) and sim.path == ""  # configured, not started
    assert sim.deck == simulator_for(dev, 3).deck != EM4100Reader(seed=8).deck

    async def main() -> None:
        async with sim, em_driver(dev.address["serial"], repeat_window_s=0) as drv:
            assert sim.path == dev.address["serial"]
            events = await drain(drv, lambda: drv.counters["frames_ok"] >= 5)
            deck = {expected_hash(uid) for uid in sim.deck}
            assert events and all(e.data["card"] in deck for e in events)
    asyncio.run(main())
    assert not Path(dev.address["serial"]).exists()


def test_simulator_for_line_reader(tmp_path: Path) -> None:
    sim = simulator_for(_device(tmp_path, "card-mifare-line", uid_format="decimal"), 2)
    assert isinstance(sim, LineReader) and sim.seed == 3
    assert all(len(uid) == 10 and uid.isdigit() for uid in sim.deck)
    with pytest.raises(ValueError, match="not a card reader"):
        simulator_for(_device(tmp_path, "env-6in1-modbus"), 0)
