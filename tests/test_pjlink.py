"""PJLink driver against the PJLink projector simulator over a real TCP socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from campus.errors import ActionRejected, DeviceError
from campus.net import free_port
from device_profiles import Profile, load_profile, parse_profile
from device_profiles.config import DeviceConfig
from edge_agent.drivers.base import DeviceUnreachable
from edge_agent.drivers.pjlink import PJLinkDriver
from firmware_stubs.pjlink import PJLinkProjector, simulator_for
from protocols.pjlink import ERST_METRICS, auth_digest

PROFILE = load_profile("projector-pjlink")
PROFILE2 = load_profile("projector-pjlink2")
ALL_OK = dict.fromkeys(ERST_METRICS, "ok")
T = TypeVar("T")


def _driver(port: int, profile: Profile = PROFILE, password: str | None = None, **options: Any) -> PJLinkDriver:
    address: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if password is not None:
        address["password"] = password
    return PJLinkDriver("proj1", profile, address, {"timeout": 1.0, "busy_poll_s": 0.05, **options})


def _sim(port: int, **kwargs: Any) -> PJLinkProjector:
    return PJLinkProjector("127.0.0.1", port, **{"warmup_s": 0.4, "cooldown_s": 0.4, **kwargs})


async def _until(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Probe until `ok(value)`, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout}s; last value {value!r}"
        await asyncio.sleep(0.02)


def _sets(sim: PJLinkProjector) -> list[str]:
    return [c for c in sim.commands if not c.endswith("?")]


def test_check_address_names_the_bad_field() -> None:
    PJLinkDriver.check_address({"host": "10.0.0.5"})
    PJLinkDriver.check_address({"host": "10.0.0.5", "port": 4352, "password": "JBMIAProjectorLink"})
    for address, field in [({"port": 4352}, "host"), ({"host": ""}, "host"), ({"host": "h", "port": 0}, "port"),
                           ({"host": "h", "port": "4352"}, "port"), ({"host": "h", "port": True}, "port"),
                           ({"host": "h", "password": "x" * 33}, "password"), ({"host": "h", "pasword": "x"}, "pasword")]:
        with pytest.raises(ValueError, match=field):
            PJLinkDriver.check_address(address)


def test_auth_digest_matches_the_published_example() -> None:
    # Worked example from projector manuals: token a572f60c, password "password".
    assert auth_digest("a572f60c", "password") == "e3d97429adffa11bce1f7275813d4bde"


def test_standby_read_class1() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, lamp_hours=1234) as sim, _driver(port) as drv:
            reading = await drv.read()
            # Input and mute are ERR3 in standby: left out, not guessed.
            assert reading.values == {"power": "off", "lamp_hours": 1234, **ALL_OK}
            assert sim.commands[0] == "%1CLSS ?"
            assert all(c.startswith("%1") for c in sim.commands)
            assert drv.pjlink_class == 1
    asyncio.run(main())


def test_reads_equal_simulator_state() -> None:
    async def main() -> None:
        port = free_port()
        inputs = ["11", "12", "21", "32", "33", "51"]
        async with _sim(port, power="on", input="33", lamp_hours=500, inputs=inputs) as sim, _driver(port) as drv:
            values = (await drv.read()).values
            assert values == {"power": "on", "input": "hdmi2", "muted": "off", "lamp_hours": sim.lamp_hours, **ALL_OK}
            sim.input, sim.video_mute, sim.errors = "12", True, "102010"
            values = (await drv.read()).values
            assert values["input"] == "12"  # not in the profile's inputs: the raw code
            assert values["muted"] == "on"
            assert [values[m] for m in ERST_METRICS] == ["warning", "ok", "error", "ok", "warning", "ok"]
    asyncio.run(main())


def test_password_right_wrong_and_missing() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, password="secret1", lamp_hours=7) as sim:
            async with _driver(port, password="secret1") as drv:
                assert (await drv.read()).values["lamp_hours"] == 7
                assert sim.auth_failures == 0
            async with _driver(port, password="wrong") as drv:
                with pytest.raises(DeviceError, match="authentication failed") as err:
                    await drv.read()
                assert not isinstance(err.value, DeviceUnreachable)
                assert sim.auth_failures == 1
            async with _driver(port) as drv:
                with pytest.raises(DeviceError, match="requires a PJLink password"):
                    await drv.read()
    asyncio.run(main())


def test_class2_reports_filter_hours_class1_does_not() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, pjlink_class=2, power="on", filter_hours=321, inputs=["11", "32", "41"]) as sim, _driver(port, PROFILE2) as drv:
            values = (await drv.read()).values
            assert values["filter_hours"] == 321 and values["input"] == "vga"
            assert drv.pjlink_class == 2
            assert "%2FILT ?" in sim.commands and "%2INPT ?" in sim.commands
            await drv.execute("select_input", {"input": "usb"})
            assert sim.input == "41" and "%2INPT 41" in sim.commands
        port = free_port()
        async with _sim(port, pjlink_class=1, power="on") as sim, _driver(port, PROFILE2) as drv:
            values = (await drv.read()).values
            assert "filter_hours" not in values and values["power"] == "on"
            assert all(c.startswith("%1") for c in sim.commands)
    asyncio.run(main())


def test_power_cycle_and_every_command() -> None:
    async def main() -> None:
        port = free_port()
        sim = _sim(port, lamp_hours=10, time_scale=3600 * 50, warmup_s=0.6, cooldown_s=0.6)
        async with sim, _driver(port) as drv:
            assert await drv.execute("power_on", {}) == "power on accepted (warming up)"
            assert sim.power == "warming"
            assert (await drv.read()).values["power"] == "warming"
            await _until(drv.read, lambda r: r.values["power"] == "on")
            assert sim.power == "on"
            # The lamp burns: hours count up (50 simulated hours per second).
            await _until(drv.read, lambda r: r.values["lamp_hours"] > 10)
            assert await drv.execute("power_on", {}) == "already on"

            await drv.execute("mute", {})
            assert sim.muted and (await drv.read()).values["muted"] == "on"
            await drv.execute("unmute", {})
            assert not sim.video_mute and not sim.audio_mute and (await drv.read()).values["muted"] == "off"
            assert await drv.execute("select_input", {"input": "vga"}) == "input vga (11) selected"
            assert sim.input == "11" and (await drv.read()).values["input"] == "vga"

            await drv.execute("mute", {})
            assert await drv.execute("power_off", {}) == "power off accepted (cooling down)"
            assert (await drv.read()).values["power"] == "cooling"
            await _until(drv.read, lambda r: r.values["power"] == "off")
            assert sim.power == "off" and not sim.muted  # powering off clears AV mute
            hours = sim.lamp_hours
            assert (await drv.read()).values["lamp_hours"] == hours  # the lamp is off: no counting
            assert _sets(sim) == ["%1POWR 1", "%1POWR 1", "%1AVMT 31", "%1AVMT 30", "%1INPT 11", "%1AVMT 31",
                                  "%1POWR 0"]
    asyncio.run(main())


def test_commands_during_warmup_wait_and_run_in_order() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port) as sim, _driver(port) as drv:
            await drv.execute("power_on", {})
            # The command executor bounds each command with wait_for; these wait out the warm-up.
            await asyncio.wait_for(drv.execute("select_input", {"input": "hdmi2"}), 5)
            await asyncio.wait_for(drv.execute("mute", {}), 5)
            assert sim.power == "on" and sim.input == "33" and sim.muted
            assert _sets(sim) == ["%1POWR 1", "%1INPT 33", "%1AVMT 31"]
            assert not any(reply.endswith("ERR3") for _, reply in sim.log)
            assert drv.counters["busy_waits"] > 0

            # Off during a warm-up waits for "on"; on during a cool-down waits for "off".
            await drv.execute("power_off", {})
            await drv.execute("power_on", {})
            assert sim.power == "warming"
            await drv.execute("power_off", {})
            assert sim.power == "cooling"
            assert _sets(sim)[3:] == ["%1POWR 0", "%1POWR 1", "%1POWR 0"]
            assert not any(reply.endswith("ERR3") for _, reply in sim.log)
    asyncio.run(main())


def test_projector_dropping_an_idle_connection_mid_wait_is_reconnected() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, warmup_s=0.6, idle_timeout_s=0.1) as sim, _driver(port, busy_poll_s=0.25) as drv:
            await drv.execute("power_on", {})
            await drv.execute("select_input", {"input": "video"})
            assert sim.input == "21" and drv.counters["reconnects"] >= 1
            assert sim.connections >= 3
    asyncio.run(main())


def test_input_in_standby_fails_and_unknown_input_is_rejected() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, inputs=["11", "21", "32", "33"]) as sim, _driver(port) as drv:
            with pytest.raises(DeviceError, match="ERR3.*standby") as err:
                await drv.execute("select_input", {"input": "hdmi1"})
            assert not isinstance(err.value, ActionRejected)
            await drv.execute("power_on", {})
            # The profile lists "network" (51) but this projector has no such input: ERR2.
            with pytest.raises(ActionRejected, match="ERR2"):
                await drv.execute("select_input", {"input": "network"})
            assert sim.input == "11"
    asyncio.run(main())


def test_projector_failure_err4() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, power="on") as sim, _driver(port) as drv:
            sim.fault_error = True
            values = (await drv.read()).values
            assert values["power"] == "on" and values["error_lamp"] == "error" and values["error_fan"] == "ok"
            with pytest.raises(DeviceError, match="ERR4") as err:
                await drv.execute("mute", {})
            assert not isinstance(err.value, ActionRejected)
            assert not sim.muted
    asyncio.run(main())


def test_silent_projector_times_out() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port) as sim, _driver(port, timeout=0.3) as drv:
            sim.silent = True
            start = time.monotonic()
            with pytest.raises(DeviceError, match="no greeting within 0.3s") as err:
                await drv.read()
            assert not isinstance(err.value, DeviceUnreachable)
            assert time.monotonic() - start < 2.0
            with pytest.raises(DeviceError, match="no greeting"):
                await drv.execute("power_on", {})
            sim.silent = False
            assert (await drv.read()).values["power"] == "off"
    asyncio.run(main())


def test_garbage_and_overlong_replies() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port) as sim, _driver(port) as drv:
            sim.garbage = True
            with pytest.raises(DeviceError, match="garbage reply"):
                await drv.read()
            sim.garbage = "overlong"
            with pytest.raises(DeviceError, match="overlong reply.*136"):
                await drv.execute("power_on", {})
            sim.garbage = False
            assert (await drv.read()).values["power"] in ("off", "warming")  # the POWR 1 may have been applied
    asyncio.run(main())


def test_unreachable_projector() -> None:
    async def main() -> None:
        drv = _driver(free_port())
        with pytest.raises(DeviceUnreachable):
            await drv.read()
        with pytest.raises(DeviceUnreachable):
            await drv.execute("power_on", {})
        await drv.close()
    asyncio.run(main())


def test_actions_and_inputs_the_profile_does_not_list_are_rejected_unsent() -> None:
    async def main() -> None:
        port = free_port()
        async with _sim(port, power="on") as sim, _driver(port) as drv:
            with pytest.raises(ActionRejected, match="not supported"):
                await drv.execute("set_volume", {"level": 10})
            with pytest.raises(ActionRejected, match="input 'dvd'"):
                await drv.execute("select_input", {"input": "dvd"})
            assert sim.connections == 0
    asyncio.run(main())


def test_class2_only_input_code() -> None:
    profile = parse_profile("""\
name: pj-internal
kind: projector
protocol: pjlink
metrics: {power: {}, input: {}}
actions: [select_input]
inputs: {hdmi1: "31", memory: "6A"}
""", "test")

    async def main() -> None:
        port = free_port()
        async with _sim(port, power="on", inputs=["31"]) as sim, _driver(port, profile) as drv:
            with pytest.raises(ActionRejected, match="class 1 projector cannot select"):
                await drv.execute("select_input", {"input": "memory"})
            assert _sets(sim) == []
        port = free_port()
        async with _sim(port, power="on", pjlink_class=2, inputs=["31", "6A"]) as sim, _driver(port, profile) as drv:
            await drv.execute("select_input", {"input": "memory"})
            assert sim.input == "6A" and _sets(sim) == ["%2INPT 6A"]
            assert (await drv.read()).values == {"power": "on", "input": "memory"}
    asyncio.run(main())


def test_simulator_state_machine_on_a_fake_clock() -> None:
    now = [100.0]
    sim = PJLinkProjector(warmup_s=30, cooldown_s=60, time_scale=60, clock=lambda: now[0], lamp_hours=2)
    assert sim.answer("%1POWR 1") == "%1POWR=OK" and sim.power == "warming"
    assert sim.answer("%1INPT 32") == "%1INPT=ERR3" and sim.answer("%1POWR 0") == "%1POWR=ERR3"
    now[0] += 30
    assert sim.answer("%1POWR ?") == "%1POWR=1"
    assert sim.answer("%1LAMP ?") == "%1LAMP=2 1"  # 30 s x 60 = half an hour of lamp so far
    now[0] += 30
    assert sim.lamp_hours == 3
    assert sim.answer("%1INPT 99") == "%1INPT=ERR2" and sim.answer("%1FILT ?") == "%1FILT=ERR1"
    assert sim.answer("%2FILT ?") == "%2FILT=ERR1"  # a class 1 projector has no class 2 commands
    assert sim.answer("%1XXXX ?") == "%1XXXX=ERR1" and sim.answer("hello") is None
    assert sim.answer("%1POWR 0") == "%1POWR=OK" and sim.power == "cooling"
    now[0] += 60
    assert sim.power == "off" and sim.lamp_hours == 3
    assert sim.answer("%1CLSS ?") == "%1CLSS=1" and sim.answer("%1INST ?") == "%1INST=11 21 32 33 51"


def test_simulator_for_a_gateway_device() -> None:
    async def main() -> None:
        port = free_port()
        # model_construct: the config's address check needs the driver registry, which gains pjlink later.
        dev = DeviceConfig.model_construct(
            id="proj2", profile="projector-pjlink2", options={}, poll_interval=None,
            address={"host": "127.0.0.1", "port": port, "password": "pw"},
            simulator={"warmup_s": 0.2, "lamp_hours": 100, "filter_hours": 40, "power": "on"})
        sim = simulator_for(dev, 0)
        assert (sim.port, sim.password, sim.pjlink_class, sim.warmup_s, sim.cooldown_s) == (port, "pw", 2, 0.2, 60)
        assert sim.inputs == ["32", "33", "11", "21", "41", "51"]
        async with sim, _driver(port, PROFILE2, password="pw") as drv:
            values = (await drv.read()).values
            assert values["lamp_hours"] == 100 and values["filter_hours"] == 40 and values["input"] == "hdmi1"
    asyncio.run(main())
