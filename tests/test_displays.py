"""RS-232 display drivers (Samsung MDC, LG) against the display simulators over a real pty."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from campus.errors import ActionRejected, ConfigError, DeviceError
from device_profiles import load_profile
from device_profiles.config import DeviceConfig
from edge_agent.drivers.base import DeviceUnreachable
from edge_agent.drivers.lg_serial import LGSerialDriver
from edge_agent.drivers.samsung_mdc import SamsungMDCDriver
from edge_agent.drivers.serial_display import SerialDisplayDriver
from firmware_stubs.displays import LGDisplay, SamsungMDCDisplay, simulator_for
from protocols import lg_serial, samsung_mdc
from protocols.serial_line import BadFrame

SAMSUNG = load_profile("display-samsung-mdc")
LG = load_profile("display-lg-serial")
OPTIONS = {"timeout": 0.5, "frame_gap": 0.05, "retries": 2}
KINDS = ["samsung", "lg"]
Sim = SamsungMDCDisplay | LGDisplay


async def wait_until(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Wait for a condition, polling, up to a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def make_sim(kind: str, **kwargs: Any) -> Sim:
    if kind == "samsung":
        return SamsungMDCDisplay(display_id=kwargs.pop("ident", 1), **kwargs)
    return LGDisplay(set_id=kwargs.pop("ident", 1), **kwargs)


def make_driver(kind: str, path: str, ident: int = 1, profile: Any = None, **options: Any) -> SerialDisplayDriver:
    opts = {**OPTIONS, **options}
    if kind == "samsung":
        return SamsungMDCDriver("tv1", profile or SAMSUNG, {"serial": path, "display_id": ident}, opts)
    return LGSerialDriver("tv1", profile or LG, {"serial": path, "set_id": ident}, opts)


@asynccontextmanager
async def rig(kind: str, profile: Any = None, **sim_kwargs: Any) -> AsyncIterator[tuple[Any, Any]]:
    async with make_sim(kind, **sim_kwargs) as sim:
        drv = make_driver(kind, sim.path, profile=profile)
        try:
            yield sim, drv
        finally:
            await drv.close()


def expected(kind: str, sim: Any) -> dict[str, Any]:
    """What a correct driver reports for the simulator's state."""
    profile = SAMSUNG if kind == "samsung" else LG
    names = {samsung_mdc.input_code(n, c) if kind == "samsung" else lg_serial.input_code(n, c): n
             for n, c in profile.inputs.items()}
    power = "on" if sim.power else "off"
    if kind == "lg" and not sim.power:
        return {"power": power}  # LG sets answer only the power query in standby
    code = sim.input
    name = names.get(code, f"0x{code:02x}" if kind == "samsung" else f"0x{code}")
    return {"power": power, "volume": sim.volume, "muted": "on" if sim.muted else "off", "input": name}


# ------------------------------------------------------------ frame codecs


def test_mdc_frames_known_answers() -> None:
    # Status query to display 1, as python-samsung-mdc sends it: aa:00:01:00:01.
    assert samsung_mdc.encode_frame(0x00, 1) == bytes.fromhex("aa 00 01 00 01")
    # Power on to display 0: checksum 0x11 + 0x00 + 0x01 + 0x01 = 0x13.
    assert samsung_mdc.encode_frame(0x11, 0, b"\x01") == bytes.fromhex("aa 11 00 01 01 13")
    assert samsung_mdc.checksum(bytes.fromhex("ff 01 03 41 11 01")) == 0x56
    ack = bytes.fromhex("aa ff 01 03 41 11 01 56")
    assert samsung_mdc.encode_reply(1, 0x11, b"\x01") == ack
    assert samsung_mdc.decode_frame(ack) == samsung_mdc.MDCFrame(0xFF, 1, bytes.fromhex("41 11 01"))
    reply = samsung_mdc.parse_reply(samsung_mdc.decode_frame(ack))
    assert reply == samsung_mdc.MDCReply(1, True, 0x11, b"\x01") and reply.error_code is None
    nak = samsung_mdc.parse_reply(samsung_mdc.decode_frame(samsung_mdc.encode_reply(1, 0x14, b"\x02", ack=False)))
    assert not nak.ack and nak.error_code == 2
    for bad, why in [(ack[:-1] + b"\x57", "checksum"), (ack[:-2], "length"), (b"\xab" + ack[1:], "header"),
                     (b"\xaa\x00", "short")]:
        with pytest.raises(samsung_mdc.MDCFrameError, match=why):
            samsung_mdc.decode_frame(bad)


def test_mdc_splitter_resyncs_and_never_raises() -> None:
    status = samsung_mdc.encode_reply(1, 0x00, bytes([1, 30, 0, 0x21, 0x10, 0, 0]))
    power = samsung_mdc.encode_reply(1, 0x11, b"\x01")
    split = samsung_mdc.split_replies
    # Noise (with a stray header byte) before a frame.
    items, rest = split(b"\x13\xaa\x07" + status)
    assert [type(i) for i in items] == [BadFrame, samsung_mdc.MDCReply] and rest == b""
    # Bad checksum, then a good frame: one bad frame, then the good one.
    items, rest = split(status[:-1] + b"\x00" + power)
    assert isinstance(items[0], BadFrame) and "checksum" in items[0].reason and items[1].command == 0x11
    # A truncated frame followed by a complete one.
    items, rest = split(status[:6] + power)
    assert isinstance(items[0], BadFrame) and "truncated" in items[0].reason and items[1].command == 0x11
    # A header whose length byte would swallow the real reply does not.
    items, rest = split(b"\xaa\xff\x01\xf0" + power)
    assert isinstance(items[0], BadFrame) and items[1].command == 0x11 and rest == b""
    # An incomplete frame is kept for later; fed in pieces, the stream gives the same frames.
    assert split(status[:5]) == ([], status[:5])
    stream = b"\x00" + status + power + b"\xaa\xff\x01" + status
    rng = random.Random(7)
    for _ in range(50):
        buf, frames = b"", []
        cuts = sorted(rng.sample(range(1, len(stream)), 5))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            items, buf = split(buf + stream[a:b])
            frames += [i for i in items if not isinstance(i, BadFrame)]
        assert [f.command for f in frames] == [0x00, 0x11, 0x00]
    for _ in range(500):
        garbage = rng.randbytes(rng.randint(0, 80))
        items, rest = split(garbage)
        assert len(rest) <= samsung_mdc.MAX_FRAME


def test_lg_frames_known_answers() -> None:
    assert lg_serial.encode_command("ka", 1, "01") == b"ka 01 01\r"
    assert lg_serial.encode_command("xb", 10, "A0") == b"xb 0a a0\r"
    assert lg_serial.encode_reply("a", 1, True, "01") == b"a 01 OK01x"
    assert lg_serial.split_replies(b"a 01 OK01x") == ([lg_serial.LGReply("a", 1, True, "01")], b"")
    assert lg_serial.split_replies(b"f 0A NG03x")[0] == [lg_serial.LGReply("f", 10, False, "03")]
    assert lg_serial.parse_command(b"kf 01 ff\r") == lg_serial.LGCommand("kf", 1, "ff")
    with pytest.raises(ValueError):
        lg_serial.encode_command("k", 1, "01")
    with pytest.raises(lg_serial.LGFrameError):
        lg_serial.parse_command(b"ka 1 01")


def test_lg_splitter_resyncs_and_never_raises() -> None:
    items, rest = lg_serial.split_replies(b"\x00\xffzzx a 01 OK0#x\r\nb 01 OK90x")
    assert [type(i) for i in items] == [BadFrame, lg_serial.LGReply] and items[1].data == "90"
    assert lg_serial.split_replies(b"e 01 OK0") == ([], b"e 01 OK0")
    items, rest = lg_serial.split_commands(b"ka 01 ff\rgarbage\r\nkf 01 1e\rxb 01")
    assert [type(i).__name__ for i in items] == ["LGCommand", "BadFrame", "LGCommand"] and rest == b"xb 01"
    rng = random.Random(3)
    for _ in range(500):
        garbage = rng.randbytes(rng.randint(0, 200))
        items, rest = lg_serial.split_replies(garbage)
        assert len(rest) <= lg_serial.MAX_REPLY
        lg_serial.split_commands(garbage)


# ------------------------------------------------------------ driver vs simulator


@pytest.mark.parametrize("kind", KINDS)
def test_reads_equal_simulator_state(kind: str) -> None:
    async def main() -> None:
        async with rig(kind) as (sim, drv):
            assert (await drv.read()).values == expected(kind, sim)
            sim.volume, sim.muted = 77, True
            sim.input = 0x25 if kind == "samsung" else "c0"
            assert (await drv.read()).values == expected(kind, sim) | {"input": "displayport"}
            sim.input = 0x31 if kind == "samsung" else "a1"  # an input the profile does not name
            assert (await drv.read()).values["input"] == ("0x31" if kind == "samsung" else "0xa1")
            sim.power = False
            assert (await drv.read()).values == expected(kind, sim)
            assert drv.counters.get("bad_frames", 0) == 0
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_every_action_changes_the_display(kind: str) -> None:
    async def main() -> None:
        async with rig(kind, power=False) as (sim, drv):
            assert await drv.execute("power_on", {}) == "power on"
            assert sim.power is True
            assert await drv.execute("set_volume", {"level": 35}) == "volume 35"
            assert sim.volume == 35
            await drv.execute("set_volume", {"level": 100})
            assert sim.volume == 100
            assert await drv.execute("mute", {}) == "muted"
            assert sim.muted is True
            assert await drv.execute("unmute", {}) == "unmuted"
            assert sim.muted is False
            for name, code in (SAMSUNG if kind == "samsung" else LG).inputs.items():
                assert await drv.execute("select_input", {"input": name}) == f"input {name}"
                assert sim.input == code
                assert (await drv.read()).values["input"] == name
            assert (await drv.read()).values == expected(kind, sim)
            assert await drv.execute("power_off", {}) == "power off"
            assert sim.power is False
            assert (await drv.read()).values["power"] == "off"
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_display_refusals(kind: str) -> None:
    async def main() -> None:
        pc = 0x14 if kind == "samsung" else "60"
        inputs = [c for c in ((0x21, 0x23, 0x25, 0x14) if kind == "samsung" else ("90", "91", "c0", "60")) if c != pc]
        async with rig(kind, inputs=inputs) as (sim, drv):
            before = sim.input
            # An input this display does not have: NAK / NG, nothing changes.
            with pytest.raises(ActionRejected, match="NAK, error code 0x01" if kind == "samsung" else "NG 01"):
                await drv.execute("select_input", {"input": "pc"})
            assert sim.input == before
            # Volume in standby is refused.
            sim.power = False
            with pytest.raises(ActionRejected, match="refused set volume"):
                await drv.execute("set_volume", {"level": 50})
            assert sim.volume == 20
            sim.power = True
            # A display refusing everything: an action is rejected, a poll is a device error.
            sim.nak_all = True
            with pytest.raises(ActionRejected):
                await drv.execute("mute", {})
            with pytest.raises(DeviceError) as info:
                await drv.read()
            assert not isinstance(info.value, ActionRejected)
            sim.nak_all = False
            assert (await drv.read()).values == expected(kind, sim)
    asyncio.run(main())


def test_lg_busy_is_a_device_error_not_a_rejection() -> None:
    async def main() -> None:
        async with rig("lg") as (sim, drv):
            sim.nak_all, sim.ng_code = 1, "03"
            with pytest.raises(DeviceError, match="wait more time") as info:
                await drv.execute("power_off", {})
            assert not isinstance(info.value, ActionRejected)
            assert await drv.execute("power_off", {}) == "power off"
    asyncio.run(main())


def test_lg_set_that_is_silent_in_standby() -> None:
    async def main() -> None:
        async with rig("lg", power=False, standby_silent=True) as (sim, drv):
            assert (await drv.read()).values == {"power": "off"}  # only `ka` is asked while off
            with pytest.raises(DeviceError, match="no reply to set volume"):
                await drv.execute("set_volume", {"level": 50})
            assert await drv.execute("power_on", {}) == "power on"
            assert (await drv.read()).values == expected("lg", sim)
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["corrupt_checksum", "noise", "truncate", "reply_id"])
def test_a_bad_reply_is_counted_and_the_driver_resyncs(kind: str, fault: str) -> None:
    async def main() -> None:
        async with rig(kind) as (sim, drv):
            # One bad reply: counted, the request is sent again, the poll succeeds.
            if fault == "reply_id":
                sim.reply_id = 7
            else:
                setattr(sim, fault, 1)
            first = await drv.read() if fault != "reply_id" else None
            if fault == "reply_id":  # a persistent wrong id: every attempt fails
                with pytest.raises(DeviceError, match="set id 7|display id 7"):
                    await drv.read()
                sim.reply_id = None
            else:
                assert first is not None and first.values == expected(kind, sim)
            assert drv.counters["bad_frames"] >= 1
            # Persistently bad (noise alone never is: the reply follows it).
            if fault in ("corrupt_checksum", "truncate"):
                setattr(sim, fault, True)
                with pytest.raises(DeviceError, match="no valid reply"):
                    await drv.read()
                setattr(sim, fault, False)
            elif fault == "noise":
                sim.noise = True
                assert (await drv.read()).values == expected(kind, sim)
                sim.noise = False
            counted = drv.counters["bad_frames"]
            assert (await drv.read()).values == expected(kind, sim)
            assert await drv.execute("set_volume", {"level": 60}) == "volume 60" and sim.volume == 60
            assert drv.counters["bad_frames"] == counted
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_silent_display_is_a_device_error_in_bounded_time(kind: str) -> None:
    async def main() -> None:
        async with rig(kind) as (sim, drv):
            sim.silent = True
            with pytest.raises(DeviceError, match="no reply") as info:
                await asyncio.wait_for(drv.read(), 5)
            assert not isinstance(info.value, DeviceUnreachable)
            await wait_until(lambda: sim.frames_received == 1)  # asked once: silence is not retried
            sim.silent = False
            assert (await drv.read()).values == expected(kind, sim)
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_display_with_another_id_does_not_answer(kind: str) -> None:
    async def main() -> None:
        async with make_sim(kind, ident=5) as sim:
            drv = make_driver(kind, sim.path, ident=1)
            with pytest.raises(DeviceError, match="no reply"):
                await drv.read()
            await drv.close()
            broadcast = make_driver(kind, sim.path, ident=254 if kind == "samsung" else 0)
            assert (await broadcast.read()).values == expected(kind, sim)
            await broadcast.close()
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_missing_port_is_unreachable(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        drv = make_driver(kind, str(tmp_path / "ttyUSB9"))
        with pytest.raises(DeviceUnreachable, match="ttyUSB9"):
            await drv.read()
        with pytest.raises(DeviceUnreachable):
            await drv.execute("power_on", {})
        await drv.close()
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_unplugged_display_is_unreachable(kind: str) -> None:
    async def main() -> None:
        sim = make_sim(kind)
        await sim.start()
        drv = make_driver(kind, sim.path)
        assert (await drv.read()).values == expected(kind, sim)
        await sim.stop()
        with pytest.raises(DeviceUnreachable):
            await asyncio.wait_for(drv.read(), 5)
        await drv.close()
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_action_not_in_profile_is_rejected_without_touching_the_line(kind: str) -> None:
    async def main() -> None:
        base = SAMSUNG if kind == "samsung" else LG
        profile = dataclasses.replace(base, actions=("power_on", "power_off"))
        async with rig(kind, profile=profile) as (sim, drv):
            with pytest.raises(ActionRejected, match="not supported by profile"):
                await drv.execute("set_volume", {"level": 10})
            with pytest.raises(ActionRejected):
                await drv.execute("select_input", {"input": "hdmi1"})
            assert await drv.execute("power_off", {}) == "power off"
            await wait_until(lambda: sim.frames_received == 1)
            assert sim.power is False
    asyncio.run(main())


@pytest.mark.parametrize("kind, address, field", [
    ("samsung", {"display_id": 1}, "serial"),
    ("samsung", {"serial": "/dev/ttyS0", "display_id": 255}, "display_id"),
    ("samsung", {"serial": "/dev/ttyS0", "display_id": True}, "display_id"),
    ("samsung", {"serial": "/dev/ttyS0", "displayid": 1}, "displayid"),
    ("lg", {"serial": "/dev/ttyS0", "set_id": 256}, "set_id"),
    ("lg", {"serial": "/dev/ttyS0", "baudrate": "fast"}, "baudrate"),
    ("lg", {"serial": "/dev/ttyS0", "parity": "X"}, "parity"),
])
def test_bad_address_names_the_field(kind: str, address: dict[str, Any], field: str) -> None:
    cls = SamsungMDCDriver if kind == "samsung" else LGSerialDriver
    with pytest.raises(ValueError, match=field):
        cls.check_address(address)
    cls.check_address({"serial": "/dev/ttyS0"})


def test_profile_input_codes_are_checked() -> None:
    with pytest.raises(ConfigError, match="quoted hex"):
        LGSerialDriver("tv", dataclasses.replace(LG, inputs={"hdmi1": 90}), {"serial": "/dev/null"})
    with pytest.raises(ConfigError, match="0x"):
        SamsungMDCDriver("tv", dataclasses.replace(SAMSUNG, inputs={"hdmi1": "21"}), {"serial": "/dev/null"})
    drv = SamsungMDCDriver("tv", dataclasses.replace(SAMSUNG, inputs={"hdmi1": "0x21"}), {"serial": "/dev/null"})
    assert drv.input_codes == {"hdmi1": 0x21}


def test_display_profiles() -> None:
    for profile in (SAMSUNG, LG):
        assert profile.kind == "display"
        assert set(profile.metrics) == {"power", "input", "volume", "muted"}
        assert set(profile.actions) == {"power_on", "power_off", "select_input", "set_volume", "mute", "unmute"}
        assert profile.serial == {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_simulator_for_a_gateway_device(kind: str, tmp_path: Path) -> None:
    link = str(tmp_path / "room101" / "ttyDISPLAY")
    if kind == "samsung":
        address, profile = {"serial": link, "display_id": 3}, "display-samsung-mdc"
    else:
        address, profile = {"serial": link, "set_id": 3}, "display-lg-serial"
    # model_construct: the driver registry that validates addresses is not wired to these drivers here.
    dev = DeviceConfig.model_construct(id="tv1", profile=profile, address=address, poll_interval=None, options={},
                                       simulator={"volume": 33, "muted": "on", "input": "hdmi2", "seed": 4})

    async def main() -> None:
        sim = simulator_for(dev, 0)
        assert sim.path == ""  # not started
        async with sim:
            assert sim.path == link and Path(link).is_symlink()
            drv = make_driver(kind, link, ident=3)
            assert (await drv.read()).values == {"power": "on", "volume": 33, "muted": "on", "input": "hdmi2"}
            # The simulator has exactly the profile's inputs.
            assert await drv.execute("select_input", {"input": "pc"}) == "input pc"
            await drv.close()
        assert not Path(link).exists()
    asyncio.run(main())


def test_simulator_for_rejects_bad_options(tmp_path: Path) -> None:
    dev = DeviceConfig.model_construct(id="tv1", profile="display-lg-serial", address={"serial": str(tmp_path / "t")},
                                       poll_interval=None, options={}, simulator={"input": "vga"})
    with pytest.raises(ConfigError, match="vga"):
        simulator_for(dev, 0)
